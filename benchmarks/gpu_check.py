"""One prepared GPU check: the paper-scale claims measured in one short run on one GPU (issue 14).

    PYTHONPATH=. python benchmarks/gpu_check.py --out /tmp/gpu        # one CUDA GPU, bf16, < 8 minutes budgeted
    PYTHONPATH=. python benchmarks/gpu_check.py --smoke --out /tmp/s  # every part on tiny configs on CPU (CI)

Needs only torch, transformers (with its own dependencies: tokenizers, safetensors, pyyaml, filelock, tqdm), numpy
and the repository's source: no hydra, wandb, datasets, math-verify, hub access or download. Models are randomly
initialised from the real shapes below (cost does not depend on the weights' values). Parts, in the order they run:

  bf16_vs_fp32   EAP scores of a small random model in bf16 vs fp32: relative error of W and of each registered
                 EAP metric (rlsft.eap.metrics.METRICS, mean over samples)
  grpo_3b        the rebuttal recipe (rlsft/presets/grpo/rebuttal.yaml: 32 questions x 4 answers, 200 new tokens, 4 mini-batches,
                 full fine-tuning with the frozen initial copy, bf16 autocast over fp32 master weights, AdamW) on a
                 Qwen2.5-3B-size model with a synthetic reward: one warm-up step, then 2 timed steps split into
                 generation / scoring (reward + old-policy log-probs) / update, peak memory, 160 steps projected
  generate_7b    HF generate, batch 64, 512 new tokens, greedy, Qwen2-7B size: tokens/s
  patch_ig_7b_2k patched_losses, EAP and EAP-IG (5 steps) at 2k tokens vs a plain forward
  eap_*          edge_scores at 2k and 8k tokens (batch 1) vs a plain forward + activation-only backward, the ratios
                 of benchmarks/bench_eap.py, and estimate_memory beside the measured peak; Qwen2-7B at 8k runs last,
                 so an out-of-memory there loses nothing else

Each part runs under its own deadline (SIGALRM); a part that fails or runs over prints its error in the table and the
next part still runs. Timing: torch.cuda.synchronize() before reading the clock. Memory: torch.cuda.max_memory_allocated
(peak above the allocation before the call for ratios; total for GRPO). On CPU (--smoke) memory is reported as n/a:
torch's CPU allocations are invisible to tracemalloc and RSS is noise at tiny sizes (bench_eap.py measures CPU memory
properly); the smoke run keeps every code path alive, its numbers mean nothing. The table goes to stdout, and with
--out to gpu_check.md and gpu_check.json (rewritten after every part, so a killed run keeps what it measured).
"""

from __future__ import annotations

import argparse
import copy
import gc
import itertools
import json
import math
import platform
import signal
import sys
import time
import traceback
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "benchmarks")]
from bench_eap import baseline, make_batch  # noqa: E402  (the same baseline and batch, so the same ratios)

from rlsft.eap import build_graph, edge_scores, estimate_memory, patched_losses, sample_losses  # noqa: E402
from rlsft.eap.metrics import METRICS, per_sample  # noqa: E402

GiB = 2**30
BUDGET_S = 480  # the whole GPU run, startup included, must fit in 8 minutes
STARTUP_S = 30  # imports, CUDA context, reading the recipe: outside the parts' deadlines

# Real shapes (config.json of each hub model; rope and window settings left at their defaults, they cost nothing);
# --smoke builds the same architectures at TINY size.
CONFIGS = {
    "qwen2-7b": dict(arch="qwen2", vocab_size=152064, hidden_size=3584, intermediate_size=18944, num_hidden_layers=28,
                     num_attention_heads=28, num_key_value_heads=4, tie_word_embeddings=False),
    "llama3-8b": dict(arch="llama", vocab_size=128256, hidden_size=4096, intermediate_size=14336, num_hidden_layers=32,
                      num_attention_heads=32, num_key_value_heads=8, tie_word_embeddings=False),
    "qwen2.5-3b": dict(arch="qwen2", vocab_size=151936, hidden_size=2048, intermediate_size=11008, num_hidden_layers=36,
                       num_attention_heads=16, num_key_value_heads=2, tie_word_embeddings=True),
    # bf16 vs fp32: few layers, but the real vocabulary (lm_head precision is where bf16 hurt most)
    "small": dict(arch="qwen2", vocab_size=151936, hidden_size=512, intermediate_size=1536, num_hidden_layers=4,
                  num_attention_heads=8, num_key_value_heads=2, tie_word_embeddings=False),
}
TINY = dict(vocab_size=512, hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
            num_key_value_heads=2)


@dataclass(frozen=True)
class Scale:
    """Sizes of one mode: the GPU run or the CPU smoke run."""

    device: str
    dtype: torch.dtype
    tokens: dict  # "2k"/"8k" -> sequence length
    repeats: int  # timed repeats of each EAP measurement (the minimum is reported, as in bench_eap.py)
    grpo: dict  # overrides of the rebuttal recipe
    grpo_dtype: torch.dtype  # a CPU run trains in fp32 (the trainer uses autocast on CUDA only)
    generate: tuple  # (batch, prompt tokens, new tokens)
    small: tuple  # bf16 vs fp32: (batch, tokens)
    smoke: bool = False


GPU = Scale("cuda", torch.bfloat16, {"2k": 2048, "8k": 8192}, 2, {}, torch.bfloat16, (64, 64, 512), (4, 512))
SMOKE = Scale("cpu", torch.bfloat16, {"2k": 64, "8k": 128}, 1,
              dict(batch_questions=2, num_generations=2, max_new_tokens=8, mini_batches=2, micro_batch_size=2),
              torch.float32, (4, 8, 8), (3, 32), smoke=True)


class PartTimeout(Exception):
    pass


@contextmanager
def deadline(seconds: float):
    """Raise PartTimeout in the main thread once `seconds` have passed (between Python bytecodes, after a sync)."""

    def fire(signum, frame):
        raise PartTimeout(f"over its {seconds:g} s budget")

    previous = signal.signal(signal.SIGALRM, fire)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


# ------------------------------------------------------------------------------------------------ models and timing
def build_model(name: str, scale: Scale, dtype=None):
    """A randomly initialised model of `name`'s shape, built directly in `dtype` on the device (no fp32 copy)."""
    from transformers import LlamaConfig, LlamaForCausalLM, Qwen2Config, Qwen2ForCausalLM

    spec = dict(CONFIGS[name])
    arch = spec.pop("arch")
    if scale.smoke:
        spec.update(TINY)
    config_cls, model_cls = {"llama": (LlamaConfig, LlamaForCausalLM), "qwen2": (Qwen2Config, Qwen2ForCausalLM)}[arch]
    config = config_cls(max_position_embeddings=32768, **spec)
    config._attn_implementation = "sdpa"
    torch.manual_seed(0)
    default = torch.get_default_dtype()
    try:
        torch.set_default_dtype(dtype or scale.dtype)
        with torch.device(scale.device):
            model = model_cls(config)
    finally:
        torch.set_default_dtype(default)
    return model.eval()


def sync(device) -> None:
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize()


def clock(fn: Callable, device) -> tuple[float, object]:
    """(seconds, fn's result), the GPU's queue drained before and after."""
    sync(device)
    t0 = time.perf_counter()
    out = fn()
    sync(device)
    return time.perf_counter() - t0, out


def measure(fn: Callable, device) -> tuple[float, int | None, object]:
    """(seconds, peak bytes above the allocation before the call or None off CUDA, fn's result)."""
    cuda = torch.device(device).type == "cuda"
    gc.collect()
    if cuda:
        torch.cuda.synchronize()
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
        before = torch.cuda.memory_allocated()
    seconds, out = clock(fn, device)
    return seconds, (torch.cuda.max_memory_allocated() - before if cuda else None), out


def ratio(a, b):
    return None if a is None or b is None or b == 0 else a / b


def gib(n):
    return None if n is None else n / GiB


@dataclass
class Context:
    """What parts share: the mode and the one big model built last (a GPU holds one at a time, so an 80 GB card
    runs the 8k parts as an H200 does; dropped after a failed part)."""

    scale: Scale
    models: dict = field(default_factory=dict)

    def model(self, name: str):
        if name not in self.models:
            self.drop_models()
            self.models[name] = build_model(name, self.scale)
        return self.models[name]

    def label(self, name: str) -> str:
        return f"{name} (tiny)" if self.scale.smoke else name

    def frozen(self, name: str):
        """The model in eval mode with no parameter requiring grad (bench_eap.compare's setting)."""
        model = self.model(name)
        model.eval().requires_grad_(False)
        return model

    def drop_models(self) -> None:
        self.models.clear()
        free_memory()


def free_memory() -> None:
    gc.collect()  # reference cycles (a trainer and its instrumented method) hold GPU memory until collected
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


# ------------------------------------------------------------------------------------------------------ the parts
def eap_part(model_name: str, length: str):
    """edge_scores vs baseline (forward + activation-only backward) at one length, batch 1."""

    def run(ctx: Context, rows: list) -> None:
        s = ctx.scale
        model = ctx.frozen(model_name)
        n = s.tokens[length]
        args = make_batch(model.config.vocab_size, n, 1, s.device)
        edge_scores(model, *args)  # warm-up (allocator, kernels)
        base, eap = [], []
        for _ in range(s.repeats):  # interleaved, the minimum of each (bench_eap.py)
            base.append(measure(lambda: baseline(model, *args), s.device))
            eap.append(measure(lambda: edge_scores(model, *args), s.device))
        t_b, t_e = min(r[0] for r in base), min(r[0] for r in eap)
        m_b = None if base[0][1] is None else min(r[1] for r in base)
        m_e = None if eap[0][1] is None else min(r[1] for r in eap)
        est = estimate_memory(model.config, n, 1, s.dtype)
        rows.append(dict(model=ctx.label(model_name), tokens=n, base_s=t_b, eap_s=t_e, time_ratio=t_e / t_b,
                         base_gib=gib(m_b), eap_gib=gib(m_e), mem_ratio=ratio(m_e, m_b), estimate_gib=gib(est),
                         estimate_over_measured=ratio(est, m_e), W_finite=bool(torch.isfinite(eap[-1][2]).all())))

    return run


def patch_ig_part(ctx: Context, rows: list) -> None:
    """patched_losses (half the edges kept, zero baseline), EAP and EAP-IG (5 steps) at 2k vs a plain forward."""
    s, name = ctx.scale, "qwen2-7b"
    model = ctx.frozen(name)
    n = s.tokens["2k"]
    args = make_batch(model.config.vocab_size, n, 1, s.device)
    graph = build_graph(model)
    keep = graph.mask & (torch.rand(graph.mask.shape, generator=torch.Generator().manual_seed(0)) < 0.5)

    def forward():
        with torch.no_grad():
            return sample_losses(model, *args)

    cases = [("plain forward (no grad)", forward),
             ("patched_losses, half the edges kept", lambda: patched_losses(model, *args, graph=graph, keep=keep)),
             ("edge_scores method=eap", lambda: edge_scores(model, *args, graph=graph)),
             ("edge_scores method=eap_ig ig_steps=5",
              lambda: edge_scores(model, *args, graph=graph, method="eap_ig", ig_steps=5))]
    forward_cost = None
    for label, fn in cases:
        fn()  # warm-up
        t, m, out = measure(fn, s.device)
        forward_cost = forward_cost or (t, m)  # the first case
        rows.append(dict(model=ctx.label(name), tokens=n, case=label, seconds=t, peak_gib=gib(m),
                         time_vs_forward=t / forward_cost[0], mem_vs_forward=ratio(m, forward_cost[1]),
                         finite=bool(torch.isfinite(out).all())))


def bf16_part(ctx: Context, rows: list) -> None:
    """The same random weights scored in fp32 and in bf16: how far bf16 moves W and each metric."""
    s = ctx.scale
    fp32 = build_model("small", s, torch.float32)
    bf16 = copy.deepcopy(fp32).to(torch.bfloat16)
    batch, n = s.small
    args = make_batch(fp32.config.vocab_size, n, batch, s.device, seed=1)
    W32, W16 = edge_scores(fp32, *args).double(), edge_scores(bf16, *args).double()
    mask = build_graph(fp32).mask
    X32, X16 = W32[:, mask], W16[:, mask]
    rows.append(dict(quantity="W (all edges)", fp32=float(X32.norm()), bf16=float(X16.norm()),
                     rel_error=float((X16 - X32).norm() / X32.norm()),
                     max_rel_error=float((X16 - X32).abs().max() / X32.abs().max()),
                     pearson=float(torch.corrcoef(torch.stack([X32.flatten(), X16.flatten()]))[0, 1])))
    for name in METRICS:  # each registered metric: its mean over the samples
        a, b = (float(np.nanmean(per_sample(W, mask, name))) for W in (W32, W16))
        rows.append(dict(quantity=name, fp32=a, bf16=b, rel_error=abs(b - a) / abs(a) if a else None))


def rebuttal_recipe(overrides: dict):
    """rlsft/presets/grpo/rebuttal.yaml as a GRPOConfig (read with pyyaml: no omegaconf on a bare node), minus its datasets."""
    import yaml

    from rlsft.grpo.config import PRESET_DIR, GRPOConfig

    recipe = yaml.safe_load((PRESET_DIR / "rebuttal.yaml").read_text())
    recipe = {k: v for k, v in recipe.items() if k not in ("train", "eval")}
    # One sampling round per step: the synthetic reward has no right answers for dynamic sampling to filter on.
    recipe.update(dynamic_sampling=False, save_every=0, resume=False, **overrides)
    return GRPOConfig(**recipe)


def grpo_part(ctx: Context, rows: list) -> None:
    """Warm-up step, then 2 timed steps of the rebuttal recipe through GRPOTrainer.collect/update."""
    from rlsft.data import Record
    from rlsft.grpo.reward import Scored
    from rlsft.grpo.trainer import GRPOTrainer
    from rlsft.models import build_tiny_tokenizer

    s = ctx.scale
    recipe = rebuttal_recipe(s.grpo)
    timer = {"reward": 0.0, "old_logprobs": 0.0}
    alternate = itertools.count()

    def reward(text, record):  # alternating 1/0: every group has variance, no grader runs
        t0 = time.perf_counter()
        value = float(next(alternate) % 2)
        timer["reward"] += time.perf_counter() - t0
        return Scored(value, bool(value), None)

    records = [Record(f"q{i}", f"What is {i % 10} + {(3 * i) % 10}?", str(i % 10 + (3 * i) % 10))
               for i in range(3 * recipe.batch_questions)]
    if s.device == "cuda":
        torch.cuda.reset_peak_memory_stats()
    model = build_model("qwen2.5-3b", s, s.grpo_dtype)  # not kept: the trainer turns it into fp32 master weights
    # The eval questions are never evaluated here; with EAP metrics on (as in the rebuttal) the trainer keeps the
    # frozen initial copy, whose memory is part of what is measured.
    trainer = GRPOTrainer(model, build_tiny_tokenizer(), recipe, records, records[:2], "chat", reward_fn=reward,
                          log=lambda line: None)
    if trainer.ref_model is None:
        raise RuntimeError("the trainer kept no frozen initial copy; the measurement would miss its memory")
    scoring = trainer._fixed_logprobs  # old-policy log-probs of mini-batches 2.. (instrumented, not changed)

    def timed_scoring(*a, **k):
        sync(s.device)
        t0 = time.perf_counter()
        out = scoring(*a, **k)
        sync(s.device)
        timer["old_logprobs"] += time.perf_counter() - t0
        return out

    trainer._fixed_logprobs = timed_scoring
    for step in range(3):
        timer.update(reward=0.0, old_logprobs=0.0)
        t_collect, (groups, stats) = clock(trainer.collect, s.device)
        t_update, upd = clock(lambda: trainer.update(groups), s.device)
        trainer.step += 1
        if step == 0:
            continue  # warm-up
        rows.append(dict(step=step, generation_s=t_collect - timer["reward"],
                         scoring_s=timer["reward"] + timer["old_logprobs"], update_s=t_update - timer["old_logprobs"],
                         step_s=t_collect + t_update, answers=sum(len(g) for g in groups),
                         answer_len=stats["train/answer_len"], loss_finite=math.isfinite(upd["train/loss"])))
    mean_step = sum(r["step_s"] for r in rows) / len(rows)
    peak = torch.cuda.max_memory_allocated() if s.device == "cuda" else None
    rows.append(dict(step="mean", step_s=mean_step, peak_gib=gib(peak), projected_160_steps_min=160 * mean_step / 60,
                     note="training steps only: no evaluation, one sampling round per step"))


def generate_part(ctx: Context, rows: list) -> None:
    """HF generate, greedy, every sequence running to the full length (no EOS token), batch 64 x 512 new tokens."""
    from transformers import GenerationConfig

    s, name = ctx.scale, "qwen2-7b"
    batch, prompt, new = s.generate
    model = ctx.frozen(name)
    ids, _, attention = make_batch(model.config.vocab_size, prompt, batch, s.device, seed=2)
    model.generation_config.eos_token_id = None

    def run(tokens):
        config = GenerationConfig(max_new_tokens=tokens, do_sample=False, use_cache=True, pad_token_id=0,
                                  eos_token_id=None)
        with torch.no_grad():
            return model.generate(input_ids=ids, attention_mask=attention, generation_config=config)

    run(4)  # warm-up
    seconds, peak, out = measure(lambda: run(new), s.device)
    made = out.shape[1] - prompt
    rows.append(dict(model=ctx.label(name), batch=batch, prompt_tokens=prompt, new_tokens=made, seconds=seconds,
                     tokens_per_s=batch * made / seconds, ms_per_step=1000 * seconds / made, peak_gib=gib(peak)))


@dataclass(frozen=True)
class Part:
    name: str
    fn: Callable[[Context, list], None]
    limit_s: float  # GPU deadline, model building included


PARTS = [
    Part("bf16_vs_fp32", bf16_part, 30),
    Part("grpo_3b", grpo_part, 120),
    Part("generate_7b", generate_part, 60),
    Part("patch_ig_7b_2k", patch_ig_part, 45),
    Part("eap_7b_2k", eap_part("qwen2-7b", "2k"), 30),
    Part("eap_8b_2k", eap_part("llama3-8b", "2k"), 40),
    Part("eap_8b_8k", eap_part("llama3-8b", "8k"), 45),
    Part("eap_7b_8k", eap_part("qwen2-7b", "8k"), 45),  # last: an out-of-memory here loses nothing else
]
SMOKE_LIMIT_S = 60  # per part on CPU: tiny models, but a loaded CI machine


# --------------------------------------------------------------------------------------------------- runner, report
def run_part(part: Part, ctx: Context, limit_s: float) -> dict:
    """Run one part under its deadline; its rows survive a failure half-way, the error is one line."""
    rows: list = []
    status, error = "ok", None
    t0 = time.perf_counter()
    try:
        with deadline(limit_s):
            part.fn(ctx, rows)
    except PartTimeout as exc:
        status, error = "timeout", str(exc)
    except Exception as exc:  # noqa: BLE001  (out of memory included: the next part must still run)
        status, error = "error", f"{type(exc).__name__}: {str(exc).strip().splitlines()[0] if str(exc).strip() else ''}"
        traceback.print_exc(file=sys.stderr)
    if status != "ok":
        ctx.drop_models()  # hooks or flags may be half-restored; the next part rebuilds what it needs
    free_memory()
    return dict(name=part.name, status=status, error=error, limit_s=limit_s, seconds=time.perf_counter() - t0,
                rows=rows)


def clean(value):
    """JSON-safe: a non-finite float becomes its string ("nan", "inf"), so it cannot pass as a number."""
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    if isinstance(value, dict):
        return {k: clean(v) for k, v in value.items()}
    if isinstance(value, list):
        return [clean(v) for v in value]
    return value


def cell(value) -> str:
    if value is None:
        return "n/a"
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value).replace("|", "/")  # an error message must not split the table's columns


def markdown(report: dict) -> str:
    lines = [f"device: {report['device']}; torch {report['torch']}, transformers {report['transformers']}; "
             f"budget {report['budget_s']:g} s (parts) + {STARTUP_S} s (startup)", "",
             "| part | status | seconds | limit | error |", "|---|---|---|---|---|"]
    for p in report["parts"]:
        lines.append(f"| {p['name']} | {p['status']} | {p['seconds']:.1f} | {p['limit_s']:g} | {cell(p['error'])} |")
    for p in report["parts"]:
        if not p["rows"]:
            continue
        keys = list(dict.fromkeys(k for row in p["rows"] for k in row))
        lines += ["", f"**{p['name']}**", "", "| " + " | ".join(keys) + " |", "|" + "---|" * len(keys)]
        lines += ["| " + " | ".join(cell(row.get(k)) for k in keys) + " |" for row in p["rows"]]
    return "\n".join(lines) + "\n"


def write(report: dict, out: Path | None) -> None:
    if out is None:
        return
    out.mkdir(parents=True, exist_ok=True)
    (out / "gpu_check.json").write_text(json.dumps(clean(report), indent=1))
    (out / "gpu_check.md").write_text(markdown(report))


def device_name(scale: Scale) -> str:
    if scale.device == "cuda":
        return f"{torch.cuda.get_device_name(0)} ({torch.cuda.get_device_properties(0).total_memory / GiB:.0f} GiB)"
    return f"CPU ({platform.processor() or platform.machine()}, {torch.get_num_threads()} threads)"


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--smoke", action="store_true", help="every part on tiny configs on CPU (seconds)")
    p.add_argument("--out", type=Path, help="folder for gpu_check.json and gpu_check.md")
    p.add_argument("--parts", help=f"comma-separated subset of: {','.join(x.name for x in PARTS)}")
    a = p.parse_args(argv)
    names = [x.name for x in PARTS]
    chosen = a.parts.split(",") if a.parts else names
    unknown = sorted(set(chosen) - set(names))
    if unknown:
        print(f"error: unknown part(s) {unknown}; known: {names}", file=sys.stderr)
        return 2
    if not a.smoke and not torch.cuda.is_available():
        print("error: no CUDA device; run with --smoke for the CPU check of the code paths", file=sys.stderr)
        return 2
    scale = SMOKE if a.smoke else GPU
    parts = [x for x in PARTS if x.name in chosen]
    limits = {x.name: SMOKE_LIMIT_S if a.smoke else x.limit_s for x in parts}
    import transformers

    report = dict(device=device_name(scale), torch=torch.__version__, transformers=transformers.__version__,
                  smoke=a.smoke, budget_s=sum(limits.values()), parts=[])
    print(f"gpu_check on {report['device']}: {len(parts)} parts, sum of their limits {report['budget_s']:g} s "
          f"(+ {STARTUP_S} s startup; the GPU run must fit in {BUDGET_S} s)", flush=True)
    ctx = Context(scale)
    for part in parts:
        result = run_part(part, ctx, limits[part.name])
        report["parts"].append(result)
        print(f"[{part.name}] {result['status']} in {result['seconds']:.1f} s"
              + (f": {result['error']}" if result["error"] else ""), flush=True)
        write(report, a.out)
    print("\n" + markdown(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())
