"""Weight-space lenses (method.md 9): update sparsity at bf16, update rank, spectral drift and rotation, mask overlap.

Engines: state dicts / tensors in, numbers out. Every quantity is a function of (reference weights, compared weights).
- sparsity: share of elements with bf16(theta_ref) == bf16(theta) (Mukherjee et al. 2025, arXiv 2505.11711);
- rank of delta = theta - theta_ref: numerical (s > 1e-3 s_max) and effective (exp entropy of s / sum s, Roy and
  Vetterli 2007);
- spectral drift: relative change of the top-k singular values; rotation: principal angles between the top-k left
  singular subspaces ("The Path Not Taken", arXiv 2511.08567);
- mask Jaccard of two updates' changed-element sets against its value for independent sets of the same sizes.
"""

from __future__ import annotations

import math
import re

import numpy as np
import scipy.linalg
import torch

RANK_RTOL = 1e-3  # numerical rank: singular values above RANK_RTOL * s_max (method.md 9)


def count(mask: torch.Tensor) -> int:
    """True elements of a bool tensor. ``count_nonzero``, not ``sum``: a bool sum promotes to int64 on the way, 5x
    slower on CPU (11M elements: 0.028 s against 0.156 s), and the masks here are the size of whole models."""
    return int(torch.count_nonzero(mask))


def changed_mask(ref: torch.Tensor, new: torch.Tensor, dtype=torch.bfloat16) -> torch.Tensor:
    """bool, True where the element differs at ``dtype`` (updates below its resolution count as unchanged)."""
    return ref.to(dtype) != new.to(dtype)


def update_sparsity(ref_state: dict, state: dict, dtype=torch.bfloat16) -> dict[str, float]:
    """Share of unchanged elements per tensor name present in both state dicts, plus "__all__" over all of them."""
    out, same, total = {}, 0, 0
    for name in ref_state:
        if name not in state or ref_state[name].shape != state[name].shape:
            continue
        n = ref_state[name].numel()
        k = n - count(changed_mask(ref_state[name], state[name], dtype))
        out[name] = k / n if n else 1.0
        same, total = same + k, total + n
    out["__all__"] = same / total if total else 1.0
    return out


def numerical_rank(s: np.ndarray, rtol: float = RANK_RTOL) -> int:
    """Singular values above ``rtol`` times the largest (s: any order)."""
    s = np.asarray(s, dtype=float)
    return int((s > rtol * s.max()).sum()) if s.size and s.max() > 0 else 0


def effective_rank(s: np.ndarray) -> float:
    """exp of the Shannon entropy of the normalised singular values (Roy and Vetterli 2007); 0 for a zero matrix."""
    s = np.asarray(s, dtype=float)
    if s.sum() <= 0:
        return 0.0
    p = s / s.sum()
    p = p[p > 0]
    return float(np.exp(-(p * np.log(p)).sum()))


def singular_values(m: torch.Tensor) -> np.ndarray:
    """Descending singular values of a matrix, computed in fp32 (bf16 has no SVD)."""
    return torch.linalg.svdvals(m.float()).cpu().numpy()


def principal_angles(A, B, k: int) -> np.ndarray:
    """Angles (radians, ascending) between the top-k left singular subspaces of A [m, n] and B [m, n']."""
    A, B = (torch.as_tensor(x).double() for x in (A, B))
    return basis_angles(torch.linalg.svd(A, full_matrices=False).U[:, :k], torch.linalg.svd(B, full_matrices=False).U[:, :k])


def basis_angles(Ua: torch.Tensor, Ub: torch.Tensor) -> np.ndarray:
    """Principal angles (radians, ascending) between the spans of two orthonormal bases [m, k]."""
    Ua, Ub = Ua.double(), Ub.double()
    cos = torch.linalg.svdvals(Ua.T @ Ub).clamp(0.0, 1.0).cpu().numpy()  # descending cosines: ascending angles
    # arccos loses precision near cos = 1 (small angles); the sines of the same angles, the singular values of the
    # part of Ub outside span(Ua), are exact there (Bjorck and Golub 1973, as scipy.linalg.subspace_angles does)
    sin = np.sort(torch.linalg.svdvals(Ub - Ua @ (Ua.T @ Ub)).clamp(0.0, 1.0).cpu().numpy())[:len(cos)]
    return np.sort(np.where(cos > 1 / math.sqrt(2), np.arcsin(sin), np.arccos(cos)))


def _gram(m: torch.Tensor) -> tuple[torch.Tensor, bool]:
    """The smaller fp64 Gram matrix of m [out, in] (m m^T when out <= in: "wide") and which one it is. Its
    eigenvalues are the squared singular values; fp64 keeps singular values down to ~1e-8 s_max exact, far below the
    rank threshold 1e-3 s_max, and one Gram matrix costs less than an SVD on CPU."""
    m = m.double()
    wide = m.shape[0] <= m.shape[1]
    return (m @ m.T if wide else m.T @ m), wide


def update_spectrum(m: torch.Tensor) -> np.ndarray:
    """All singular values of m, descending, from the eigenvalues of its Gram matrix alone: the rank lenses need no
    singular vectors, and LAPACK's eigenvalues-only path skips building them."""
    gram, _ = _gram(m)
    if gram.is_cuda:
        evals = torch.linalg.eigvalsh(gram).cpu().numpy()
    else:
        evals = scipy.linalg.eigh(gram.numpy(), eigvals_only=True, driver="evr", check_finite=False)
    return np.sqrt(np.clip(evals, 0, None))[::-1].copy()


def top_singular(m: torch.Tensor, k: int) -> tuple[np.ndarray, torch.Tensor]:
    """The top-k singular values (descending) and left singular vectors [out, k] of m [out, in]. On CPU only those k
    eigenpairs of the Gram matrix are computed (LAPACK syevx through scipy: torch has no partial eigensolver), not all
    of them; on a GPU torch's full eigh, which is fast there."""
    m = m.double()  # once: the Gram matrix and, for a tall m, u_i = m v_i / s_i both use it
    gram, wide = _gram(m)
    n, k = gram.shape[0], min(k, gram.shape[0])
    if gram.is_cuda:
        evals, evecs = torch.linalg.eigh(gram)
        evals, evecs = evals[n - k:], evecs[:, n - k:]
    else:
        w, v = scipy.linalg.eigh(gram.numpy(), subset_by_index=[n - k, n - 1], driver="evx", check_finite=False)
        evals, evecs = torch.from_numpy(w), torch.from_numpy(v)
    s = evals.clamp(min=0).sqrt().flip(0)
    vecs = evecs.flip(1)
    U = vecs if wide else (m @ vecs) / s.clamp(min=1e-300)  # u_i = m v_i / s_i
    return s.cpu().numpy(), U


def matrix_lenses(ref: torch.Tensor, new: torch.Tensor, k: int = 16) -> dict[str, float]:
    """Rank of the update and spectral drift / rotation of one weight matrix [out, in]."""
    delta = new.double() - ref.double()
    s_delta = update_spectrum(delta)
    s_ref, U_ref = top_singular(ref, k)
    s_new, U_new = top_singular(new, k)
    k = len(s_ref)
    drift = np.abs(s_new[:k] - s_ref[:k]) / np.maximum(s_ref[:k], 1e-12)
    angles = basis_angles(U_ref[:, :k], U_new[:, :k])
    return {"numerical_rank": numerical_rank(s_delta), "full_rank": min(delta.shape),
            "effective_rank": effective_rank(s_delta), "spectral_drift": float(drift.mean()),
            "max_angle_deg": float(np.degrees(angles.max())), "mean_angle_deg": float(np.degrees(angles.mean()))}


def jaccard(a: torch.Tensor, b: torch.Tensor) -> float:
    """|A and B| / |A or B| of two bool masks of one shape (1.0 when both are empty)."""
    inter, union = count(a & b), count(a | b)
    return inter / union if union else 1.0


def jaccard_chance(n_a: int, n_b: int, n: int) -> float:
    """Jaccard of independent uniformly placed sets of sizes n_a, n_b among n elements.

    E|A and B| = n_a n_b / n (hypergeometric); the ratio to E|A or B| is the value at the sizes of weight tensors,
    where the intersection's relative spread is ~1/sqrt(E|A and B|) and the ratio of means equals the mean ratio.
    """
    if n == 0 or n_a + n_b == 0:
        return 1.0
    inter = n_a * n_b / n
    return inter / (n_a + n_b - inter)


def block_of(name: str, layers_path: str = "model.layers") -> str:
    """"block <l>" for a parameter inside decoder block l, else "embed" / "head" / "other" (by the module map)."""
    m = re.match(re.escape(layers_path) + r"\.(\d+)\.", name)
    if m:
        return f"block {int(m.group(1))}"
    if "embed" in name:
        return "embed"
    if "lm_head" in name or name.endswith("norm.weight"):
        return "head"
    return "other"


def matrix_type(name: str, layers_path: str = "model.layers") -> str:
    """The parameter's name inside its block (``self_attn.q_proj.weight``), the same in every block."""
    return re.sub(re.escape(layers_path) + r"\.\d+\.", "", name)


def weight_rows(ref_state: dict, state: dict, layers_path: str = "model.layers", k: int = 16,
                spectra: bool = True, dtype=torch.bfloat16) -> list[dict]:
    """One row per tensor in both state dicts: block, matrix type, size, unchanged and changed counts, update mass
    sum |delta|; with ``spectra``, the rank / drift / rotation lenses of every 2-D matrix inside a decoder block."""
    rows, seen = [], set()
    for name, ref in ref_state.items():
        new = state.get(name)
        if new is None or new.shape != ref.shape or ref.data_ptr() in seen:  # a tied tensor (lm_head = embed) once
            continue
        seen.add(ref.data_ptr())
        changed = changed_mask(ref, new, dtype)
        row = {"name": name, "block": block_of(name, layers_path), "type": matrix_type(name, layers_path),
               "numel": ref.numel(), "changed": count(changed),
               "mass": float((new.float() - ref.float()).abs().sum())}
        if spectra and ref.dim() == 2 and row["block"].startswith("block"):
            row |= matrix_lenses(ref, new, k)
        rows.append(row)
    return rows


def aggregate(rows: list[dict], by: str) -> dict[str, dict]:
    """Rows grouped by "block" or "type": unchanged share, update mass and size; mean over the group's matrices of
    each matrix lens present (ranks as shares of full rank)."""
    groups: dict[str, list[dict]] = {}
    for r in rows:
        groups.setdefault(r[by], []).append(r)
    out = {}
    for g, rs in groups.items():
        numel = sum(r["numel"] for r in rs)
        out[g] = {"numel": numel, "unchanged": 1 - sum(r["changed"] for r in rs) / numel,
                  "changed": sum(r["changed"] for r in rs), "mass": sum(r["mass"] for r in rs)}
        for lens in ("effective_rank", "numerical_rank", "spectral_drift", "max_angle_deg"):
            rank = lens.endswith("rank")  # as a share of the matrix's full rank, comparable across shapes
            vals = [r[lens] / (r["full_rank"] if rank else 1) for r in rs if lens in r]
            if vals:
                out[g][lens + "_share" if rank else lens] = float(np.mean(vals))
    return out


def mask_overlap(ref_state: dict, a_state: dict, b_state: dict, dtype=torch.bfloat16) -> dict[str, float]:
    """Jaccard of the changed-element sets of two updates from one reference, and its chance value (the sum over
    tensors of what independent placement in each tensor gives, with the sizes each update has there)."""
    inter = union = 0
    chance_inter = chance_union = 0.0
    seen = set()
    for name, ref in ref_state.items():
        if name not in a_state or name not in b_state or ref.shape != a_state[name].shape or ref.data_ptr() in seen:
            continue
        seen.add(ref.data_ptr())
        a, b = changed_mask(ref, a_state[name], dtype), changed_mask(ref, b_state[name], dtype)
        na, nb, n = count(a), count(b), a.numel()
        inter += count(a & b)
        union += count(a | b)
        chance_inter += na * nb / n
        chance_union += na + nb - na * nb / n
    return {"jaccard": inter / union if union else 1.0,
            "chance": chance_inter / chance_union if chance_union else 1.0}
