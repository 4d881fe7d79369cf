"""The architecture registry: probes and ablation find every family's blocks (checked against HF's own
hidden_states), ablation holds during cached generation, and an unsupported model is refused in one line.

Edge attribution per family is checked edge by edge in test_eap_scores.py.
"""

import numpy as np
import pytest
import torch
from transformers import GPT2Config, GPT2LMHeadModel

from rlsft.ablation import ablate, block_hooks, block_statistics
from rlsft.architectures import ARCHITECTURES, architecture, decoder_layers
from rlsft.errors import RlsftError
from rlsft.generate import Sampling, generate_batch
from rlsft.models import build_tiny_model
from rlsft.probe import extract_features

torch.set_num_threads(1)


def _gens(tok):
    pairs = [("What is 6 * 8?", "6 * 8 = 48 so \\boxed{48}"), ("Tom has 3 apples.", "He has \\boxed{8} apples"),
             ("What is 12 + 7? Compute it.", "19")]
    return [{"id": f"q{i}", "prompt_ids": tok(q)["input_ids"], "output_ids": tok(a, add_special_tokens=False)["input_ids"]}
            for i, (q, a) in enumerate(pairs)]


@pytest.mark.parametrize("arch", list(ARCHITECTURES))
def test_probe_and_ablation_read_every_family(arch):
    model, tok = build_tiny_model(arch, layers=3, hidden=32, heads=4, kv_heads=2, seed=0)
    model = model.double().eval()
    gens = _gens(tok)
    seqs = [(g["prompt_ids"] + g["output_ids"], len(g["prompt_ids"])) for g in gens]
    with torch.no_grad():
        hs = [model(input_ids=torch.tensor([s]), output_hidden_states=True).hidden_states for s, _ in seqs]
    # probes: block l's output at the last prompt token and averaged over the answer (hidden_states[l + 1])
    feats = extract_features(model, tok, gens, ["question_end", "answer_mean"], batch_size=2)
    for layer in range(2):  # the last entry of hidden_states has the final norm applied
        for row, (h, (_, p)) in enumerate(zip(hs, seqs)):
            np.testing.assert_allclose(feats["question_end"].X[row, layer], h[layer + 1][0, p - 1].numpy(), rtol=1e-6)
            np.testing.assert_allclose(feats["answer_mean"].X[row, layer], h[layer + 1][0, p:].mean(0).numpy(),
                                       rtol=1e-5, atol=1e-7)
    # ablation statistics: mean block contribution over prompt tokens, right padded in one batch
    stats = block_statistics(model, seqs, batch_size=3)
    for layer in range(2):
        delta = torch.cat([(h[layer + 1] - h[layer])[0, :p] for h, (_, p) in zip(hs, seqs)])
        np.testing.assert_allclose(stats.mean_delta[layer], delta.mean(0).numpy(), rtol=1e-5, atol=1e-6)
    # skip-ablating block 1 during left-padded generation with a KV cache: its output is its input at every step
    # (padding rows may be nan in an fp64 eager forward)
    seen = []
    prompts = [g["prompt_ids"] for g in gens[:2]]
    with ablate(model, 1, "skip"), block_hooks(model, lambda i, x, h: seen.append(torch.allclose(x, h, 0, 0, True)), layers={1}):
        ablated = generate_batch(model, tok, prompts, Sampling(max_new_tokens=4))
    assert len(seen) >= 4 and all(seen)
    assert len(ablated) == 2


def test_unsupported_model_is_refused_in_one_line():
    model = GPT2LMHeadModel(GPT2Config(vocab_size=50, n_embd=32, n_layer=2, n_head=4, n_positions=64))
    supported = ", ".join(ARCHITECTURES)
    for call in (architecture, decoder_layers):
        with pytest.raises(RlsftError, match=f"^architecture 'gpt2' is not supported; supported: {supported}$"):
            call(model)
    with pytest.raises(RlsftError, match="unknown tiny architecture 'gpt2'"):
        build_tiny_model("gpt2")


def test_unsupported_architecture_is_refused_before_loading_or_generating(tmp_path, cache_dir):
    """A local GPT-2 folder (a tiny GPT2Config saved with save_pretrained): experiment=probe stops at the config's
    model_type, before any model is loaded or answer generated (issue 23: it generated every answer first)."""
    from conftest import launch
    from rlsft.models import model_type

    folder = tmp_path / "gpt2"
    GPT2LMHeadModel(GPT2Config(n_layer=1, n_embd=16, n_head=2, vocab_size=64, n_positions=32)).save_pretrained(folder)
    assert model_type({"source": "local", "path": str(folder)}) == "gpt2"
    assert model_type({"source": "derived", "base": {"source": "local", "path": str(folder)}}) == "gpt2"
    for experiment in ("probe", "eap"):
        res = launch(f"experiment={experiment}", "model_pair=tiny", "model_pair.stages.1.model.source=local",
                     f"model_pair.stages.1.model.path={folder}", "logger=disabled",
                     f"hydra.run.dir={tmp_path / experiment}")
        assert res.returncode == 2, res.stderr
        assert res.stderr.strip().splitlines() == [
            f"error: stage 'rl': architecture 'gpt2' is not supported; supported: {', '.join(ARCHITECTURES)} "
            f"(experiment={experiment} reads the model's modules)"], res.stderr
        assert "generate" not in res.stdout + res.stderr and "loading the" not in res.stdout + res.stderr
        assert not (cache_dir / "generations").exists()
