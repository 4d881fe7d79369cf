"""Weight lenses of a 7B-shaped pair of state dicts (random bf16, CPU or GPU) against the time to load the two models.

    python benchmarks/bench_lenses.py                          # 2 blocks at 1/4 of Llama-2-7B's width, CPU
    python benchmarks/bench_lenses.py --layers 32 --scale 1    # the full shape (27 GB of RAM for the two, bf16)
    python benchmarks/bench_lenses.py --cuda --layers 4 --scale 1

Shapes: Llama-2-7B blocks (hidden 4096, MLP 11008, q/k/v/o and gate/up/down) times ``--scale`` in width, ``--layers``
blocks (embedding and head left out: they have no spectra and cost what their size says). The compared state dict is
the reference with 20% of the elements moved (RL-like, Mukherjee et al.) and the rest moved below bf16 resolution.
Measured in one process: saving both with safetensors, then loading both (``load_file``, each tensor copied out of
the mapped file as model loading does; the page cache is warm, so this is the fastest loading a disk allows: real
loading from disk is slower), ``update_sparsity``, and ``weight_rows``
(sparsity + numerical / effective rank of every update + spectral drift and top-16 principal angles: per matrix the
eigenvalues of the update's Gram matrix and the top 16 eigenpairs of the two models' Gram matrices). Projection to 32 full-width blocks: loading and sparsity scale with the parameter count
(scale^2 * layers), the decompositions with scale^3 * layers (an SVD of an m x n matrix costs m n min(m, n)).
"""

import argparse
import tempfile
import time
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from rlsft.lenses import update_sparsity, weight_rows

HIDDEN, MLP = 4096, 11008
SHAPES = {"self_attn.q_proj.weight": ("h", "h"), "self_attn.k_proj.weight": ("h", "h"),
          "self_attn.v_proj.weight": ("h", "h"), "self_attn.o_proj.weight": ("h", "h"),
          "mlp.gate_proj.weight": ("m", "h"), "mlp.up_proj.weight": ("m", "h"), "mlp.down_proj.weight": ("h", "m")}


def state_dicts(layers: int, scale: float, device: str) -> tuple[dict, dict]:
    dims = {"h": int(HIDDEN * scale), "m": int(MLP * scale)}
    g = torch.Generator(device=device).manual_seed(0)
    ref, new = {}, {}
    for l in range(layers):
        for name, (a, b) in SHAPES.items():
            w = (torch.randn(dims[a], dims[b], generator=g, device=device) * 0.02).to(torch.bfloat16)
            moved = torch.rand(w.shape, generator=g, device=device) < 0.2
            n = w.float() * (1 + 2.0**-12)  # below bf16 resolution: unchanged at bf16
            n = torch.where(moved, n + 0.002 * torch.randn(w.shape, generator=g, device=device), n)
            ref[f"model.layers.{l}.{name}"], new[f"model.layers.{l}.{name}"] = w, n.to(torch.bfloat16)
    return ref, new


def timed(fn):
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    t = time.perf_counter()
    out = fn()
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    return out, time.perf_counter() - t


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--layers", type=int, default=2)
    ap.add_argument("--scale", type=float, default=0.25)
    ap.add_argument("--cuda", action="store_true")
    args = ap.parse_args()
    device = "cuda" if args.cuda else "cpu"
    ref, new = state_dicts(args.layers, args.scale, device)
    params = sum(v.numel() for v in ref.values())
    with tempfile.TemporaryDirectory() as tmp:
        paths = [Path(tmp) / "ref.safetensors", Path(tmp) / "new.safetensors"]
        _, t_save = timed(lambda: [save_file({k: v.cpu() for k, v in sd.items()}, str(p))
                                   for sd, p in zip((ref, new), paths)])
        # on CPU load_file maps the file and reads nothing until a tensor is touched (as from_pretrained's loading
        # does before it copies into the model's parameters): clone to time the read itself
        loaded, t_load = timed(lambda: [{k: v.clone() for k, v in load_file(str(p), device=device).items()}
                                        for p in paths])
    sparsity, t_sparsity = timed(lambda: update_sparsity(*loaded))
    rows, t_lenses = timed(lambda: weight_rows(*loaded, k=16))
    per_block = 4 * HIDDEN**2 + 3 * HIDDEN * MLP
    proj = 32 * per_block / params  # params -> 32 full-width blocks
    proj_svd = 32 / args.layers / args.scale**3
    print(f"{args.layers} blocks at scale {args.scale} ({params / 1e6:.0f}M parameters per model, bf16, {device}); "
          f"unchanged at bf16 {sparsity['__all__']:.3f} (planted 0.8)")
    print("| step | measured s | projected s, 32 blocks of Llama-2-7B |\n|---|---|---|")
    for name, t, p in (("load both (safetensors, warm page cache)", t_load, t_load * proj),
                       ("update sparsity", t_sparsity, t_sparsity * proj),
                       ("sparsity + ranks + drift + angles", t_lenses, (t_lenses - t_sparsity) * proj_svd
                        + t_sparsity * proj)):
        print(f"| {name} | {t:.3f} | {p:.0f} |")
    print(f"ratio to loading: sparsity {t_sparsity / t_load:.2f}x, all weight lenses "
          f"{t_lenses / t_load:.1f}x measured, {((t_lenses - t_sparsity) * proj_svd + t_sparsity * proj) / (t_load * proj):.0f}x "
          f"projected to full width (save took {t_save:.1f} s)")


if __name__ == "__main__":
    main()
