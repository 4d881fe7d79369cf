"""The GRPO trainer on tiny random models: learning, dynamic sampling, exact resume, LoRA, the derived source."""

import threading

import numpy as np
import pytest
import torch

from rlsft.config import EAPConfig, TruncationConfig
from rlsft.data import Record
from rlsft.eap import cut_length
from rlsft.errors import RlsftError
from rlsft.experiments.eap_drift import EAP_METRICS, EAPDrift
from rlsft.grpo import as_recipe
from rlsft.grpo.reward import Scored
from rlsft.grpo.trainer import GRPOTrainer
from rlsft.models import build_tiny_model, load_model


def _records(n=40, answer="7"):
    return [Record(f"q{i}", f"What is {i % 5} + {i % 3}?", answer) for i in range(n)]


def _recipe(**kw):
    base = dict(temperature=1.0, max_new_tokens=3, num_generations=8, batch_questions=4, steps=4, lr=3e-3,
                eval_every=0, eval_n=8, save_every=0, mini_batches=2, micro_batch_size=16)
    return as_recipe({**base, **kw})


def _drift(n, **eap):
    """The EAP drift on every question a random tiny model answers: no correctness filter, a length window that
    keeps answers of 1 to 3 tokens whatever the model learns (method.md 2.1's window is for real answers)."""
    return EAPDrift(EAPConfig(require_correct=False, **eap), TruncationConfig(n=n, beta=0.0, gamma=10.0, delta=1.0))


pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py: deterministic, single-thread sums


def test_reward_rises_on_a_learnable_task_with_eap_evaluation():
    """A random tiny model learns to answer '7' (digits are single tokens); EAP differences are logged."""
    model, tok = build_tiny_model(seed=0)
    recs = _records()
    recipe = _recipe(steps=30, eval_every=15)
    history = GRPOTrainer(model, tok, recipe, recs[8:], recs[:8], "chat", log=lambda s: None,
                          callbacks=[_drift(4, alphas=[0.5, 1.0])]).train()
    rewards = [row["train/reward_mean"] for row in history if "train/reward_mean" in row]
    assert len(rewards) == 30
    assert sum(rewards[-5:]) / 5 > sum(rewards[:5]) / 5 + 1.0, rewards
    evals = [row for row in history if "eval/accuracy" in row]
    assert [row["step"] for row in evals] == [0, 15, 30]
    assert all(evals[0][f"eap/{m}_diff"] == 0.0 for m in EAP_METRICS)
    assert any(evals[-1][f"eap/{m}_diff"] != 0.0 for m in EAP_METRICS)
    assert evals[-1]["eval/accuracy"] > evals[0]["eval/accuracy"]
    for key in ("train/zero_var_frac", "train/entropy", "train/clip_frac", "train/answer_len", "train/truncated",
                "train/reward_std"):
        assert key in history[-1]


def test_faithfulness_at_each_evaluation_matches_a_per_sample_recomputation():
    """eap.faithfulness logs frac80 of the current and initial model; at step 0 both are the same model (diff 0),
    and the value equals frac80 rebuilt from each answer run, scored and patched on its own (no padding, batches of
    one; the mean-positional baseline averaged here by relative position), which catches a trainer that mixes up
    answers, halves, baselines or cut lengths."""
    from rlsft.eap import build_graph, edge_scores, patched_losses, truncation_inputs
    from rlsft.eap.faithfulness import cross_curve, faithfulness_losses, share_grid
    from rlsft.eap.faithfulness_stats import curve_summaries
    from rlsft.eap.scores import source_outputs

    model, tok = build_tiny_model(seed=0, layers=4)  # 2 layers: a flat curve, frac80 = the lowest grid point
    recs = _records()
    recipe = _recipe(steps=2, eval_every=2, eval_n=8)
    initial = {k: v.clone() for k, v in model.state_dict().items()}
    drift = _drift(8, alphas=[1.0], faithfulness=True, faithfulness_points=9)
    trainer = GRPOTrainer(model, tok, recipe, recs[8:], recs[:8], "chat", log=lambda s: None, callbacks=[drift])
    history = trainer.train()
    evals = [row for row in history if "eval/accuracy" in row]
    assert evals[0]["eap/frac80_diff"] == 0.0 and 1e-3 < evals[0]["eap/frac80"] < 1
    assert "eap/frac80_diff" in evals[-1]

    fresh, _ = build_tiny_model(seed=0, layers=4)
    fresh.load_state_dict(initial)
    fresh.eval()
    # step 0's selection: every question the initial model answered with a token (the window keeps them all), by id
    answers = sorted((a for a in drift.initial_answers if a.output_ids), key=lambda a: a.question_id)
    assert len(answers) >= 4 and evals[0]["eap/n"] == len(answers)
    cut = cut_length(1.0, sum(len(a.output_ids) for a in answers) / len(answers))
    graph = build_graph(fresh)
    items = [truncation_inputs(a.prompt_ids, a.output_ids, cut) for a in answers]
    one = [(torch.as_tensor(it.input_ids)[None], torch.as_tensor(it.loss_mask)[None],
            torch.ones(1, len(it.input_ids), dtype=torch.long)) for it in items]
    with torch.no_grad():
        outs = [source_outputs(fresh, x[0], x[2], graph)[0].float() for x in one]  # [n_src, len, d] each
    T = max(o.shape[1] for o in outs)
    total, count = torch.zeros(outs[0].shape[0], T, outs[0].shape[2]), torch.zeros(T)
    for o in outs:
        total[:, : o.shape[1]] += o
        count[: o.shape[1]] += 1
    B = [(total / count[None, :, None])[None, :, : o.shape[1]] for o in outs]
    W = torch.cat([edge_scores(fresh, *x, graph, baseline="input", baseline_acts=b) for x, b in zip(one, B)])

    def evaluate(pairs):
        return np.array([float(patched_losses(fresh, *one[k], graph=graph, keep=torch.from_numpy(keep),
                                              baseline="input", baseline_acts=B[k])) for k, keep in pairs])

    res = faithfulness_losses(W.numpy(), graph, evaluate, share_grid(9), n_splits=1, draws=0, seed=0, within=False)
    expected = float(curve_summaries(res["shares"], cross_curve(res))["frac80"])
    assert evals[0]["eap/frac80"] == pytest.approx(expected, rel=1e-4)


def test_dynamic_sampling_keeps_only_mixed_groups():
    kinds = {"right": [True], "wrong": [False], "mixed": [True, False]}
    recs = [Record(f"{k}{i}", f"Question {k} {i}?", "1", {"kind": k}) for k in kinds for i in range(2)]
    calls = {}

    def reward(text, rec):  # mixed questions alternate right / wrong within their group
        c = calls.setdefault(rec.id, 0)
        calls[rec.id] += 1
        pattern = kinds[rec.meta["kind"]]
        ok = pattern[c % len(pattern)]
        return Scored(3.0 if ok else -0.5, ok, None)

    model, tok = build_tiny_model(seed=0)
    recipe = _recipe(batch_questions=2, num_generations=4, max_resample=6, mini_batches=1)
    trainer = GRPOTrainer(model, tok, recipe, recs, [], "chat", reward_fn=reward, log=lambda s: None)
    groups, stats = trainer.collect()
    assert sorted(g[0].question_id for g in groups) == ["mixed0", "mixed1"]
    assert stats["train/groups_kept"] == 2 and stats["train/rounds"] >= 1
    n_groups = sum(v // 4 for v in calls.values())  # every group sampled, over all rounds
    mixed_sampled = sum(calls.get(f"mixed{i}", 0) // 4 for i in range(2))
    assert stats["train/zero_var_frac"] == pytest.approx((n_groups - mixed_sampled) / n_groups)
    # without dynamic sampling every group is kept
    recipe = _recipe(batch_questions=2, num_generations=4, dynamic_sampling=False, mini_batches=1)
    trainer = GRPOTrainer(model, tok, recipe, recs, [], "chat", reward_fn=reward, log=lambda s: None)
    groups, stats = trainer.collect()
    assert len(groups) == 2 and stats["train/rounds"] == 1


def _train(tmp, steps, **kw):
    model, tok = build_tiny_model(seed=0)
    recs = _records(24)
    recipe = _recipe(steps=steps, save_every=2, max_resample=2, warmup_steps=3, **kw)

    def reward(text, rec):  # mixed groups on a random model, so every step updates
        ok = len(text) % 2 == 0
        return Scored(3.0 if ok else -0.5 + 0.1 * len(text), ok, None)

    trainer = GRPOTrainer(model, tok, recipe, recs[4:], recs[:4], "chat", output_dir=tmp, reward_fn=reward,
                          log=lambda s: None)
    trainer.train()
    return trainer


def test_resume_reaches_the_same_weights(tmp_path):
    full = _train(tmp_path / "full", 4)
    _train(tmp_path / "cut", 2)  # "killed" after its step-2 checkpoint
    resumed = _train(tmp_path / "cut", 4)  # a new process: fresh model, resumes from step 2
    assert resumed.history[-1]["step"] == 4 and len(resumed.history) == 4
    for (n, a), (_, b) in zip(full.model.named_parameters(), resumed.model.named_parameters()):
        assert torch.equal(a, b), n
    assert all(r["train/groups_kept"] > 0 and r["train/clip_frac"] >= 0 for r in full.history)  # it trained
    assert any(r["train/clip_frac"] > 0 for r in full.history)  # and the second mini-batch was clipped somewhere
    for key in ("train/reward_mean", "train/loss", "train/groups_kept"):
        assert [r[key] for r in full.history] == [r[key] for r in resumed.history]
    assert (tmp_path / "cut" / "grpo_history.csv").read_text().startswith("step,")
    assert [p.name for p in (tmp_path / "cut" / "checkpoints").iterdir() if not p.name.startswith(".")] == ["step-000004"]
    with pytest.raises(RlsftError, match="different GRPO recipe.*lr"):
        _train(tmp_path / "cut", 6, lr=1e-3)


def test_lora_training_eap_and_merge():
    model, tok = build_tiny_model(seed=0)
    recs = _records(24)
    recipe = _recipe(steps=2, eval_every=2, lora={"r": 4, "alpha": 8})
    trainer = GRPOTrainer(model, tok, recipe, recs[4:], recs[:4], "chat", log=lambda s: None,
                          callbacks=[_drift(4, alphas=[1.0])])
    history = trainer.train()
    assert "eap/activation_intensity_diff" in history[-1]
    trainable = [n for n, p in trainer.model.named_parameters() if p.requires_grad]
    assert trainable and all("lora" in n for n in trainable)
    merged = trainer.final_model()
    assert not any("lora" in n for n, _ in merged.named_parameters())


@pytest.mark.filterwarnings("error::FutureWarning")
def test_gradient_checkpointing_uses_the_current_transformers_names():
    """transformers renamed gradient_checkpointing_enable to activation_checkpointing_enable (the old name warns);
    the recipe's gradient_checkpointing turns it on through the new one, and a step trains under it."""
    model, tok = build_tiny_model(seed=0)
    recs = _records(12)
    trainer = GRPOTrainer(model, tok, _recipe(steps=1, gradient_checkpointing=True), recs[4:], recs[:4], "chat",
                          log=lambda s: None)
    assert trainer.model.is_activation_checkpointing and not trainer.model.config.use_cache
    assert "train/reward_mean" in trainer.train()[-1]


def test_bad_gold_answer_is_a_clear_error():
    model, tok = build_tiny_model(seed=0)
    recs = _records(10) + [Record("bad", "Who?", "a red apple")]
    with pytest.raises(RlsftError, match="cannot parse the gold answer 'a red apple'.*question bad"):
        GRPOTrainer(model, tok, _recipe(), recs, [], "chat")


def test_derived_source_trains_once_and_caches(tmp_path, capsys):
    import rlsft.training  # noqa: F401  (registers the derived source before the two threads race to import it)

    spec = {"source": "derived", "base": {"source": "tiny", "tiny": {"seed": 3}},
            "recipe": {"train": {"name": "arith", "source": "arithmetic", "arithmetic": {"count": 30, "digits": 1}},
                       "eval_n": 4, "steps": 2, "max_new_tokens": 16, "batch_questions": 4, "lr": 1e-3,
                       "num_generations": 8, "dynamic_sampling": False,
                       "eval_every": 0, "save_every": 1}}
    from transformers import AutoModelForCausalLM, AutoTokenizer  # noqa: F401  (lazy imports are not thread-safe)

    results = []

    def load():
        results.append(load_model(spec, device="cpu", cache_dir=str(tmp_path)))

    threads = [threading.Thread(target=load) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    out = capsys.readouterr().out
    assert out.count("is not cached: training it now") == 1
    (a, _), (b, _) = results
    assert all(torch.equal(p, q) for p, q in zip(a.parameters(), b.parameters()))
    base, _ = load_model(spec["base"], device="cpu")
    assert not all(torch.equal(p, q) for p, q in zip(a.parameters(), base.parameters()))
    load_model(spec, device="cpu", cache_dir=str(tmp_path))
    assert "is not cached" not in capsys.readouterr().out
    changed = {**spec, "recipe": {**spec["recipe"], "steps": 3}}  # another recipe: another model
    from rlsft.training.derived import folder_name

    assert folder_name(changed) != folder_name(spec)
    assert folder_name({**spec, "recipe": {**spec["recipe"], "eval_every": 5}}) == folder_name(spec)
    # Its budget, in the arms' fields: no dynamic sampling, so each step samples 4 questions x 8 answers and updates.
    from rlsft.training.derived import training_budget

    budget = training_budget(spec, str(tmp_path))
    assert (budget["kind"], budget["steps"], budget["optimizer_steps"], budget["samples"]) == ("grpo", 2, 2, 2 * 4 * 8)
    assert 0 < budget["answer_tokens"] <= 2 * 4 * 8 * 16 and budget["wall_s"] > 0
    assert training_budget(changed, str(tmp_path)) is None and training_budget(spec["base"]) is None
