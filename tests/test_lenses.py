"""The lenses of method.md 9 against independent computations: exact binomials and Monte Carlo for pass@k, scipy for
principal angles, an explicit python sum for token KL, planted state dicts for sparsity, matrices of known rank, a
simulation for the Jaccard chance value, and the pass@k interval's coverage on a known population."""

import math

import numpy as np
import pytest
import torch
from scipy.linalg import subspace_angles
from scipy.special import comb

from rlsft.lenses import (aggregate, block_eap_mass, crossover_k, effective_rank, jaccard, jaccard_chance,
                          mask_overlap, matrix_lenses, numerical_rank, pass_at_k, pass_at_k_curve, principal_angles,
                          token_kl, top_blocks, top_singular, update_meets_circuit, update_spectrum, update_sparsity,
                          weight_rows)


@pytest.mark.parametrize("n,c,k", [(10, 3, 1), (10, 3, 5), (64, 1, 8), (64, 60, 4), (200, 7, 100), (5, 0, 3),
                                   (5, 5, 1), (8, 6, 3)])
def test_pass_at_k_matches_exact_binomials(n, c, k):
    exact = 1 - comb(n - c, k, exact=True) / comb(n, k, exact=True)
    assert pass_at_k(n, c, k) == pytest.approx(float(exact), abs=1e-12)


def test_pass_at_k_is_one_when_fewer_wrong_than_k_and_stable_at_large_n():
    assert pass_at_k(10, 8, 3) == 1.0
    assert 0 < pass_at_k(100000, 1, 2) < 1e-4  # comb(100000, 2) direct would be fine; comb(1e5, 5e4) would overflow
    assert pass_at_k(100000, 3, 50000) == pytest.approx(1 - 0.5**3, abs=1e-4)
    with pytest.raises(ValueError):
        pass_at_k(4, 5, 1)


def test_pass_at_k_is_unbiased_monte_carlo():
    """The chance that k draws without replacement from n samples with c correct hold a correct one."""
    rng = np.random.default_rng(0)
    n, c, k = 20, 4, 5
    pool = np.array([1] * c + [0] * (n - c))
    hits = np.mean([pool[rng.choice(n, k, replace=False)].any() for _ in range(20000)])
    assert pass_at_k(n, c, k) == pytest.approx(hits, abs=0.01)


def test_pass_at_k_curve_interval_covers_population_value():
    """Questions drawn from a known population (p ~ Beta(0.5, 1.5)); the 95% interval of mean pass@k over 40
    questions, n = 16 samples each, covers the population's E[1 - (1 - p)^k] about 95% of the time."""
    rng = np.random.default_rng(1)
    a, b, n, ks, reps = 0.5, 1.5, 16, [1, 4], 200
    ps = rng.beta(a, b, 2_000_000)
    truth = [np.mean(1 - (1 - ps) ** k) for k in ks]
    cover = np.zeros(len(ks))
    for r in range(reps):
        correct = rng.binomial(n, rng.beta(a, b, 40))
        curve = pass_at_k_curve(correct, n, ks, n_boot=500, seed=r)
        cover += [row["ci"][0] <= t <= row["ci"][1] for row, t in zip(curve["rows"], truth)]
    assert np.all(np.abs(cover / reps - 0.95) < 0.05), cover / reps


def test_crossover_k():
    def curve(vals):
        return {"ks": [1, 2, 4, 8], "rows": [{"pass": v} for v in vals]}

    assert crossover_k(curve([0.3, 0.5, 0.7, 0.9]), curve([0.5, 0.6, 0.65, 0.7])) == 4
    assert crossover_k(curve([0.3, 0.4, 0.5, 0.6]), curve([0.5, 0.6, 0.7, 0.8])) is None
    assert crossover_k(curve([0.6, 0.7, 0.8, 0.9]), curve([0.5, 0.6, 0.7, 0.8])) is None


def test_principal_angles_match_scipy():
    rng = np.random.default_rng(2)
    A = rng.normal(size=(40, 30))
    B = A + 0.3 * rng.normal(size=(40, 30))
    k = 5
    Ua = np.linalg.svd(A, full_matrices=False)[0][:, :k]
    Ub = np.linalg.svd(B, full_matrices=False)[0][:, :k]
    ours = principal_angles(A, B, k)
    assert ours.shape == (k,) and np.all(np.diff(ours) >= 0)
    np.testing.assert_allclose(ours, np.sort(subspace_angles(Ua, Ub)), atol=1e-10)
    # tiny rotations, where arccos alone loses precision
    C = A + 1e-7 * rng.normal(size=A.shape)
    Uc = np.linalg.svd(C, full_matrices=False)[0][:, :k]
    np.testing.assert_allclose(principal_angles(A, C, k), np.sort(subspace_angles(Ua, Uc)), atol=1e-12)


def test_token_kl_matches_explicit_sum():
    torch.manual_seed(0)
    lr, lp = torch.randn(2, 5, 7), torch.randn(2, 5, 7)
    mask = torch.tensor([[1, 1, 0, 1, 0], [0, 1, 1, 1, 1]], dtype=torch.bool)
    total, count = 0.0, 0
    for b in range(2):
        for t in range(5):
            if mask[b, t]:
                zr = math.log(sum(math.exp(x) for x in lr[b, t].tolist()))
                zp = math.log(sum(math.exp(x) for x in lp[b, t].tolist()))
                total += sum(math.exp(x - zr) * ((x - zr) - (y - zp)) for x, y in zip(lr[b, t].tolist(),
                                                                                        lp[b, t].tolist()))
                count += 1
    assert token_kl(lr, lp, mask) == pytest.approx(total / count, rel=1e-9)
    assert token_kl(lr, lr, mask) == pytest.approx(0.0, abs=1e-12)


def test_update_sparsity_on_planted_state_dicts():
    torch.manual_seed(0)
    ref = {"a": torch.randn(100, 50), "b": torch.randn(1000), "only_ref": torch.randn(3)}
    new = {k: v.clone() for k, v in ref.items() if k != "only_ref"}
    new["a"].view(-1)[:1000] += 1.0  # 1000 of 5000 changed: 80% unchanged
    # below bf16 resolution: a relative change of 2^-12 rounds back to the same bf16 value (8 significant bits)
    b_bf = ref["b"].to(torch.bfloat16).float()
    ref["b"] = b_bf.clone()
    new["b"] = b_bf * (1 + 2.0**-12)
    new["b"][:100] = b_bf[:100] * 1.5  # 100 of 1000 truly changed
    out = update_sparsity(ref, new)
    assert set(out) == {"a", "b", "__all__"}
    assert out["a"] == pytest.approx(0.8)
    assert out["b"] == pytest.approx(0.9)
    assert out["__all__"] == pytest.approx((4000 + 900) / 6000)
    assert update_sparsity(ref, new, dtype=torch.float32)["b"] < 0.2  # in fp32 the tiny change is a change


def test_ranks_of_known_rank_matrices():
    rng = np.random.default_rng(3)
    for r in (1, 3, 10):
        m = rng.normal(size=(50, r)) @ rng.normal(size=(r, 40))
        assert numerical_rank(np.linalg.svd(m, compute_uv=False)) == r
    assert effective_rank(np.ones(7)) == pytest.approx(7.0)  # flat spectrum: every direction counts
    assert effective_rank(np.array([1.0, 0, 0])) == pytest.approx(1.0)
    ref = torch.tensor(rng.normal(size=(32, 24)), dtype=torch.float32)
    new = ref + torch.tensor(rng.normal(size=(32, 2)) @ rng.normal(size=(2, 24)), dtype=torch.float32)
    lens = matrix_lenses(ref, new, k=4)
    assert lens["numerical_rank"] == 2 and lens["full_rank"] == 24 and 1 <= lens["effective_rank"] <= 2
    assert matrix_lenses(ref, ref.clone(), k=4)["max_angle_deg"] == pytest.approx(0.0, abs=1e-4)
    # the Gram-matrix path of matrix_lenses against scipy on tall and wide matrices
    for shape in ((32, 24), (24, 32)):
        a = rng.normal(size=shape)
        b = a + 0.5 * rng.normal(size=shape)
        ua, ub = (np.linalg.svd(x, full_matrices=False)[0][:, :4] for x in (a, b))
        lens = matrix_lenses(torch.tensor(a), torch.tensor(b), k=4)
        assert lens["max_angle_deg"] == pytest.approx(np.degrees(subspace_angles(ua, ub).max()), rel=1e-6)
        sa, sb = (np.linalg.svd(x, compute_uv=False)[:4] for x in (a, b))
        assert lens["spectral_drift"] == pytest.approx(np.mean(np.abs(sb - sa) / sa), rel=1e-6)
        s_delta = np.linalg.svd(b - a, compute_uv=False)  # the update's whole spectrum, from eigenvalues alone
        assert lens["effective_rank"] == pytest.approx(effective_rank(s_delta), rel=1e-9)
        assert update_spectrum(torch.tensor(b - a)) == pytest.approx(s_delta, rel=1e-9, abs=1e-12)
        s_top, U = top_singular(torch.tensor(a), 4)  # a partial eigendecomposition: the top 4 pairs only
        u_np, s_np, _ = np.linalg.svd(a, full_matrices=False)
        assert s_top == pytest.approx(s_np[:4], rel=1e-9)
        assert np.abs(np.abs((U.numpy() * u_np[:, :4]).sum(axis=0)) - 1).max() < 1e-9  # the same vectors up to sign


def test_jaccard_chance_matches_simulation():
    rng = np.random.default_rng(4)
    n, na, nb = 2000, 300, 500
    sims = []
    for _ in range(2000):
        a, b = np.zeros(n, bool), np.zeros(n, bool)
        a[rng.choice(n, na, replace=False)] = True
        b[rng.choice(n, nb, replace=False)] = True
        sims.append(jaccard(torch.tensor(a), torch.tensor(b)))
    assert jaccard_chance(na, nb, n) == pytest.approx(np.mean(sims), rel=0.01)


def test_mask_overlap_of_shared_and_independent_updates():
    torch.manual_seed(5)
    ref = {"w": torch.zeros(4000)}
    idx = torch.randperm(4000)
    a, b, c = ref["w"].clone(), ref["w"].clone(), ref["w"].clone()
    a[idx[:1000]] = 1
    b[idx[:1000]] = 1  # the same positions
    c[torch.randperm(4000)[:1000]] = 1  # independent positions
    same = mask_overlap(ref, {"w": a}, {"w": b})
    indep = mask_overlap(ref, {"w": a}, {"w": c})
    assert same["jaccard"] == 1.0 and same["chance"] == pytest.approx(jaccard_chance(1000, 1000, 4000))
    assert indep["jaccard"] == pytest.approx(indep["chance"], abs=0.03)


def test_blocks_and_where_the_update_meets_the_circuit():
    ref = {f"model.layers.{l}.mlp.w.weight": torch.zeros(4, 4) for l in range(4)} | {"model.embed_tokens.weight":
                                                                                       torch.zeros(8, 4)}
    new = {k: v.clone() for k, v in ref.items()}
    new["model.layers.2.mlp.w.weight"] += 1.0  # the whole update in block 2
    tie = "model.embed_tokens.weight"
    rows = weight_rows(ref | {"lm_head.weight": ref[tie]}, new | {"lm_head.weight": new[tie]}, spectra=False)
    assert [r["name"] for r in rows if r["block"] in ("embed", "head")] == ["model.embed_tokens.weight"]  # tied: once
    blocks = aggregate(rows, "block")
    assert blocks["block 2"]["unchanged"] == 0 and blocks["block 0"]["unchanged"] == 1
    assert aggregate(rows, "type")["mlp.w.weight"]["changed"] == 16
    # EAP mass: one heavy edge m2 -> logits lands half in block 2; a1 -> m2 splits between blocks 1 and 2
    sources, targets = ["input", "a0", "m0", "a1", "m1", "a2", "m2"], ["m2", "logits"]
    W = np.zeros((1, 7, 2))
    W[0, 6, 1], W[0, 3, 0] = 10.0, 2.0
    mass = block_eap_mass(W, np.ones((7, 2), bool), sources, targets, 4)
    np.testing.assert_allclose(mass, [0, 1, 6, 0])
    assert top_blocks(mass, 0.25) == [2]
    meets = update_meets_circuit(blocks, [2])
    assert meets["mass_share"] == 1.0 and meets["changed_share"] == 1.0 and meets["param_share"] == 0.25


def test_arm_rows_give_each_lens_per_arm_an_interval_over_seeds_and_questions():
    """rlsft.experiments.lenses_arms on a result built from known per-seed values: the unchanged share's interval is
    scipy's t interval over seeds; a per-question lens's mean is the mean over seeds and questions, its difference from
    the reference paired per question; a clear difference gets a direction, a null one "cannot tell"."""
    from scipy import stats

    from rlsft.experiments.lenses_arms import arm_rows

    rng = np.random.default_rng(0)
    Q, ks = 40, [1, 2, 4]
    ref_pass = rng.uniform(0.2, 0.4, size=(Q, 3))
    ref_correct = (rng.uniform(size=Q) < 0.3).astype(float)
    result = {"reference": "base", "weights": {}, "outputs": {"__reference__": {"per_question": {
        "task_correct": ref_correct.tolist(), "control_correct": ref_correct.tolist()}}}, "pass_at_k": {
        "base": {"ks": ks, "per_question": ref_pass.tolist()}}}
    arms = {"up": ["up_s0", "up_s1", "up_s2"], "same": ["same_s0", "same_s1", "same_s2"]}
    for arm, names in arms.items():
        for s, n in enumerate(names):
            shift = 0.5 if arm == "up" else 0.0
            result["weights"][n] = {"all": {"unchanged": 0.8 + 0.01 * s + (0.1 if arm == "up" else 0)}}
            kl = rng.exponential(0.2 + shift, size=Q)
            kl[3] = np.nan  # an empty answer: left out of every row of the arm
            result["outputs"][n] = {"per_question": {
                "task_kl": [None if np.isnan(x) else x for x in kl], "control_kl": rng.exponential(0.1, Q).tolist(),
                "task_correct": np.maximum(ref_correct, rng.uniform(size=Q) < shift).tolist(),
                "control_correct": ref_correct.tolist()}}
            result["pass_at_k"][n] = {"ks": ks, "per_question": np.clip(
                ref_pass + shift + rng.normal(0, 0.02 if shift else 0.1, size=(Q, 3)), 0, 1).tolist()}
    rows = {(r["arm"], r["measure"]): r for r in arm_rows(result, arms, n_boot=500, seed=0)}
    assert {m for _, m in rows} == {"unchanged_share", "task_kl", "control_kl", "task_accuracy - base",
                                    "control_accuracy - base", "pass@1 - base", "pass@4 - base"}
    shares = [result["weights"][n]["all"]["unchanged"] for n in arms["up"]]
    lo, hi = stats.t.interval(0.95, 2, loc=np.mean(shares), scale=stats.sem(shares))
    row = rows[("up", "unchanged_share")]
    assert (row["value"], row["ci_low"], row["ci_high"]) == pytest.approx((np.mean(shares), lo, hi))
    kl = np.array([[np.nan if x is None else x for x in result["outputs"][n]["per_question"]["task_kl"]]
                   for n in arms["up"]])
    row = rows[("up", "task_kl")]
    assert row["value"] == pytest.approx(np.nanmean(kl)) and row["questions"] == Q - 1 and row["seeds"] == 3
    assert row["ci_low"] < row["value"] < row["ci_high"] and row["verdict"] == "level: no test"
    up = np.stack([np.array(result["pass_at_k"][n]["per_question"])[:, 2] for n in arms["up"]])
    row = rows[("up", "pass@4 - base")]
    assert row["value"] == pytest.approx((up - ref_pass[:, 2]).mean()) and row["verdict"] == "higher"
    assert rows[("same", "pass@1 - base")]["verdict"] == "cannot tell"
    assert rows[("up", "task_accuracy - base")]["verdict"] == "higher"
    same = rows[("same", "control_accuracy - base")]  # every seed answers as the reference: no spread, no difference
    assert same["value"] == 0 and same["verdict"] == "cannot tell"
    tested = [r for r in rows.values() if r["p"] is not None]  # Holm over the table's 8 differences (4 per arm)
    assert len(tested) == 8 and all(r["p_holm"] >= r["p"] for r in tested)
    first = min(tested, key=lambda r: r["p"])
    assert first["p_holm"] == pytest.approx(min(1.0, 8 * first["p"]))


def test_figures_give_an_arm_of_several_seeds_one_legend_entry():
    from rlsft.experiments.lenses_report import legend_labels

    got = legend_labels(["base", "sft_s0", "sft_s1", "sft_s2", "grpo_s0", "rl"], "base")
    assert got == {"base": "base (reference)", "sft_s0": "sft (3 seeds)", "sft_s1": "_nolegend_",
                   "sft_s2": "_nolegend_", "grpo_s0": "grpo_s0", "rl": "rl"}


def test_a_share_over_two_seeds_keeps_its_interval_inside_0_1():
    from scipy import stats

    from rlsft.experiments.lenses_arms import _share

    wide = _share("a", "unchanged_share", [0.02, 0.06], 2)  # t with 1 df: 12.7 standard errors, clipped at 0
    assert wide["ci_low"] == 0.0 and wide["ci_high"] == pytest.approx(0.04 + stats.t.ppf(0.975, 1) * 0.02)
    assert _share("a", "unchanged_share", [0.9, 0.99], 2)["ci_high"] == 1.0


def test_weight_tables_keep_a_small_drift_visible():
    """A bf16 update's spectral drift is ~1e-5 of a singular value: four decimals printed every stage's as 0."""
    from rlsft.experiments.lenses_report import weight_tables

    lens = {"numel": 10, "unchanged": 0.77183, "effective_rank_share": 0.4824, "numerical_rank_share": 0.98,
            "spectral_drift": 1.4122623e-05, "max_angle_deg": 0.16131}
    result = {"reference": "base", "overlap": {},
              "weights": {"sft_s0": {"all": lens, "by_block": {}, "by_type": {"q_proj": lens}}}}
    tables = weight_tables(result)
    cols, rows = tables["lenses_weights"]
    assert dict(zip(cols, rows[0]))["spectral_drift"] == pytest.approx(1.412e-05, rel=1e-9)
    assert dict(zip(cols, rows[0]))["unchanged"] == 0.7718
    cols, rows = tables["lenses_types"]
    assert dict(zip(cols, rows[0]))["spectral_drift"] > 0
