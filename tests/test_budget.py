"""Matched training budgets (rlsft.training.budget): the tokens an arm trained on, and the within-10% check of the
budget table, on hand-made budgets."""

import random

import pytest

from rlsft.training.budget import (arm_means, batch_for_tokens, budget_gaps, check_arms, match_text, seen_tokens,
                                  warning_line, within)


@pytest.mark.parametrize("steps", [1, 2, 3, 5, 6, 7, 11])
def test_seen_tokens_counts_whole_passes_exactly_and_the_last_pass_in_expectation(steps):
    """Against the loop itself: passes of ceil(n / batch) batches over a reshuffled order, the last batch short; the
    partial pass averaged over many shuffles."""
    per_example = [3, 9, 4, 11, 6, 8, 5, 10, 7, 12]  # 10 examples, batches of 4: 3 steps a pass (4, 4, 2)
    draws, examples, tokens = 4000, set(), 0.0
    rng = random.Random(0)
    for _ in range(draws):
        seen, count = [], 0
        while count < steps:
            order = rng.sample(per_example, len(per_example))
            for i in range(0, len(order), 4):
                if count == steps:
                    break
                seen += order[i : i + 4]
                count += 1
        examples.add(len(seen))
        tokens += sum(seen) / draws
    got_examples, got_tokens = seen_tokens(per_example, 4, steps)
    assert examples == {got_examples}
    assert got_tokens == pytest.approx(tokens, rel=0.01)
    if steps % 3 == 0:  # whole passes: exact
        assert got_tokens == steps // 3 * sum(per_example)


def _budget(steps, tokens, lr=2e-5):
    return {"optimizer_steps": steps, "answer_tokens": tokens, "lr": lr}


def test_each_arm_is_checked_against_the_mean_of_the_reference_arms_seeds():
    budgets = {"grpo_s0": _budget(20, 3000), "grpo_s1": _budget(19, 3400),  # reference means: 19.5 steps, 3200 tokens
               "sft_s0": _budget(20, 3520), "rft_s0": _budget(20, 2800), "dpo_s0": _budget(18, 3200, lr=1e-5),
               "old": {"optimizer_steps": 20, "lr": 2e-5}, "base": None}
    gaps = budget_gaps(budgets, ["grpo_s0", "grpo_s1"])
    assert "base" not in gaps  # not trained: no row
    assert gaps["sft_s0"]["answer_tokens"] == pytest.approx(0.10) and within(gaps["sft_s0"])  # exactly 10%: matched
    assert gaps["rft_s0"]["answer_tokens"] == pytest.approx(-0.125) and not within(gaps["rft_s0"])
    assert gaps["dpo_s0"]["lr_same"] is False and not within(gaps["dpo_s0"])
    assert gaps["old"]["answer_tokens"] is None and not within(gaps["old"])  # unknown does not pass
    assert match_text(gaps["sft_s0"]) == "within 10%" and match_text(None) == ""
    assert match_text(gaps["rft_s0"]) == "answer_tokens -12%: not within 10%"
    assert match_text(gaps["dpo_s0"]) == "lr differs: not within 10%"  # 18 steps: -7.7%, within
    assert match_text(gaps["old"]) == "answer_tokens n/a: not within 10%"
    assert warning_line(gaps, "grpo") == (
        "[budget] warning: not within 10% of grpo's budget (method.md 8, matched budgets): rft_s0 (answer_tokens "
        "-12%); dpo_s0 (lr differs); old (answer_tokens n/a)")
    matched = {k: v for k, v in budgets.items() if k in ("grpo_s0", "grpo_s1", "sft_s0")}
    assert warning_line(budget_gaps(matched, ["grpo_s0", "grpo_s1"]), "grpo") is None


def test_steps_off_by_more_than_ten_percent_are_named():
    gaps = budget_gaps({"a": _budget(20, 1000), "b": _budget(17, 1050)}, ["a"])
    assert match_text(gaps["b"]) == "optimizer_steps -15%: not within 10%"


@pytest.mark.parametrize("steps", [1, 3, 7])
def test_full_batches_count_batch_size_examples_a_step_at_the_mean_length(steps):
    """Against the loop: each pass a reshuffled order cut into whole batches (the short one dropped)."""
    per_example = [3, 9, 4, 11, 6, 8, 5, 10, 7, 12]
    rng = random.Random(0)
    draws, tokens, examples = 2000, 0.0, set()
    for _ in range(draws):
        seen, order = [], []
        for _ in range(steps):
            if len(order) < 4:
                order = rng.sample(per_example, len(per_example))
            seen += order[:4]
            order = order[4:]
        examples.add(len(seen))
        tokens += sum(seen) / draws
    got_examples, got_tokens = seen_tokens(per_example, 4, steps, full_batches=True)
    assert examples == {got_examples} == {4 * steps}
    assert got_tokens == pytest.approx(tokens, rel=0.02)


def test_an_lr_picked_by_a_sweep_passes_and_says_so():
    """method.md 8: an arm that does not learn at the shared rate gets its own from a sweep; the table accepts it (the
    steps and tokens must still match) and names it, a differing lr without a sweep still fails."""
    budgets = {"grpo_s0": _budget(20, 3000), "dpo_s0": {**_budget(20, 3100, lr=5e-6), "lr_swept": True},
               "dpo_s1": {**_budget(20, 4000, lr=5e-6), "lr_swept": True}, "rft_s0": _budget(20, 3000, lr=5e-6)}
    gaps = budget_gaps(budgets, ["grpo_s0"])
    assert within(gaps["dpo_s0"]) and match_text(gaps["dpo_s0"]) == "within 10% (its lr from its lr sweep)"
    assert match_text(gaps["dpo_s1"]) == "answer_tokens +33%: not within 10%"
    assert match_text(gaps["rft_s0"]) == "lr differs: not within 10%"
    assert match_text(gaps["grpo_s0"]) == "within 10%"


def test_arms_are_matched_on_their_means_over_seeds_and_off_seeds_are_noted():
    """The study compares an arm's mean over its seeds, so the verdict is on that mean; a seed whose sampled answers
    were shorter is still named (a note), and an arm whose seeds mix learning rates has no single lr."""
    budgets = {"grpo_s0": _budget(20, 4559), "grpo_s1": _budget(20, 3698), "grpo_s2": _budget(20, 4493),
               "rft_s0": _budget(20, 4608), "rft_s1": _budget(20, 3528), "rft_s2": _budget(20, 3273),
               "sft_s0": _budget(20, 4300), "sft_s1": _budget(20, 4250, lr=1e-5), "base": None}
    arms = {"base": ["base"], "grpo": ["grpo_s0", "grpo_s1", "grpo_s2"], "rft": ["rft_s0", "rft_s1", "rft_s2"],
            "sft": ["sft_s0", "sft_s1"]}
    means = arm_means(budgets, arms)
    assert set(means) == {"grpo", "rft", "sft"}  # the base trained nothing
    assert means["rft"]["answer_tokens"] == pytest.approx((4608 + 3528 + 3273) / 3) and means["sft"]["lr"] is None
    reference, gaps, arm_gaps = check_arms(budgets, arms, "grpo")
    assert reference == "grpo" and gaps["grpo_s1"]["answer_tokens"] == pytest.approx(3698 / 4250 - 1)
    assert within(arm_gaps["grpo"]) and not within(gaps["grpo_s1"])
    assert arm_gaps["rft"]["answer_tokens"] == pytest.approx(3803 / 4250 - 1, abs=1e-3) and not within(arm_gaps["rft"])
    assert match_text(arm_gaps["sft"]) == "lr n/a: not within 10%"
    assert warning_line(gaps, "grpo", arm_gaps).splitlines() == [
        "[budget] warning: arms not within 10% of grpo's budget (method.md 8, matched budgets), their means over "
        "seeds: rft (answer_tokens -11%); sft (lr n/a)",
        "[budget] note: seeds not within 10% of grpo's mean over its seeds: grpo_s1 (answer_tokens -13%); rft_s1 "
        "(answer_tokens -17%); rft_s2 (answer_tokens -23%); sft_s1 (lr differs)"]
    reference, gaps, arm_gaps = check_arms({k: budgets[k] for k in ("grpo_s0", "grpo_s2")},
                                           {"grpo": ["grpo_s0", "grpo_s2"]})
    assert warning_line(gaps, reference, arm_gaps) is None


@pytest.mark.parametrize("seed", range(20))
def test_the_batch_sized_for_a_token_target_is_the_nearest_and_within_one_half_example(seed):
    """Against a search over every batch: steps full batches train steps x batch x the mean example's tokens (as
    seen_tokens counts them); the chosen batch is the one nearest the target, so within half an example a step of it:
    1 / (2 b) of the target, b the exact (fractional) batch that would hit it."""
    rng = random.Random(seed)
    per_example = [rng.randint(5, 40) for _ in range(rng.randint(10, 200))]
    steps, target = rng.randint(5, 40), rng.randint(500, 20000)
    batch = batch_for_tokens(per_example, steps, target)
    trained = lambda b: seen_tokens(per_example, b, steps, full_batches=True)[1]
    best = min(range(1, 2000), key=lambda b: abs(steps * b * sum(per_example) / len(per_example) - target))
    assert batch == best
    exact = target / (steps * sum(per_example) / len(per_example))
    if exact >= 1:
        assert abs(trained(batch) / target - 1) <= 1 / (2 * exact) + 1 / target


def test_no_trained_reference_arm_gives_no_verdict_instead_of_a_wall_of_n_a():
    """A study of the offline arms alone (grpo, the reference, not trained): one line says there is nothing to match
    against, and no stage is called unmatched."""
    budgets = {"sft_s0": _budget(20, 4318), "rft_s0": _budget(20, 4189), "grpo_s0": None}
    arms = {"sft": ["sft_s0"], "rft": ["rft_s0"], "grpo": ["grpo_s0"]}
    reference, gaps, arm_gaps = check_arms(budgets, arms, "grpo")
    assert reference == "grpo" and gaps == {} and arm_gaps == {} and match_text(gaps.get("sft_s0")) == ""
    assert warning_line(gaps, reference, arm_gaps).startswith("[budget] no verdict: grpo, the reference arm, has no "
                                                              "trained stage here")
