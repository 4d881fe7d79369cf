"""How much slower a generation batch and a GRPO-like training step get when other CPU-bound processes share the
machine, per thread policy (issue 23: the default run's GRPO steps ran 60-100x slower at load 5-7 on 2 cores).

Every cell runs in a fresh process (OpenMP reads OMP_WAIT_POLICY when it loads), once with no burner and once with
``--burners`` busy-looping processes beside it; what is reported is the ratio loaded / idle per policy, measured in
this one script, so other jobs on a shared machine move both sides alike. The fair-share factor is
(burners + threads actually running) / cores.

    python benchmarks/bench_contention.py                       # SmolLM2-135M-shaped random Llama (no loading)
    python benchmarks/bench_contention.py --burners 2 --reps 3

Policies: ``torch``: PyTorch's own default (as many intra-op threads as cores); ``passive``: the same with
OMP_WAIT_POLICY=passive (threads sleep instead of spinning at a barrier); ``single``: one thread;
``rlsft``: rlsft.threads.configure_threads
(the count the process is allowed, see its docstring).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def worker(args) -> dict:
    """Median seconds of a generation batch and of a forward+backward on the same model, in this process."""
    import torch

    sys.path.insert(0, str(ROOT))
    if args.policy == "rlsft":
        from rlsft.threads import configure_threads

        configure_threads()
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    # SmolLM2-135M's shape (30 layers, hidden 576, 9 heads / 3 kv heads), random weights: the same arithmetic.
    cfg = LlamaConfig(vocab_size=49152, hidden_size=576, intermediate_size=1536, num_hidden_layers=args.layers,
                      num_attention_heads=9, num_key_value_heads=3, max_position_embeddings=2048, tie_word_embeddings=True)
    model = LlamaForCausalLM(cfg).eval()
    prompt = torch.randint(0, 49152, (args.batch, 24))  # [B, T]
    pad = torch.ones_like(prompt)

    def generate():
        with torch.no_grad():
            model.generate(prompt, attention_mask=pad, max_new_tokens=args.new_tokens, min_new_tokens=args.new_tokens,
                           do_sample=True, top_k=0, pad_token_id=0)

    opt = torch.optim.AdamW(model.parameters(), lr=1e-6)
    seqs = torch.randint(0, 49152, (args.batch, 24 + args.new_tokens))  # [B, T + N]

    def update():
        model.train()
        loss = model(seqs, labels=seqs).loss
        loss.backward()
        opt.step()
        opt.zero_grad()
        model.eval()

    out = {"threads": torch.get_num_threads()}
    for name, fn in (("generate", generate), ("update", update)):
        fn()  # warm-up
        times = []
        for _ in range(args.reps):
            t0 = time.perf_counter()
            fn()
            times.append(time.perf_counter() - t0)
        out[name] = statistics.median(times)
    return out


def burn() -> None:
    while True:
        pass


def cell(args, policy: str, burners: int) -> dict:
    env = {**os.environ, "TOKENIZERS_PARALLELISM": "false", "PYTHONPATH": str(ROOT)}
    for k in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OMP_WAIT_POLICY"):
        env.pop(k, None)  # each policy decides these itself
    if policy == "passive":
        env["OMP_WAIT_POLICY"] = "passive"
    if policy == "single":
        env["OMP_NUM_THREADS"] = "1"
    procs = [subprocess.Popen([sys.executable, __file__, "--burn"]) for _ in range(burners)]
    try:
        time.sleep(0.5 if burners else 0)
        cmd = [sys.executable, __file__, "--worker", "--policy", policy, "--reps", str(args.reps), "--batch",
               str(args.batch), "--new-tokens", str(args.new_tokens), "--layers", str(args.layers)]
        res = subprocess.run(cmd, env=env, capture_output=True, text=True, check=True)
    finally:
        for p in procs:
            p.kill()
            p.wait()
    return json.loads(res.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--burners", type=int, default=2)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--new-tokens", type=int, default=16)
    ap.add_argument("--layers", type=int, default=30)
    ap.add_argument("--policies", default="torch,passive,rlsft")
    ap.add_argument("--policy", default="torch")
    ap.add_argument("--worker", action="store_true")
    ap.add_argument("--burn", action="store_true")
    args = ap.parse_args()
    if args.burn:
        burn()
    if args.worker:
        print(json.dumps(worker(args)))
        return
    print(f"{os.cpu_count()} cores, {len(os.sched_getaffinity(0))} in affinity; {args.burners} burners; "
          f"batch {args.batch} x {args.new_tokens} new tokens, {args.layers} layers; median of {args.reps}; "
          f"load average before: {os.getloadavg()[0]:.1f}", flush=True)
    rows = []
    for policy in args.policies.split(","):
        idle = cell(args, policy, 0)
        print(f"  {policy} idle: {idle}", flush=True)
        busy = cell(args, policy, args.burners)
        print(f"  {policy} with {args.burners} burners: {busy}", flush=True)
        rows.append((policy, idle, busy))
    print(f"{'policy':8s} {'threads':>7s} {'gen idle':>9s} {'gen load':>9s} {'ratio':>6s} "
          f"{'upd idle':>9s} {'upd load':>9s} {'ratio':>6s}")
    for policy, idle, busy in rows:
        print(f"{policy:8s} {idle['threads']:>3d}/{busy['threads']:<3d} {idle['generate']:9.2f} {busy['generate']:9.2f} "
              f"{busy['generate'] / idle['generate']:6.1f} {idle['update']:9.2f} {busy['update']:9.2f} "
              f"{busy['update'] / idle['update']:6.1f}")

if __name__ == "__main__":
    main()
