"""Every kind of cache entry, truncated or with a flipped bit, is reported in one warning line, moved aside and
recomputed to what an undamaged cache gives: generations, EAP scores, probe features, ablation block statistics,
derived models and GRPO checkpoints. Also: a finished derived model keeps no resume checkpoints."""

import json
import logging

import numpy as np
import pytest
import torch

from conftest import damage, launch
from rlsft.ablation import cached_block_statistics
from rlsft.data import arithmetic_records
from rlsft.generate import Sampling, generate_answers
from rlsft.models import build_tiny_model, build_tiny_tokenizer, load_model
from rlsft.probe import cached_features

HOW = ["truncate", "flip"]
FP = {"tiny": "damage-test"}


@pytest.fixture(scope="module")
def tiny():
    torch.set_num_threads(1)
    model, tok = build_tiny_model(layers=2, hidden=32, heads=4, kv_heads=2, seed=7)
    tok.padding_side = "left"
    return model.eval(), tok


class Loads:
    """A model loader that counts its calls: a cache hit never loads the model."""

    def __init__(self, tiny):
        self.tiny, self.n = tiny, 0

    def __call__(self):
        self.n += 1
        return self.tiny


def _aside(folder, name):
    """What was moved aside in ``folder`` (without the checksums that moved with it)."""
    return [p for p in folder.glob(f"{name}.corrupt-*") if p.suffix != ".sha256"]


def _warned(caplog) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING and "moved aside" in r.getMessage()]


@pytest.mark.parametrize("how", HOW)
def test_generations(tiny, tmp_path, how, caplog):
    recs = arithmetic_records(6, seed=4)
    loads = Loads(tiny)
    first = generate_answers(loads, recs, "chat", Sampling(8), FP, str(tmp_path), batch_size=3)
    (final,) = tmp_path.glob("generations/*/records.jsonl")
    damage(final, how)
    with caplog.at_level(logging.WARNING):
        again = generate_answers(loads, recs, "chat", Sampling(8), FP, str(tmp_path), batch_size=3)
    assert loads.n == 2 and len(_warned(caplog)) == 1 and len(_aside(final.parent, "records.jsonl")) == 1
    unseeded = lambda gens: [{k: v for k, v in g.items() if k != "seed"} for g in gens]  # seed: of its batch
    assert unseeded(again) == unseeded(first)
    # The repaired file is complete again: a third call loads nothing.
    assert generate_answers(loads, recs, "chat", Sampling(8), FP, str(tmp_path), batch_size=3) == again
    assert loads.n == 2


def _gens(tok, n=4):
    return [{"id": f"q{i}", "prompt_ids": tok(f"What is {i} + {i}?")["input_ids"],
             "output_ids": tok(f"It is \\boxed{{{2 * i}}}", add_special_tokens=False)["input_ids"]} for i in range(n)]


@pytest.mark.parametrize("how", HOW)
def test_probe_features(tiny, tmp_path, how, caplog):
    loads = Loads(tiny)
    gens = _gens(tiny[1])
    first = cached_features(loads, gens, ["question_end"], FP, "float32", str(tmp_path))
    (path,) = tmp_path.glob("features/*/features.npz")
    damage(path, how)
    with caplog.at_level(logging.WARNING):
        again = cached_features(loads, gens, ["question_end"], FP, "float32", str(tmp_path))
    assert loads.n == 2 and len(_warned(caplog)) == 1 and (_aside(path.parent, "features.npz"))
    assert again["question_end"].ids == first["question_end"].ids
    np.testing.assert_array_equal(again["question_end"].X, first["question_end"].X)


@pytest.mark.parametrize("how", HOW)
def test_block_statistics(tiny, tmp_path, how, caplog):
    loads = Loads(tiny)
    gens = _gens(tiny[1])
    first, key = cached_block_statistics(loads, gens, FP, "float32", str(tmp_path))
    damage(tmp_path / "block_stats" / key / "stats.npz", how)
    with caplog.at_level(logging.WARNING):
        again, _ = cached_block_statistics(loads, gens, FP, "float32", str(tmp_path))
    assert loads.n == 2 and len(_warned(caplog)) == 1
    for name in ("mean_out", "mean_delta", "one_minus_cos", "cka"):
        np.testing.assert_array_equal(getattr(again, name), getattr(first, name))


@pytest.mark.parametrize("how", HOW)
def test_faithfulness_losses(tmp_path, how, caplog):
    """The eap experiment's faithfulness losses: computed once, then loaded; a damaged losses.npz is moved aside and
    recomputed to the same losses."""
    from test_config import composed
    from rlsft.eap.faithfulness import share_grid
    from rlsft.experiments.common import RunContext
    from rlsft.experiments.eap import score_settings
    from rlsft.experiments.eap_causal import faithfulness_losses
    from rlsft.tracking import Tracker

    cfg = composed("experiment=eap", "model_pair=tiny", "run.device=cpu", "eap.faithfulness_baseline=zero",
                   "eap.faithfulness_splits=2", "eap.faithfulness_draws=1")
    ctx = RunContext(cfg, tmp_path, str(tmp_path / "cache"), Tracker("disabled", "rlsft", tmp_path, {}))
    stage, loads = ctx.stages()[0], []
    load_stage = ctx.load_stage
    ctx.load_stage = lambda s: loads.append(s.name) or load_stage(s)

    def run():
        ctx.release(stage)
        return faithfulness_losses(ctx, stage, _gens(build_tiny_tokenizer(), 4), 3, score_settings(cfg),
                                   share_grid(4), seed=0)

    first = run()
    assert run().keys() == first.keys() and loads == ["sft"]
    (path,) = (tmp_path / "cache").glob("eap_faithfulness/*/losses.npz")
    damage(path, how)
    with caplog.at_level(logging.WARNING):
        again = run()
    assert loads == ["sft", "sft"] and len(_warned(caplog)) == 1 and len(_aside(path.parent, "losses.npz")) == 1
    assert again.keys() == first.keys()
    for name in first:
        np.testing.assert_array_equal(again[name], first[name])


def _damage_and_rerun(tmp_path, cache_dir, args, pattern):
    """Run, damage the two entries matching `pattern` (one truncated, one flipped), run again: both must be moved
    aside and recomputed. Returns the two runs' eap_metrics.json."""
    res = launch(*args, f"hydra.run.dir={tmp_path / 'a'}")
    assert res.returncode == 0, res.stderr
    files = sorted(cache_dir.glob(pattern))
    assert len(files) == 2
    for path, how in zip(files, HOW):
        damage(path, how)
    res = launch(*args, f"hydra.run.dir={tmp_path / 'b'}")
    assert res.returncode == 0, res.stderr
    assert (res.stdout + res.stderr).count("moved aside") == 2, res.stderr
    assert all((_aside(p.parent, p.name)) for p in files)
    return [json.loads((tmp_path / run / "eap_metrics.json").read_text()) for run in "ab"]


@pytest.mark.slow
def test_eap_scores(tmp_path, cache_dir):
    """Both stages' score files damaged, one truncated and one flipped: the cached run recomputes the same table."""
    args = ["experiment=eap", "model_pair=tiny", "eap.require_correct=false", "dataset.arithmetic.count=6",
            "eap.alphas=[0.5]", "eap.n_boot=100", "logger=disabled"]
    a, b = _damage_and_rerun(tmp_path, cache_dir, args, "eap_scores/*/scores.npz")
    assert a == b


@pytest.mark.slow
def test_eap_faithfulness(tmp_path, cache_dir):
    """Both stages' faithfulness losses damaged (truncated, flipped): the cached run recomputes the same curves."""
    args = ["experiment=eap", "model_pair=tiny", "eap.require_correct=false", "dataset.arithmetic.count=6",
            "eap.alphas=[0.5]", "eap.n_boot=100", "logger=disabled", "eap.faithfulness=true",
            "eap.faithfulness_points=4", "eap.faithfulness_splits=2", "eap.faithfulness_draws=1"]
    a, b = _damage_and_rerun(tmp_path, cache_dir, args, "eap_faithfulness/*/losses.npz")
    assert a["alphas"]["0.5"]["faithfulness"] == b["alphas"]["0.5"]["faithfulness"]


DERIVED = {"source": "derived", "base": {"source": "tiny", "tiny": {"seed": 3}},
           "recipe": {"train": {"name": "arith", "source": "arithmetic", "arithmetic": {"count": 30, "digits": 1}},
                      "eval_n": 4, "steps": 1, "max_new_tokens": 8, "batch_questions": 4, "lr": 1e-3,
                      "num_generations": 4, "dynamic_sampling": False, "eval_every": 0,
                      "save_every": 1}}


def _derived(tmp_path, spec=DERIVED):
    from rlsft.training.derived import folder_name

    model, _ = load_model(spec, device="cpu", cache_dir=str(tmp_path))
    name = folder_name(spec)
    weights = [p.detach().clone() for p in model.parameters()]  # the loaded weights may be memory-mapped
    return weights, tmp_path / "models" / name, tmp_path / "training" / name


@pytest.mark.slow
def test_derived_model(tmp_path, capsys, caplog):
    first, target, work = _derived(tmp_path)
    assert not work.exists()  # final, so its resume checkpoints (optimizer state) are gone
    for how in HOW:
        damage(target / "model.safetensors", how)
        with caplog.at_level(logging.WARNING):
            again, _, _ = _derived(tmp_path)
        assert all(torch.equal(p, q) for p, q in zip(first, again))
    assert capsys.readouterr().out.count("is not cached: training it now") == 3 and len(_warned(caplog)) == 2
    assert len(_aside(target.parent, target.name)) == 2


@pytest.mark.slow
def test_derived_model_keeps_checkpoints_only_when_asked_and_resumes_after_a_kill(tmp_path, monkeypatch, capsys):
    from rlsft.grpo.trainer import GRPOTrainer

    def killed(self):
        raise KeyboardInterrupt

    real = GRPOTrainer.final_model
    monkeypatch.setattr(GRPOTrainer, "final_model", killed)
    with pytest.raises(KeyboardInterrupt):  # killed after the last checkpoint, before the model was saved
        _derived(tmp_path)
    monkeypatch.setattr(GRPOTrainer, "final_model", real)
    _, target, work = _derived(tmp_path)
    assert "[grpo] resumed from" in capsys.readouterr().out and not work.exists() and target.is_dir()
    kept = {**DERIVED, "keep_checkpoints": True, "base": {"source": "tiny", "tiny": {"seed": 4}}}
    _, _, work = _derived(tmp_path, kept)
    assert [p.name for p in (work / "checkpoints").iterdir()] == ["step-000001"]


def _train(folder, steps):
    from rlsft.data import Record
    from rlsft.grpo import as_recipe
    from rlsft.grpo.reward import Scored
    from rlsft.grpo.trainer import GRPOTrainer

    model, tok = build_tiny_model(seed=0)
    recs = [Record(f"q{i}", f"What is {i % 5} + {i % 3}?", "7") for i in range(16)]
    recipe = as_recipe(dict(temperature=1.0, max_new_tokens=3, num_generations=4, batch_questions=4, steps=steps,
                            lr=3e-3, eval_every=0, save_every=1, keep_checkpoints=3,
                            dynamic_sampling=False, micro_batch_size=16))

    def reward(text, rec):  # mixed groups on a random model, so every step updates
        return Scored(1.0 if len(text) % 2 == 0 else -0.1 * len(text), len(text) % 2 == 0, None)

    trainer = GRPOTrainer(model, tok, recipe, recs, [], "chat", output_dir=folder, reward_fn=reward,
                          log=lambda s: None)
    trainer.train()
    return trainer


@pytest.mark.slow
def test_grpo_checkpoint(tmp_path, caplog):
    """The two newest checkpoints damaged (one truncated, one flipped): training resumes from the one before them
    and reaches the weights of an uninterrupted run."""
    full = _train(tmp_path / "full", 3)
    _train(tmp_path / "cut", 3)
    folder = tmp_path / "cut" / "checkpoints"
    damage(folder / "step-000003" / "trainer.pt", "truncate")
    damage(folder / "step-000002" / "model.safetensors", "flip")
    with caplog.at_level(logging.WARNING):
        resumed = _train(tmp_path / "cut", 3)
    assert len(_warned(caplog)) == 2 and len(list(folder.glob("step-*.corrupt-*"))) == 2
    assert [r["step"] for r in resumed.history] == [1, 2, 3]
    for (n, a), (_, b) in zip(full.model.named_parameters(), resumed.model.named_parameters()):
        assert torch.equal(a, b), n
