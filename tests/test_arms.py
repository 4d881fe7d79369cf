"""The controlled training arms (sft, rft, dpo on TRL) and the reasoning-vector source, on tiny random models."""

import copy

import pytest
import torch

from rlsft.training import kind_of
from rlsft.arms.config import as_arm_recipe
from rlsft.arms.data import dpo_pairs, reference_answer, rft_examples, sft_examples, stop_id
from rlsft.training.derived import folder_name
from rlsft.arms.train import dpo_trainer, last_checkpoint, run, sft_trainer
from rlsft.data import Record, arithmetic_records
from rlsft.errors import RlsftError
from rlsft.grading import grade
from rlsft.models import build_tiny_model, load_model
from rlsft.templates import encode_prompt

TRAIN = {"name": "arith", "source": "arithmetic", "arithmetic": {"count": 30, "digits": 1}}


pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py: deterministic, single-thread sums


def _recipe(**kw):
    return as_arm_recipe({"train": TRAIN, "batch_size": 4, "lr": 1e-3, "epochs": 1, "save_every": 0, **kw})


def _answer_logprobs(model, prompt: list[int], answer: list[int]) -> torch.Tensor:
    """log p(answer token | everything before it), one sequence, no padding: the independent computation."""
    ids = torch.tensor([prompt + answer])
    logp = torch.log_softmax(model(ids).logits[0].double(), -1)
    return torch.stack([logp[len(prompt) + i - 1, t] for i, t in enumerate(answer)])


def test_reference_answers_are_in_the_bases_format_and_graded_correct():
    """The base writes "6 + 8 = 14" (24 of its 33 correct answers on arith_heldout; none boxed): the sft arm's
    references say the same, for 1- and 2-digit questions, and the grader reads the result from them."""
    import re

    for r in arithmetic_records(20, 1, 1, "bare", 0) + arithmetic_records(20, 2, 1, "bare", 0):
        text = reference_answer(r)
        assert re.fullmatch(r"\d+ [+-] \d+ = \d+", text) and text.endswith(f"= {r.answer}"), text
        assert grade(text, r.answer) == (r.answer, True), text
    assert reference_answer(Record("g", "How many?", "42")) == "The answer is 42."


def test_sft_loss_is_the_mean_answer_token_nll_with_the_prompt_masked(tmp_path):
    model, tok = build_tiny_model(seed=0)
    recs = arithmetic_records(3, 1, 1, "bare", 0)
    examples = sft_examples(tok, "chat", recs, stop_id(model, tok))
    prompts = [encode_prompt(tok, "chat", r.question) for r in recs]
    for e, p in zip(examples, prompts):  # the prompt is exactly what generation reads, then the answer, masked 0/1
        assert e["input_ids"][: len(p)] == p and e["completion_mask"] == [0] * len(p) + [1] * (len(e["input_ids"]) - len(p))
        assert e["input_ids"][-1] == tok.eos_token_id
    trainer = sft_trainer(model, tok, examples, _recipe(), tmp_path, "cpu")
    batch = trainer.data_collator([trainer.train_dataset[i] for i in range(3)])
    loss = trainer.compute_loss(model, batch)
    nll = torch.cat([-_answer_logprobs(model, p, e["input_ids"][len(p):]) for e, p in zip(examples, prompts)])
    assert loss.item() == pytest.approx(nll.mean().item(), rel=1e-5)
    everything = torch.cat([-_answer_logprobs(model, e["input_ids"][:1], e["input_ids"][1:]) for e in examples])
    assert abs(loss.item() - everything.mean().item()) > 1e-3  # a loss over prompt tokens too would differ


def _sample(qid, correct, ids, reason="eos"):
    return {"id": qid, "prompt_ids": [1, 2, 3], "output_ids": ids, "finish_reason": reason, "correct": correct}


def test_rft_keeps_exactly_the_correct_samples():
    samples = [_sample("a", True, [10]), _sample("a", False, [11]), _sample("b", False, [12]),
               _sample("b", True, [13, 14], "length"), _sample("c", True, [15])]
    out = rft_examples(samples, stop=99)
    assert [e["input_ids"] for e in out] == [[1, 2, 3, 10, 99], [1, 2, 3, 13, 14], [1, 2, 3, 15, 99]]
    assert [e["completion_mask"] for e in out] == [[0, 0, 0, 1, 1], [0, 0, 0, 1, 1], [0, 0, 0, 1, 1]]
    with pytest.raises(RlsftError, match=r"rft: no correct sample.*0 of 3 samples correct, 2 questions"):
        rft_examples([_sample("a", False, [1]), _sample("a", False, [2]), _sample("b", False, [3])], stop=99)


def test_dpo_pairs_a_correct_with_an_incorrect_sample_of_the_same_question():
    samples = [_sample("a", True, [10]), _sample("a", False, [11]), _sample("a", True, [12]), _sample("a", False, [13]),
               _sample("b", True, [14]), _sample("c", False, [15])]
    assert dpo_pairs(samples, 99, pairs_per_question=1) == [
        {"prompt_ids": [1, 2, 3], "chosen_ids": [10, 99], "rejected_ids": [11, 99]}]
    assert [p["chosen_ids"] for p in dpo_pairs(samples, 99, pairs_per_question=2)] == [[10, 99], [12, 99]]
    with pytest.raises(RlsftError, match=r"dpo: no question has both.*2 questions: 1 all correct, 1 all wrong; 1 of 2"):
        dpo_pairs([_sample("b", True, [14]), _sample("c", False, [15])], 99)


def test_dpo_loss_equals_the_sigmoid_loss_computed_by_hand(tmp_path):
    model, tok = build_tiny_model(seed=0)
    reference = copy.deepcopy(model)
    prompts = [encode_prompt(tok, "chat", f"What is {i} + 2?") for i in range(3)]
    pairs = [{"prompt_ids": p, "chosen_ids": [40 + i, 41, 2], "rejected_ids": [50 + i, 2]} for i, p in enumerate(prompts)]
    trainer = dpo_trainer(model, tok, pairs, _recipe(kind="dpo", beta=0.1), tmp_path, "cpu")  # reference = model now
    with torch.no_grad():  # move the policy away from the reference
        for p in model.parameters():
            p.add_(0.05 * torch.randn_like(p))
    batch = trainer.data_collator([trainer.train_dataset[i] for i in range(3)])
    loss = trainer.compute_loss(model, batch)

    def margin(m, pair):
        return (_answer_logprobs(m, pair["prompt_ids"], pair["chosen_ids"]).sum()
                - _answer_logprobs(m, pair["prompt_ids"], pair["rejected_ids"]).sum())

    with torch.no_grad():
        z = torch.stack([0.1 * (margin(model, q) - margin(reference, q)) for q in pairs])
    expected = -torch.log(1 / (1 + torch.exp(-z))).mean()
    assert loss.item() == pytest.approx(expected.item(), rel=1e-4)
    assert abs(z).max() > 1e-3  # the policy really differs from the reference


class _Kill:
    """A TrainerCallback that stops the process-like run after a given step (its checkpoint is written first)."""

    def __new__(cls, at):
        from transformers import TrainerCallback

        class Kill(TrainerCallback):
            def on_step_end(self, args, state, control, **kw):
                if state.global_step == at + 1:
                    raise KeyboardInterrupt("killed")

        return Kill()


@pytest.mark.parametrize("kind", ["sft", "dpo"])
def test_a_killed_training_resumes_to_the_same_weights(tmp_path, kind):
    def train(folder, callbacks=()):
        model, tok = build_tiny_model(seed=0)
        recipe = _recipe(kind=kind, epochs=2, save_every=2, seed=5)
        recs = arithmetic_records(12, 1, 1, "bare", 0)
        stop = stop_id(model, tok)
        if kind == "sft":
            trainer = sft_trainer(model, tok, sft_examples(tok, "chat", recs, stop), recipe, folder, "cpu", callbacks)
        else:
            pairs = [{"prompt_ids": encode_prompt(tok, "chat", r.question), "chosen_ids": [40 + i % 7, stop],
                      "rejected_ids": [50 + i % 5, 41, stop]} for i, r in enumerate(recs)]
            trainer = dpo_trainer(model, tok, pairs, recipe, folder, "cpu", callbacks)
        run(trainer)
        return trainer

    full = train(tmp_path / "full")
    assert full.state.global_step == 6
    with pytest.raises(KeyboardInterrupt):
        train(tmp_path / "cut", [_Kill(2)])
    assert last_checkpoint(tmp_path / "cut").endswith("checkpoint-2")
    resumed = train(tmp_path / "cut")
    assert resumed.state.global_step == 6
    for (n, a), (_, b) in zip(full.model.named_parameters(), resumed.model.named_parameters()):
        assert torch.equal(a, b), n
    base, _ = build_tiny_model(seed=0)
    assert not torch.equal(next(base.parameters()), next(full.model.parameters()))  # it trained


def test_cache_key_follows_the_recipe_and_the_base():
    spec = {"source": "derived", "base": {"source": "tiny", "tiny": {"seed": 3}},
            "recipe": {"kind": "sft", "train": TRAIN, "lr": 1e-5}}
    key = folder_name(spec)
    assert key.startswith("sft-")
    for change in ({"lr": 2e-5}, {"kind": "rft"}, {"epochs": 2}, {"template": "chat_brief"}, {"seed": 1},
                   {"train": {**TRAIN, "seed": 4}}, {"eval_n": 8}):
        assert folder_name({**spec, "recipe": {**spec["recipe"], **change}}) != key, change
    assert folder_name({**spec, "base": {"source": "tiny", "tiny": {"seed": 4}}}) != key
    assert folder_name({**spec, "recipe": {**spec["recipe"], "save_every": 3}}) == key  # checkpointing only
    assert folder_name({**spec, "recipe": {**spec["recipe"], "lr_swept": True}}) == key  # the budget table's only
    for kind in ("rft", "dpo"):
        other = {**spec, "recipe": {**spec["recipe"], "kind": kind}}
        for change in ({"samples": 8}, {"temperature": 0.9}, {"beta": 0.2} if kind == "dpo" else {"max_new_tokens": 9}):
            assert folder_name({**other, "recipe": {**other["recipe"], **change}}) != folder_name(other), (kind, change)
    from rlsft.training.derived import derived_fingerprint

    assert derived_fingerprint(spec)["key"] == key  # an arm's fingerprint names its folder, kind included


def test_unknown_arm_and_bad_recipes_are_named():
    assert kind_of("smollm2_arith") == "grpo" and kind_of("smollm2_sft") == "sft" and kind_of({"lr": 1e-6}) == "grpo"
    with pytest.raises(RlsftError, match=r"unknown training kind 'ppo'; expected one of \['grpo', 'grpo_random', "
                                         r"'grpo_format', 'sft', 'rft', 'dpo'\]"):
        load_model({"source": "derived", "base": {"source": "tiny"}, "recipe": {"kind": "ppo"}}, device="cpu")
    with pytest.raises(RlsftError, match="sft recipe: `train`"):
        as_arm_recipe({"kind": "sft"})
    with pytest.raises(RlsftError, match="training-arm recipe: .*lrr"):
        as_arm_recipe({"train": TRAIN, "lrr": 1})


def test_derived_sft_trains_once_caches_and_records_its_budget(cache_dir, capsys):
    import json

    spec = {"source": "derived", "base": {"source": "tiny", "tiny": {"seed": 3}},
            "recipe": {"kind": "sft", "train": TRAIN, "eval_n": 4, "batch_size": 8, "lr": 1e-3, "epochs": 2}}
    a, _ = load_model(spec, device="cpu")
    assert capsys.readouterr().out.count("is not cached: training it now") == 1
    b, _ = load_model(spec, device="cpu")
    assert "is not cached" not in capsys.readouterr().out
    assert all(torch.equal(p, q) for p, q in zip(a.parameters(), b.parameters()))
    budget = json.loads((cache_dir / "models" / folder_name(spec) / "budget.json").read_text())
    distinct = len({r.question for r in arithmetic_records(30, 1, 1, "bare", 0)}) - 4  # eval_n held out
    assert budget["questions"] == budget["examples"] == distinct and budget["held_out"] == 4
    assert budget["optimizer_steps"] == 2 * -(-distinct // 8) and budget["answer_tokens"] > 2 * distinct
    assert budget["wall_s"] > 0 and budget["loss_last"] < budget["loss_first"]
    from rlsft.training.derived import training_budget

    assert budget["samples"] == 0 and training_budget(spec) == {**budget, "lr_swept": False}  # what `evaluate` prints


def _tiny(seed, **kw):
    return {"source": "tiny", "tiny": {"seed": seed, **kw}}


def test_vector_stage_is_the_parameter_arithmetic():
    model, _ = load_model({"source": "vector", "target": _tiny(0), "plus": _tiny(1), "minus": _tiny(2), "scale": 0.5},
                          device="cpu")
    (t, _), (p, _), (m, _) = (build_tiny_model(seed=s) for s in (0, 1, 2))
    ps, ms = dict(p.named_parameters()), dict(m.named_parameters())
    for name, value in t.named_parameters():
        expected = value.detach().double() + 0.5 * (ps[name].detach().double() - ms[name].detach().double())
        got = dict(model.named_parameters())[name].detach().double()
        assert torch.allclose(got, expected, atol=1e-6), name
    from rlsft.models import fingerprint

    spec = {"source": "vector", "target": _tiny(0), "plus": _tiny(1), "minus": _tiny(2), "scale": 0.5}
    assert fingerprint(spec) != fingerprint({**spec, "scale": 1.0}) != fingerprint({**spec, "plus": _tiny(3)})


@pytest.mark.parametrize("other,message", [
    (_tiny(1, intermediate=32), r"parameter 'model.layers.0.mlp.down_proj.weight' has shape \(64, 128\) in target but "
                                r"\(64, 32\) in plus"),
    (_tiny(1, layers=3), r"parameter 'model.layers.2.input_layernorm.weight' is in plus but not in target"),
])
def test_vector_stage_refuses_mismatched_models(other, message):
    with pytest.raises(RlsftError, match="vector stage: the models are not compatible: " + message):
        load_model({"source": "vector", "target": _tiny(0), "plus": other, "minus": _tiny(2)}, device="cpu")
    with pytest.raises(RlsftError, match=r"needs `target`, `plus` and `minus`.*\['minus'\]"):
        load_model({"source": "vector", "target": _tiny(0), "plus": _tiny(1)}, device="cpu")


def test_held_out_questions_are_never_trained_on():
    from rlsft.grpo.data import recipe_data

    heldout = {"name": "h", "source": "arithmetic", "seed": 0,
               "arithmetic": {"count": 20, "digits": 1, "unique": True}}
    recipe = _recipe(train={**TRAIN, "seed": 1, "arithmetic": {"count": 200, "digits": 1}}, eval=heldout, eval_n=20)
    train, evals = recipe_data(recipe)
    assert len({r.question for r in evals}) == len(evals) == 20
    assert not {r.question for r in train} & {r.question for r in evals} and len(train) > 50


def test_steps_fix_the_optimizer_steps_and_the_trained_tokens_are_counted(cache_dir):
    """method.md 8, matched budgets: `steps` cycles the examples (one pass of 24 in batches of 7, 7, 7 and 3, then one
    more batch of 7); the budget counts the pass exactly and the extra batch at the examples' mean answer length."""
    from rlsft.training.derived import training_budget

    spec = {"source": "derived", "base": {"source": "tiny", "tiny": {"seed": 3}},
            "recipe": {"kind": "sft", "train": TRAIN, "eval_n": 4, "batch_size": 7, "lr": 1e-3, "steps": 5}}
    load_model(spec, device="cpu")
    budget = training_budget(spec)
    model, tok = build_tiny_model(seed=3)
    from rlsft.grpo.data import recipe_data

    records = recipe_data(as_arm_recipe(spec["recipe"]))[0]
    from rlsft.arms.data import distinct_questions

    per_example = [sum(e["completion_mask"]) for e in
                   sft_examples(tok, "chat", distinct_questions(records), stop_id(model, tok))]
    assert len(per_example) == 24
    assert budget["optimizer_steps"] == 5 and budget["examples_seen"] == 24 + 7 and budget["lr"] == 1e-3
    assert budget["answer_tokens"] == round(sum(per_example) + 7 * sum(per_example) / 24)


def test_one_seed_trains_to_the_same_weights_twice_and_another_seed_does_not(tmp_path):
    def trained(seed, cache):
        spec = {"source": "derived", "base": {"source": "tiny", "tiny": {"seed": 3}},
                "recipe": {"kind": "sft", "train": TRAIN, "eval_n": 4, "lr": 1e-3, "steps": 3, "seed": seed}}
        return load_model(spec, device="cpu", cache_dir=str(tmp_path / cache))[0]

    first, again, other = trained(0, "a"), trained(0, "b"), trained(1, "c")
    assert all(torch.equal(p, q) for p, q in zip(first.parameters(), again.parameters()))
    assert not all(torch.equal(p, q) for p, q in zip(first.parameters(), other.parameters()))


def test_the_arms_family_trains_each_arm_on_three_seeds_at_one_budget():
    """conf/model_pair/smollm2_arms.yaml (method.md 8): six trained arms, controls included, three seeds each from one
    base; one learning rate, 20 optimizer steps in every arm, full batches; the controls are the grpo recipe."""
    from test_config import composed
    from rlsft.config import validate
    from rlsft.experiments.common import RunContext
    from rlsft.grpo.config import recipe_dict
    from rlsft.training.derived import split_spec

    cfg = composed("model_pair=smollm2_arms", "experiment=eap", "eap.reference=base")
    validate(cfg)
    ctx = RunContext(cfg, None, "", None)
    arms = ctx.arms()
    trained = ["sft", "rft", "dpo", "grpo", "grpo_random", "grpo_format"]
    assert arms == {"base": ["base"], **{a: [f"{a}_s{s}" for s in (0, 1, 2)] for a in trained}}
    assert list(cfg.eap.compare) == trained and cfg.model_pair.budget_reference == "grpo"
    stages = {s.name: ctx.model_spec(s) for s in ctx.stages()}
    specs = {a: [split_spec(stages[n]) for n in arms[a]] for a in trained}
    assert all(base == specs["sft"][0][0] for a in trained for base, _, _ in specs[a])  # one base
    assert all([r.seed for _, _, r in specs[a]] == [0, 1, 2] for a in trained)
    recipes = {a: specs[a][0][2] for a in trained}
    assert {r.lr for r in recipes.values()} == {2e-5}
    assert {recipes[a].steps for a in ("sft", "rft", "dpo")} == {recipes["grpo"].steps * recipes["grpo"].mini_batches}
    # trained answer tokens are matched by the batch sizes (measured in the budget table); every offline step has its
    # full batch, so tokens follow steps x batch_size, and GRPO resamples until its 16-answer batch is full
    assert all(recipes[a].full_batches for a in ("sft", "rft", "dpo"))
    assert {recipes[a].answer_tokens for a in ("sft", "rft", "dpo")} == {4250}  # each seed's batch sized to it
    assert recipes["grpo"].batch_questions * recipes["grpo"].num_generations == 16
    assert recipes["grpo"].dynamic_sampling and recipes["grpo"].max_resample == 7
    assert [specs[a][0][1].name for a in trained] == trained
    assert recipe_dict(recipes["grpo_format"]) == recipe_dict(recipes["grpo"])
    assert recipe_dict(recipes["grpo_random"]) == {**recipe_dict(recipes["grpo"]), "random_reward_rate": 0.34}


@pytest.mark.parametrize("full_batches,sizes", [(False, [4, 4, 2, 4, 4, 2, 4]), (True, [4, 4, 4, 4, 4, 4, 4])])
def test_full_batches_give_every_optimizer_step_batch_size_examples(tmp_path, full_batches, sizes):
    """The HF Trainer's own dataloader over 10 examples in batches of 4: a short last batch per pass, or none with
    full_batches (so trained tokens are steps x batch_size x the mean example's, rlsft.training.budget)."""
    model, tok = build_tiny_model(seed=0)
    examples = sft_examples(tok, "chat", arithmetic_records(10, 1, 1, "bare", 0), stop_id(model, tok))
    trainer = sft_trainer(model, tok, examples, _recipe(full_batches=full_batches, steps=7), tmp_path, "cpu")
    seen, loader = [], trainer.get_train_dataloader()
    while len(seen) < 7:
        seen += [len(batch["input_ids"]) for batch in loader][: 7 - len(seen)]
    assert seen == sizes


def test_full_batches_is_keyed_only_when_set():
    spec = {"source": "derived", "base": {"source": "tiny", "tiny": {"seed": 3}},
            "recipe": {"kind": "sft", "train": TRAIN, "lr": 1e-5}}
    assert folder_name({**spec, "recipe": {**spec["recipe"], "full_batches": False}}) == folder_name(spec)
    assert folder_name({**spec, "recipe": {**spec["recipe"], "full_batches": True}}) != folder_name(spec)


def test_a_token_target_sizes_the_batch_from_the_examples_and_trains_that_many_tokens(cache_dir):
    """method.md 8, matched budgets: with `answer_tokens` the batch comes from the examples built (their mean answer
    length), so the trained tokens land within half an example a step of the target, whatever the lengths; it is keyed
    only when set, and it needs full batches of a fixed step count."""
    from rlsft.arms.data import distinct_questions
    from rlsft.grpo.data import recipe_data
    from rlsft.training.derived import training_budget

    recipe = {"kind": "sft", "train": TRAIN, "eval_n": 4, "lr": 1e-3, "steps": 3, "full_batches": True,
              "answer_tokens": 150}
    spec = {"source": "derived", "base": {"source": "tiny", "tiny": {"seed": 3}}, "recipe": recipe}
    model, tok = build_tiny_model(seed=3)
    records = recipe_data(as_arm_recipe(recipe))[0]
    per_example = [sum(e["completion_mask"]) for e in
                   sft_examples(tok, "chat", distinct_questions(records), stop_id(model, tok))]
    mean = sum(per_example) / len(per_example)
    exact = 150 / (3 * mean)  # the fractional batch that would hit 150
    load_model(spec, device="cpu")
    budget = training_budget(spec)
    assert budget["batch_size"] == round(exact) and budget["answer_tokens_target"] == 150
    assert budget["examples_seen"] == 3 * round(exact) and budget["optimizer_steps"] == 3
    assert abs(budget["answer_tokens"] / 150 - 1) <= 1 / (2 * exact) + 0.01
    plain = {**spec, "recipe": {k: v for k, v in recipe.items() if k != "answer_tokens"}}
    assert folder_name({**spec, "recipe": {**recipe, "answer_tokens": 0}}) == folder_name(plain) != folder_name(spec)
    for bad in ({"full_batches": False}, {"steps": 0}, {"answer_tokens": -1}):
        with pytest.raises(RlsftError, match="answer_tokens"):
            as_arm_recipe({**recipe, **bad})


def test_a_token_target_beyond_the_examples_trains_on_all_of_them_and_says_so(cache_dir, caplog):
    """Few correct base samples (rft) can hold fewer examples than the batch the target asks for: the arm trains on
    every example each step, with a warning, instead of stopping a study; its budget shows the shortfall."""
    from rlsft.training.derived import training_budget

    recipe = {"kind": "sft", "train": {**TRAIN, "arithmetic": {"count": 6, "digits": 1}}, "eval_n": 2, "lr": 1e-3,
              "steps": 2, "full_batches": True, "answer_tokens": 10_000}
    spec = {"source": "derived", "base": {"source": "tiny", "tiny": {"seed": 3}}, "recipe": recipe}
    with caplog.at_level("WARNING"):
        load_model(spec, device="cpu")
    budget = training_budget(spec)
    assert budget["batch_size"] == budget["examples"] == 4 and budget["answer_tokens"] < 10_000 / 5
    assert "answer_tokens 10000 needs" in caplog.text and "training on 4 a step" in caplog.text
