"""GRPO building blocks: reward cases, advantages, dynamic-sampling filter, the DAPO loss by hand, recipe checks."""

import math

import pytest
import torch

from rlsft.errors import RlsftError
from rlsft.grpo.advantages import group_advantages, informative_groups
from rlsft.grpo.config import MOVED_KEYS, GRPOConfig, as_recipe, check_recipe, recipe_hash
from rlsft.grpo.loss import k3_kl, policy_loss
from rlsft.grpo.reward import answer_reward, overlong_penalty, partial_reward


# ------------------------------------------------------------------ reward
@pytest.mark.parametrize("text, gold, expected, correct", [
    ("7 + 3 = 10, so the answer is \\boxed{10}.", "10", 3.0, True),
    ("The answer is 10.", "10", 3.0, True),
    ("I am not sure.", "10", -0.5, False),  # no number
    ("", "10", -0.5, False),
    ("The answer is 8.", "10", -0.5 + 3.5 * 0.8, False),  # off by 2 of 10
    ("The answer is 12.", "10", -0.5 + 3.5 * 0.8, False),  # symmetric
    ("The answer is 20.", "10", -0.5, False),  # off by |gt| or more: the floor
    ("The answer is -50.", "10", -0.5, False),
    ("The answer is 1.", "0", -0.5, False),  # |gt| < 1: error measured against 1
    ("The answer is 0.5.", "0", -0.5 + 3.5 * 0.5, False),
    ("The answer is 999.", "1000", 2.5, False),  # 2.9965 capped: a near miss never scores as correct
])
def test_reward_cases(text, gold, expected, correct):
    s = answer_reward(text, gold)
    assert s.correct is correct
    assert s.reward == pytest.approx(expected)


def test_reward_options_and_bad_gold():
    assert answer_reward("The answer is 8.", "10", partial_credit=False).reward == -0.5
    assert answer_reward("Paris", "Paris", kind="text").reward == 3.0
    assert answer_reward("Rome", "Paris", kind="text").reward == -0.5
    with pytest.raises(RlsftError, match="cannot parse the gold answer"):
        answer_reward("The answer is 8.", "a red apple")
    assert partial_reward(9, 10) < 3.0 and partial_reward(10 - 1e-9, 10) == 2.5


def test_overlong_penalty():
    assert overlong_penalty(40, 48, 0) == 0.0  # off
    assert overlong_penalty(32, 48, 16) == 0.0  # up to max - buffer: free
    assert overlong_penalty(40, 48, 16) == pytest.approx(-0.5)
    assert overlong_penalty(48, 48, 16, penalty=2.0) == pytest.approx(-2.0)


# ------------------------------------------------------------------ advantages and dynamic sampling
def test_group_advantages():
    r = torch.tensor([1.0, 2.0, 3.0, 4.0, 5.0, 5.0, 5.0, 5.0])
    g = group_advantages(r, 4, "group")
    std = torch.tensor([1.0, 2.0, 3.0, 4.0]).std()  # unbiased
    assert torch.allclose(g[:4], torch.tensor([-1.5, -0.5, 0.5, 1.5]) / (std + 1e-4))
    assert torch.equal(g[4:], torch.zeros(4))  # zero-variance group: no signal
    assert torch.allclose(group_advantages(r, 4, "none"), torch.tensor([-1.5, -0.5, 0.5, 1.5, 0, 0, 0, 0]))
    b = group_advantages(r, 4, "batch")
    assert torch.allclose(b, torch.tensor([-1.5, -0.5, 0.5, 1.5, 0, 0, 0, 0]) / (r.std() + 1e-4))
    with pytest.raises(ValueError):
        group_advantages(r, 3)


def test_informative_groups_drop_exactly_zero_variance():
    correct = [True, False, False, False,  # mixed
               True, True, True, True,  # all right
               False, False, False, False,  # all wrong
               False, False, False, True]  # mixed
    assert informative_groups(correct, 4) == [0, 3]


# ------------------------------------------------------------------ loss
def test_token_level_loss_matches_hand_computation():
    logp = torch.tensor([[-1.0, -2.0, -0.5], [-0.3, -1.2, 0.0]], requires_grad=True)
    old = torch.tensor([[-1.1, -1.5, -0.9], [-0.9, -1.2, 0.0]])  # token (0,2): ratio e^0.4 > 1.28 with A > 0
    adv = torch.tensor([1.0, -2.0])
    mask = torch.tensor([[1, 1, 1], [1, 1, 0]])
    lo, hi = 0.2, 0.28
    expected, n = 0.0, 0
    for i in range(2):
        for t in range(3):
            if not mask[i, t]:
                continue
            ratio = math.exp(logp[i, t].item() - old[i, t].item())
            a = adv[i].item()
            expected += max(-a * ratio, -a * min(max(ratio, 1 - lo), 1 + hi))
            n += 1
    parts = policy_loss(logp, old, adv, mask, lo, hi, "token")
    assert parts.loss.item() == pytest.approx(expected / n, rel=1e-6)
    # clipped: (0,2) only. (1,0) has ratio e^0.6 with A < 0 and (0,1) ratio e^-0.5 with A > 0: the pessimistic
    # max keeps their unclipped terms
    assert parts.clip_fraction.item() == pytest.approx(1 / 5)
    # a sequence-level aggregate weighs answers, not tokens
    per_tok = [[max(-adv[i].item() * math.exp(logp[i, t].item() - old[i, t].item()),
                    -adv[i].item() * min(max(math.exp(logp[i, t].item() - old[i, t].item()), 1 - lo), 1 + hi))
                for t in range(3)] for i in range(2)]
    seq = (sum(per_tok[0]) / 3 + sum(per_tok[1][:2]) / 2) / 2
    assert policy_loss(logp, old, adv, mask, lo, hi, "sequence").loss.item() == pytest.approx(seq, rel=1e-6)


def test_clipping_acts_only_off_policy():
    torch.manual_seed(0)
    logp = (-torch.rand(3, 5)).requires_grad_(True)
    adv = torch.tensor([1.5, -0.7, 0.2])
    mask = torch.ones(3, 5)
    on = policy_loss(logp, logp.detach(), adv, mask)  # first mini-batch: old = current, ratio 1
    assert on.clip_fraction.item() == 0.0 and on.ratio_mean.item() == 1.0
    (grad,) = torch.autograd.grad(on.loss, logp)
    assert torch.allclose(grad, -adv[:, None].expand(3, 5) / 15)  # the plain policy gradient
    old = logp.detach() - torch.tensor([[0.5], [-0.5], [0.0]])  # policy moved: ratios e^0.5 and e^-0.5
    off = policy_loss(logp, old, adv, mask)
    # A>0 with ratio 1.65 > 1.28 and A<0 with ratio 0.61 < 0.8 are clipped: 10 of 15 tokens
    assert off.clip_fraction.item() == pytest.approx(10 / 15)
    (grad,) = torch.autograd.grad(off.loss, logp)
    assert torch.equal(grad[:2], torch.zeros(2, 5)) and (grad[2] != 0).all()


def test_micro_batches_accumulate_to_the_mini_batch_loss():
    torch.manual_seed(1)
    logp, old = -torch.rand(4, 6), -torch.rand(4, 6)
    adv, mask = torch.randn(4), (torch.rand(4, 6) > 0.3).float()
    whole = policy_loss(logp, old, adv, mask).loss
    n = mask.sum()
    parts = sum(policy_loss(logp[i : i + 2], old[i : i + 2], adv[i : i + 2], mask[i : i + 2], normaliser=n).loss
                for i in (0, 2))
    assert torch.allclose(whole, parts)


def test_k3_kl():
    a = torch.tensor([-1.0, -2.0])
    assert torch.equal(k3_kl(a, a), torch.zeros(2))
    assert (k3_kl(a, a + 0.3) > 0).all() and (k3_kl(a, a - 0.3) > 0).all()
    parts = policy_loss(a[None], a[None], torch.zeros(1), torch.ones(1, 2), ref_logp=a[None] - 0.1, beta=0.5)
    assert parts.loss.item() == pytest.approx(0.5 * k3_kl(a, a - 0.1).mean().item())


# ------------------------------------------------------------------ recipe
@pytest.mark.parametrize("override, message", [
    ({"temperature": 0.0}, "temperature must be > 0"),
    ({"temperature": -1.0}, "temperature must be > 0"),
    ({"num_generations": 1}, "num_generations must be >= 2"),
    ({"batch_questions": 3, "num_generations": 4, "mini_batches": 8}, "mini_batches"),
    ({"generation_batch_size": 6, "num_generations": 4}, "multiple of num_generations"),
    ({"scale_rewards": "whatever"}, "scale_rewards"),
    ({"partial_max": 3.5}, "reward_wrong < partial_max < reward_correct"),
])
def test_bad_recipes_are_one_line_errors(override, message):
    with pytest.raises(RlsftError, match=message) as err:
        check_recipe(as_recipe(override))
    assert "\n" not in str(err.value)


def test_recipe_keys_and_presets():
    with pytest.raises(RlsftError, match="tempreature"):
        as_recipe({"tempreature": 0.5})
    r = as_recipe({"preset": "smollm2_arith", "steps": 3})
    assert r.steps == 3 and r.train["source"] == "arithmetic" and r.template == "chat_brief"
    assert as_recipe("smollm2_arith").steps != 3
    with pytest.raises(RlsftError, match="preset 'nope' not found"):
        as_recipe("nope")
    base = GRPOConfig()
    assert recipe_hash(base) == recipe_hash(as_recipe({"steps": 999, "eval_every": 1}))  # not training keys
    assert recipe_hash(base) != recipe_hash(as_recipe({"temperature": 0.6}))


# recipe_hash and the derived-model key (base {source: hub, path: x}) of the shipped presets and of the dataclass's
# defaults, computed from commit 605c79a, before the eap_* keys left the recipe: they were NON_TRAINING_KEYS, so no
# trained model, checkpoint or derived-model folder changes its key. smollm2_arms changed on purpose since (issue 21:
# 2-digit questions, matched budgets): its pair is computed from abbc182, the arms branch before it met the callbacks
# branch, so it too was hashed with the eap_* keys still in the recipe; and again at s28 (max_resample 3 -> 7: with 3
# the pinned pair below was ("0cc06a81586919cd", "44faa3f58f3739e8"), which that recipe with max_resample=3 still gives).
HASHES_AT_605C79A = {"default": ("bca2c45cc56a3194", "92015a935fb64d83"),
                     "rebuttal": ("57a3c88c2007977c", "5b9480b63894b502"),
                     "smollm2_arith": ("712c6f77bc3ce2c9", "89d4ac3c13514bf4"),
                     "smollm2_arms": ("04ecbfbb3b7a2056", "8ebd4edbc7a2be46"),
                     None: ("1d43714a84159b30", "410d3784694d2949")}


@pytest.mark.parametrize("name", list(HASHES_AT_605C79A))
def test_every_shipped_recipe_keeps_its_hash_and_key(name):
    from rlsft.training.grpo_kind import grpo_key

    recipe = GRPOConfig() if name is None else as_recipe(name)
    assert (recipe_hash(recipe), grpo_key({"source": "hub", "path": "x"}, recipe)) == HASHES_AT_605C79A[name]


@pytest.mark.parametrize("key", sorted(MOVED_KEYS))
def test_a_moved_eap_key_names_where_it_lives_now(key):
    from dataclasses import fields

    from rlsft.config import Config

    section, name = MOVED_KEYS[key].split(".")
    assert name in {f.name for f in fields(getattr(Config(), section))}  # the message points at a real setting
    with pytest.raises(RlsftError, match=rf"^GRPO recipe: grpo\.{key} is now {MOVED_KEYS[key]}: ") as err:
        as_recipe({"preset": "default", key: 1})
    assert "\n" not in str(err.value)


def test_the_arms_recipe_changed_at_s28_only_in_max_resample():
    from rlsft.training.grpo_kind import grpo_key

    recipe = as_recipe({"preset": "smollm2_arms", "max_resample": 3})
    assert (recipe_hash(recipe), grpo_key({"source": "hub", "path": "x"}, recipe)) == ("0cc06a81586919cd",
                                                                                      "44faa3f58f3739e8")
