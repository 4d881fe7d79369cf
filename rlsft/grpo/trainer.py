"""One GRPO trainer (DAPO flavour) on plain torch + transformers: rollout -> reward -> advantages -> clipped updates.

A step:
  1. rollout: ``batch_questions`` questions x ``num_generations`` answers at ``temperature``; with dynamic sampling,
     groups that are all right or all wrong are dropped and fresh questions drawn, up to ``max_resample`` more rounds;
  2. advantages, group-normalised;
  3. the rollout batch is split into ``mini_batches`` optimizer steps (each accumulating micro-batches of
     ``micro_batch_size`` answers), token-level clipped loss against the rollout policy's log-probs;
  4. every ``eval_every`` steps: greedy held-out accuracy; every ``save_every`` steps an atomic checkpoint from which
     a resumed run reaches the same weights.
Callbacks (rlsft.grpo.callbacks) report what happens meanwhile: the policy dynamics of method.md 9 by default
(rlsft.grpo.dynamics), experiment=grpo's EAP drift (rlsft.experiments.eap_drift) at each evaluation.

Sampling randomness is seeded from (seed, step, round) and the question order from (seed, epoch), so a run is a
function of its recipe: interrupted and resumed, it gives the same weights as an uninterrupted run.

Data parallel (rlsft.parallel, ``accelerate launch``): every process holds the whole policy and every answer. Each
samples its share of the ``generation_batch_size`` calls (a call samples the same rows with the same seed whichever
process runs it) and all answers are gathered, so rewards, dynamic sampling and advantages are the single-process
run's on every process. Each backpropagates its share of the micro-batches, already divided by the whole
mini-batch's token count; the gradients are summed over processes before clipping, so every process takes the
single-process optimizer step. The main process alone writes checkpoints, history and logs.
"""

from __future__ import annotations

import copy
import csv
import io
import json
import math
import random
import time
from contextlib import contextmanager, nullcontext
from pathlib import Path
from typing import Any, Callable, Sequence

import torch

from ..cache import atomic_write_bytes, atomic_write_json
from ..console import Heartbeat
from ..data import Record
from ..errors import RlsftError
from ..parallel import Processes
from ..templates import encode_prompt
from .advantages import group_advantages, informative_groups
from .callbacks import TrainerCallback
from .checkpoint import load_checkpoint, newest_intact, save_checkpoint
from .config import GRPOConfig, check_recipe, recipe_dict, recipe_hash
from .dynamics import TrainingDynamics
from .loss import policy_loss
from .reward import Scored, answer_reward, gold_value, overlong_penalty
from .rollout import Answer, completion_logprobs, generate, pack

DEFAULT_CALLBACKS = (TrainingDynamics,)  # every trainer gets one of each, before the ones it is given


class GRPOTrainer:
    """Train ``model`` in place with a GRPOConfig recipe.

    reward_fn(text, record) -> Scored overrides the answer reward (tests, benchmarks); ``round_hook(answers, seed)``
    may change a sampling round's scored answers in place before groups are formed (a control kind's reward, e.g.
    rlsft.training.grpo_random). ``output_dir`` holds
    checkpoints and the metrics history; ``tracker`` (rlsft.tracking.Tracker) receives every logged row.
    ``callbacks`` (rlsft.grpo.callbacks) are called after the ``DEFAULT_CALLBACKS``; ``summary`` collects what they
    report at the end (``entropy_reward_fit``). ``processes`` (rlsft.parallel): the data-parallel processes training
    together; None: this one alone.
    """

    def __init__(self, model, tokenizer, recipe: GRPOConfig, train_records: list[Record],
                 eval_records: list[Record] | None = None, template: str = "chat", output_dir: str | Path | None = None,
                 tracker=None, reward_fn: Callable[[str, Record], Scored] | None = None,
                 log: Callable[[str], None] = print, round_hook: Callable[[list[Answer], int], None] | None = None,
                 callbacks: Sequence[TrainerCallback] = (), processes: Processes | None = None):
        check_recipe(recipe)
        self.processes = processes or Processes()
        if not train_records:
            raise RlsftError("GRPO: no training questions")
        self.recipe, self.tokenizer, self.template = recipe, tokenizer, template
        self.train_records, self.eval_records = list(train_records), list(eval_records or [])[: recipe.eval_n]
        self.output_dir = Path(output_dir) if output_dir else None
        self.tracker, self.log = tracker, (log if self.processes.main else lambda _line: None)
        self.reward_fn = reward_fn or self._answer_reward
        self.round_hook = round_hook
        if reward_fn is None and recipe.partial_credit:
            for r in self.train_records:  # bad gold answers fail now, with the record named, not mid-run
                if r.meta.get("grader", "math") == "math":
                    try:
                        gold_value(r.answer)
                    except RlsftError as exc:
                        raise RlsftError(f"{exc} (question {r.id})") from None
        self.hash, self.recipe_json = recipe_hash(recipe), recipe_dict(recipe)
        self.evaluating = bool(recipe.eval_every and self.eval_records)
        self.callbacks = [cls() for cls in DEFAULT_CALLBACKS] + list(callbacks)

        # precision: a bf16/fp16 model trains with fp32 master weights under autocast (AdamW updates of ~1e-6
        # vanish in bf16); on CPU everything is fp32.
        self.device = next(model.parameters()).device
        load_dtype = next(model.parameters()).dtype
        half = load_dtype in (torch.bfloat16, torch.float16) and self.device.type == "cuda"
        self.amp_dtype = torch.bfloat16 if half else None  # bf16 autocast needs no loss scaling (fp16 would)
        self.save_dtype = load_dtype
        self.model = self._prepare(model)
        self.ref_model = self._reference()
        self.summary: dict = {}
        params = [p for p in self.model.parameters() if p.requires_grad]
        # fused: one kernel over all tensors, no foreach temporaries (a model-sized peak of memory otherwise)
        self.optimizer = torch.optim.AdamW(params, lr=recipe.lr, betas=tuple(recipe.adam_betas),
                                           weight_decay=recipe.weight_decay, fused=True)
        warm = recipe.warmup_steps
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer, lambda s: min(1.0, (s + 1) / warm) if warm else 1.0)
        self.step, self.questions_drawn, self.history = 0, 0, []
        self.rollout: list[Answer] = []  # the step's sampled answers, until write_history keeps them
        self._prompts: dict[str, list[int]] = {}
        self._orders: dict[int, list[int]] = {}
        self._callback("on_init_end")

    # ------------------------------------------------------------------ setup
    def _prepare(self, model):
        r = self.recipe
        if self.amp_dtype is not None and r.lora.r == 0:
            model = model.float()
        if r.gradient_checkpointing:
            model.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
            model.config.use_cache = False
        if r.lora.r > 0:
            from peft import LoraConfig, get_peft_model

            cfg = LoraConfig(r=r.lora.r, lora_alpha=r.lora.alpha, lora_dropout=r.lora.dropout,
                             target_modules=list(r.lora.target_modules), task_type="CAUSAL_LM")
            torch.manual_seed(r.seed)  # LoRA A matrices are random: seed them so a run is reproducible
            model = get_peft_model(model, cfg)
            if r.gradient_checkpointing:
                model.enable_input_require_grads()
        else:
            for p in model.parameters():
                p.requires_grad_(True)
        return model

    def _reference(self):
        """The initial model, for KL (beta > 0) and callbacks comparing with it; LoRA reuses the base (adapter off)."""
        r = self.recipe
        if r.lora.r > 0 or not (r.beta > 0 or any(cb.needs_initial_model for cb in self.callbacks)):
            return None
        ref = copy.deepcopy(self.model)
        ref.eval().requires_grad_(False)
        return ref

    @contextmanager
    def _initial(self):
        """The initial model as a plain HF model (adapter disabled for LoRA)."""
        if self.recipe.lora.r > 0:
            with self.model.disable_adapter():
                yield self.model.get_base_model()
        else:
            yield self.ref_model

    def initial_model(self):
        """The initial model as a plain HF model, as a context manager (for callbacks that compare with it)."""
        return self._initial()

    def current_model(self):
        """The model being trained as a plain HF model (LoRA: the base with its adapter on)."""
        return self.model.get_base_model() if self.recipe.lora.r > 0 else self.model

    def _amp(self):
        return torch.autocast(self.device.type, dtype=self.amp_dtype) if self.amp_dtype is not None else nullcontext()

    # ------------------------------------------------------------------ data
    def _prompt(self, rec: Record) -> list[int]:
        if rec.id not in self._prompts:
            self._prompts[rec.id] = encode_prompt(self.tokenizer, self.template, rec.question)
        return self._prompts[rec.id]

    def _next_questions(self, n: int) -> list[Record]:
        """The next ``n`` questions of a per-epoch shuffle; stateless but for the counter (saved in checkpoints)."""
        out, size = [], len(self.train_records)
        for i in range(self.questions_drawn, self.questions_drawn + n):
            epoch = i // size
            if epoch not in self._orders:
                order = list(range(size))
                random.Random(f"{self.recipe.seed}-{epoch}").shuffle(order)
                self._orders = {epoch: order}
            out.append(self.train_records[self._orders[epoch][i % size]])
        self.questions_drawn += n
        return out

    def _answer_reward(self, text: str, rec: Record) -> Scored:
        r = self.recipe
        return answer_reward(text, rec.answer, rec.meta.get("grader", "math"), r.reward_correct, r.reward_wrong,
                             r.partial_credit, r.partial_max)

    # ------------------------------------------------------------------ rollout
    def _seed(self, *parts: Any) -> int:
        return random.Random("|".join(map(str, (self.recipe.seed, *parts)))).getrandbits(31)

    def _generate(self, model, prompts: list[list[int]], max_new_tokens: int, temperature: float, top_p: float = 1.0,
                  seed: int = 0, batch_size: int = 0) -> list[tuple[list[int], str]]:
        """rollout.generate with each process sampling its share of the calls, then every answer on every process."""
        n = self.processes.count
        with self._amp():
            mine = generate(model, self.tokenizer, prompts, max_new_tokens, temperature, top_p, seed=seed,
                            batch_size=batch_size, shard=(self.processes.index, n))
        if n == 1:
            return mine
        return [next(out for out in column if out is not None) for column in zip(*self.processes.gather(mine))]

    def collect(self) -> tuple[list[list[Answer]], dict]:
        """Sample groups; keep informative ones (dynamic sampling) until the batch is full or rounds run out."""
        r, G = self.recipe, self.recipe.num_generations
        kept: list[list[Answer]] = []
        sampled: list[Answer] = []
        n_groups = n_zero_var = rounds = 0
        self.model.eval()
        for rnd in range(1 + (r.max_resample if r.dynamic_sampling else 0)):
            rounds += 1
            questions = self._next_questions(r.batch_questions - len(kept) if r.dynamic_sampling else r.batch_questions)
            prompts = [self._prompt(q) for q in questions for _ in range(G)]
            outs = self._generate(self.model, prompts, r.max_new_tokens, r.temperature, r.top_p,
                                  seed=self._seed("rollout", self.step, rnd), batch_size=r.generation_batch_size)
            answers = []
            for k, ((ids, reason), prompt) in enumerate(zip(outs, prompts)):
                rec = questions[k // G]
                a = Answer(prompt, ids, reason, question_id=rec.id)
                a.text = self.tokenizer.decode(a.output_ids, skip_special_tokens=True)
                scored = self.reward_fn(a.text, rec)
                a.reward = scored.reward + overlong_penalty(len(ids), r.max_new_tokens, r.overlong_buffer,
                                                            r.overlong_penalty)
                a.correct, a.pred = scored.correct, scored.pred
                answers.append(a)
            if self.round_hook is not None:
                self.round_hook(answers, self._seed("round_hook", self.step, rnd))
            sampled += answers
            groups = [answers[i : i + G] for i in range(0, len(answers), G)]
            good = set(informative_groups([a.correct for a in answers], G))
            n_groups += len(groups)
            n_zero_var += len(groups) - len(good)
            kept += [g for i, g in enumerate(groups) if i in good or not r.dynamic_sampling]
            if len(kept) >= r.batch_questions:
                break
        rewards = torch.tensor([a.reward for a in sampled])
        lengths = torch.tensor([len(a.ids) for a in sampled], dtype=torch.float)
        stats = {"train/reward_mean": rewards.mean().item(), "train/reward_std": rewards.std().item(),
                 "train/accuracy": sum(a.correct for a in sampled) / len(sampled),
                 "train/zero_var_frac": n_zero_var / n_groups, "train/answer_len": lengths.mean().item(),
                 "train/truncated": sum(a.finish_reason == "length" for a in sampled) / len(sampled),
                 "train/groups_kept": len(kept[: r.batch_questions]), "train/rounds": rounds,
                 "train/sampled": len(sampled)}
        self.rollout = sampled
        return kept[: r.batch_questions], stats

    # ------------------------------------------------------------------ update
    def _micro(self, answers: list[Answer], adv: torch.Tensor):
        """This process's micro-batches of ``answers``: every count-th from its index (all of them alone)."""
        s, procs = self.recipe.micro_batch_size, self.processes
        for i in range(0, len(answers), s)[procs.index :: procs.count]:
            yield i, pack(answers[i : i + s], self.tokenizer.pad_token_id, adv[i : i + s], self.device)

    def _logprobs(self, model, batch, entropy=False):
        T = self.recipe.temperature if self.recipe.loss_temperature else 1.0
        with self._amp():
            return completion_logprobs(model, batch, T, entropy)

    @torch.no_grad()
    def _fixed_logprobs(self, model, answers: list[Answer], adv: torch.Tensor) -> list[torch.Tensor]:
        """Log-probs under a fixed policy, in the same micro-batches (same padding) as the update uses."""
        return [self._logprobs(model, mb)[0] for _, mb in self._micro(answers, adv)]

    def advantages(self, groups: list[list[Answer]]) -> torch.Tensor:
        """Group-relative advantages of the step's answers, flat (once a step, for the callbacks and the update)."""
        rewards = torch.tensor([a.reward for g in groups for a in g])
        return group_advantages(rewards, self.recipe.num_generations, self.recipe.scale_rewards)

    def update(self, groups: list[list[Answer]], adv: torch.Tensor | None = None) -> dict:
        r, G = self.recipe, self.recipe.num_generations
        if not groups:
            return {"train/skipped": 1}
        answers = [a for g in groups for a in g]
        adv = self.advantages(groups) if adv is None else adv
        n_mb = min(r.mini_batches, len(groups))
        bounds = [round(i * len(groups) / n_mb) * G for i in range(n_mb + 1)]
        minibatches = [(answers[bounds[i] : bounds[i + 1]], adv[bounds[i] : bounds[i + 1]]) for i in range(n_mb)]
        self.model.train()
        # old log-probs of the rollout policy: for the first mini-batch they equal the current ones (ratio 1, taken
        # as logp.detach()); the later ones are scored now, before any update moves the policy.
        old = [None] + [self._fixed_logprobs(self.model, a, v) for a, v in minibatches[1:]]
        ref = None
        if r.beta > 0:
            with self._initial() as init:
                ref = [self._fixed_logprobs(init, a, v) for a, v in minibatches]
        totals = {"loss": 0.0, "clip": 0.0, "kl": 0.0, "entropy": 0.0, "ratio": 0.0, "grad_norm": 0.0}
        n_tokens = 0
        for m, (mb_answers, mb_adv) in enumerate(minibatches):
            self.optimizer.zero_grad(set_to_none=True)
            norm = sum(len(a.ids) for a in mb_answers) if r.loss_agg == "token" else len(mb_answers)
            for k, (_, batch) in enumerate(self._micro(mb_answers, mb_adv)):
                logp, ent = self._logprobs(self.model, batch, entropy=True)
                old_logp = logp.detach() if old[m] is None else old[m][k]
                ref_logp = ref[m][k] if ref is not None else None
                parts = policy_loss(logp, old_logp, batch.advantages, batch.completion_mask, r.epsilon_low,
                                    r.epsilon_high, r.loss_agg, norm, ref_logp, r.beta)
                parts.loss.backward()
                tokens = int(batch.completion_mask.sum())
                n_tokens += tokens
                totals["loss"] += parts.loss.item()
                for key, value in (("clip", parts.clip_fraction), ("kl", parts.kl), ("ratio", parts.ratio_mean),
                                   ("entropy", (ent * batch.completion_mask).sum() / max(tokens, 1))):
                    totals[key] += value.item() * tokens
            params = [p for p in self.model.parameters() if p.requires_grad]
            self._sum_gradients(params)
            grad_norm = torch.nn.utils.clip_grad_norm_(params, r.max_grad_norm if r.max_grad_norm > 0 else float("inf"))
            totals["grad_norm"] += grad_norm.item() / n_mb
            self.optimizer.step()
            self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        if self.processes.count > 1:  # each process summed its own micro-batches
            keys = ["loss", "clip", "kl", "entropy", "ratio"]
            summed = torch.tensor([totals[k] for k in keys] + [n_tokens], dtype=torch.float64, device=self.device)
            self.processes.sum_([summed])
            totals.update(zip(keys, summed.tolist()))
            n_tokens = int(summed[-1])
        t = max(n_tokens, 1)
        return {"train/skipped": 0, "train/loss": totals["loss"] / n_mb, "train/clip_frac": totals["clip"] / t, "train/kl": totals["kl"] / t,
                "train/entropy": totals["entropy"] / t, "train/ratio": totals["ratio"] / t,
                "train/grad_norm": totals["grad_norm"], "train/lr": self.scheduler.get_last_lr()[0],
                "train/mini_batches": n_mb, "train/tokens": n_tokens}

    def _sum_gradients(self, params: list[torch.Tensor]) -> None:
        """The whole mini-batch's gradient on every process: the sum of each process's micro-batch gradients (each
        loss already divided by the whole mini-batch's normaliser, so no average over processes)."""
        if self.processes.count == 1:
            return
        for p in params:
            if p.grad is None:  # a process with no micro-batch in this mini-batch
                p.grad = torch.zeros_like(p)
        self.processes.sum_([p.grad for p in params])

    # ------------------------------------------------------------------ evaluation
    def greedy(self, model, records: list[Record]) -> list[Answer]:
        """``model``'s greedy answers to ``records``, scored (held-out accuracy; callbacks ask the initial model)."""
        r = self.recipe
        prompts = [self._prompt(q) for q in records]
        outs = self._generate(model, prompts, r.eval_max_new_tokens or r.max_new_tokens, 0.0,
                              batch_size=r.eval_batch_size)
        answers = []
        for rec, prompt, (ids, reason) in zip(records, prompts, outs):
            a = Answer(prompt, ids, reason, question_id=rec.id)
            a.text = self.tokenizer.decode(a.output_ids, skip_special_tokens=True)
            s = self.reward_fn(a.text, rec)
            a.reward, a.correct, a.pred = s.reward, s.correct, s.pred
            answers.append(a)
        return answers

    @torch.no_grad()
    def evaluate(self) -> dict:
        """Greedy accuracy on the held-out set, and what the callbacks' ``on_evaluate`` add."""
        if not self.eval_records:
            return {}
        self.model.eval()
        answers = self.greedy(self.model, self.eval_records)
        n = len(answers)
        row = {"eval/accuracy": sum(a.correct for a in answers) / n,
               "eval/answer_len": sum(len(a.output_ids) for a in answers) / n,
               "eval/truncated": sum(a.finish_reason == "length" for a in answers) / n}
        self._callback("on_evaluate", row, answers)
        return row

    # ------------------------------------------------------------------ checkpoints
    @property
    def checkpoint_dir(self) -> Path | None:
        return self.output_dir / "checkpoints" if self.output_dir else None

    def _state(self) -> dict:
        return {"recipe_hash": self.hash, "recipe": self.recipe_json, "questions_drawn": self.questions_drawn,
                "history": self.history, "callbacks": {type(cb).__name__: cb.state_dict() for cb in self.callbacks}}

    def save(self) -> Path | None:
        if self.checkpoint_dir is None or not self.processes.main:
            return None
        return save_checkpoint(self.checkpoint_dir, self.step, self.model, self.optimizer, self.scheduler, self._state(),
                               self.recipe.keep_checkpoints)

    def resume(self, path: str | Path | None = None) -> bool:
        """Continue from ``path`` or the newest checkpoint in the output folder; False when there is none."""
        if path is None:  # the main process picks it: it alone moves a damaged checkpoint aside
            path = self.processes.first(newest_intact(self.checkpoint_dir) if self.checkpoint_dir and
                                        self.processes.main else None)
            if path is None:
                return False
        state = load_checkpoint(Path(path), self.model, self.optimizer, self.scheduler, self.hash, self.recipe_json)
        self.step, self.questions_drawn, self.history = state["step"], state["questions_drawn"], state["history"]
        saved = state.get("callbacks", {})
        for cb in self.callbacks:
            if type(cb).__name__ in saved:
                cb.load_state_dict(saved[type(cb).__name__])
        self.log(f"[grpo] resumed from {path} at step {self.step}")
        return True

    # ------------------------------------------------------------------ loop
    def _callback(self, hook: str, *args) -> None:
        for cb in self.callbacks:
            getattr(cb, hook)(self, *args)

    def _record(self, row: dict) -> None:
        self.history.append(row)
        if self.tracker is not None:
            self.tracker.log({k: v for k, v in row.items() if k != "step"}, step=row["step"])

    def train(self) -> list[dict]:
        r = self.recipe
        if r.resume:
            self.resume()
        self._callback("on_train_begin")
        start = time.time()
        if self.step < r.steps:  # the first step line can take minutes: say what is happening meanwhile
            self.log(f"[grpo] {r.steps - self.step} steps to go; each samples {r.batch_questions} questions x "
                     f"{r.num_generations} answers, then updates the weights (a line per step)"
                     + (", held-out accuracy first" if self.step == 0 and not self.history and self.evaluating else ""))
        if self.step == 0 and not self.history and self.evaluating:
            t0 = time.time()
            with Heartbeat(self.log, "[grpo] step 0: held-out evaluation"):
                row = {"step": 0, **self.evaluate()}
            row["time/eval_s"] = time.time() - t0
            self._record(row)
            self._progress(row)
        while self.step < r.steps:
            t0 = time.time()
            where = f"[grpo] step {self.step + 1}/{r.steps}"
            with Heartbeat(self.log, f"{where}: sampling and scoring {r.batch_questions} x {r.num_generations} "
                                     "answers") as beat:
                groups, stats = self.collect()
                adv = self.advantages(groups) if groups else None
                self.model.eval()
                with self._amp():  # callbacks see the policy as it sampled (method.md 9's dynamics among them)
                    self._callback("on_rollout_end", stats, groups, adv)
                t1 = time.time()
                beat.what = f"{where}: updating the weights"
                stats.update(self.update(groups, adv))
            self.step += 1
            t2 = time.time()
            row = {"step": self.step, **stats, "time/rollout_s": t1 - t0, "time/update_s": t2 - t1,
                   "time/step_s": t2 - t0}
            self._callback("on_step_end", row)
            if self.evaluating and (self.step % r.eval_every == 0 or self.step == r.steps):
                with Heartbeat(self.log, f"{where}: held-out evaluation"):
                    row.update(self.evaluate())
                row["time/eval_s"] = time.time() - t2
            self._record(row)
            self._progress(row)
            if (r.save_every and self.step % r.save_every == 0) or self.step == r.steps:
                self.save()
            self.write_history()
        self.log(f"[grpo] {r.steps} steps done ({time.time() - start:.0f} s this session)")
        self._callback("on_train_end", self.summary)
        self.write_history()
        return self.history

    def _progress(self, row: dict) -> None:
        keys = [("train/reward_mean", "reward"), ("train/accuracy", "train_acc"), ("train/answer_len", "len"),
                ("train/zero_var_frac", "zero_var"), ("train/clip_frac", "clip"), ("eval/accuracy", "eval_acc"),
                ("eap/activation_intensity_diff", "d_int"), ("eap/frac80", "frac80"), ("time/step_s", "s")]
        parts = [f"{name}={row[k]:.3g}" for k, name in keys if isinstance(row.get(k), (int, float))]
        self.log(f"[grpo] step {row['step']}/{self.recipe.steps} " + " ".join(parts))

    def write_history(self) -> None:
        """grpo_history.json and .csv in the output folder (one row per step; eval columns every eval_every), and
        the step's sampled answers in rollouts/step-<step>.json (question ids, token ids, rewards: what a run with
        another process count or a resumed run must sample again)."""
        if self.output_dir is None or not self.processes.main:
            return
        if self.rollout:
            answers = self.rollout
            rollout = {"step": self.step, "question_ids": [a.question_id for a in answers],
                       "ids": [a.ids for a in answers], "rewards": [a.reward for a in answers]}
            atomic_write_bytes(self.output_dir / "rollouts" / f"step-{self.step:06d}.json", json.dumps(rollout).encode())
            self.rollout = []
        atomic_write_json(self.output_dir / "grpo_history.json", self.history)
        columns = ["step"] + sorted({k for row in self.history for k in row} - {"step"})
        buf = io.StringIO()
        writer = csv.writer(buf)
        writer.writerow(columns)
        for row in self.history:
            writer.writerow([_cell(row.get(c)) for c in columns])
        atomic_write_bytes(self.output_dir / "grpo_history.csv", buf.getvalue().encode())

    # ------------------------------------------------------------------ result
    def final_model(self):
        """The trained model as a plain HF model (LoRA merged), in the dtype it was loaded in."""
        model = self.model.merge_and_unload() if self.recipe.lora.r > 0 else self.model
        return model.to(self.save_dtype).eval()


def _cell(v):
    if isinstance(v, float) and math.isnan(v):
        return ""
    return "" if v is None else v
