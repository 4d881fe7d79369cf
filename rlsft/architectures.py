"""Where each supported decoder family keeps its modules: the one registry EAP, probes and ablation read.

Every family is one residual stream ``x`` that each block reads and writes twice:

    x = x + attn_out(attention(attn_norm(x)))        attn_norm may be absent (post-norm: q, k, v read x itself)
    x = x + mlp_out(mlp(mlp_norm(x)))                mlp_norm may be absent (post-norm: the MLP reads x itself)

where ``attn_out`` / ``mlp_out`` name the module whose output is what gets added (``o_proj`` / the MLP in a pre-norm
block, the post-attention / post-feedforward norm in OLMo-2/3's post-norm and Gemma 3's sandwich). A new family is one
more entry (keyed by ``config.model_type``) with:

  body, embed, layers, final_norm, lm_head   module paths in the causal LM; ``embed``'s output is the residual stream's
                                             first term (Gemma's embedding scales itself, so its output is the scaled one)
  attn_norm   path in a block of the norm between the residual and q/k/v, or None
  attn        the attention module (what reads the residual when attn_norm is None); q, k, v: its projections, or
  qkv         one fused projection whose output is [q | k | v] (sizes from the config's heads, kv heads, head_dim)
  attn_out    module whose output is added to the residual after attention
  mlp_norm    the norm between the residual and the MLP, or None;  mlp: the MLP (for MoE, the whole sparse block)
  mlp_out     module whose output is added to the residual after the MLP
  logit_softcap  name of the config attribute of a final ``cap * tanh(logits / cap)`` (None: no soft-capping)
  tiny        config options a tiny random model of the family needs (``models.build_tiny_model``), e.g. few experts

and a tiny config in the tests (tests/test_eap_scores.py checks every edge against finite differences, per family).
Norms may be any module (RMSNorm, Gemma's ``1 + w`` RMSNorm, LayerNorm): EAP pulls gradients back through them with
autograd, not a closed form. A sparse MoE block is differentiated with its routing fixed where the input is: the top-k
choice is piecewise constant, so scores are exact first-order effects within the current routing.
"""

from __future__ import annotations

from .errors import RlsftError

_PRE_NORM = dict(
    body="model", embed="model.embed_tokens", layers="model.layers", final_norm="model.norm", lm_head="lm_head",
    attn_norm="input_layernorm", attn="self_attn", q="self_attn.q_proj", k="self_attn.k_proj", v="self_attn.v_proj",
    qkv=None, attn_out="self_attn.o_proj", mlp_norm="post_attention_layernorm", mlp="mlp", mlp_out="mlp",
    logit_softcap=None, tiny={},
)
# OLMo-2/3: no norm before attention or MLP; each output is normed before it is added to the residual.
_POST_NORM = dict(_PRE_NORM, attn_norm=None, attn_out="post_attention_layernorm", mlp_norm=None,
                  mlp_out="post_feedforward_layernorm")

ARCHITECTURES: dict[str, dict] = {
    "llama": _PRE_NORM,
    "mistral": _PRE_NORM,
    "qwen2": _PRE_NORM,
    "qwen3": _PRE_NORM,  # q_norm / k_norm act after the projections: inside the q and k paths, no change here
    # a tiny one: 4 experts, and the per-expert loop (the grouped-mm kernel has no fp64)
    "qwen3_moe": dict(_PRE_NORM, tiny=dict(num_experts=4, num_experts_per_tok=2, moe_intermediate_size=32,
                                           experts_implementation="eager")),
    "olmo2": _POST_NORM,
    "olmo3": _POST_NORM,
    # Gemma 3 text model: sandwich norms (pre and post around attention and MLP), scaled embedding, soft-capping.
    "gemma3_text": dict(_PRE_NORM, attn_out="post_attention_layernorm", mlp_norm="pre_feedforward_layernorm",
                        mlp_out="post_feedforward_layernorm", logit_softcap="final_logit_softcapping"),
    "phi3": dict(_PRE_NORM, q=None, k=None, v=None, qkv="self_attn.qkv_proj"),  # its MLP's gate_up_proj is inside m{l}
}


def architecture(model_or_type) -> dict:
    """The module map of a model (or of a ``model_type`` string); one clear line naming the supported ones if none."""
    if isinstance(model_or_type, str):
        model_type = model_or_type
    else:
        model_type = getattr(getattr(model_or_type, "config", None), "model_type", type(model_or_type).__name__)
    if model_type not in ARCHITECTURES:
        raise RlsftError(f"architecture {model_type!r} is not supported; supported: {', '.join(ARCHITECTURES)}")
    return ARCHITECTURES[model_type]


def decoder_layers(model):
    """The decoder blocks (a ModuleList) of a supported causal LM."""
    return model.get_submodule(architecture(model)["layers"])


def decoder_body(model):
    """The model without its LM head (reading hidden states needs no vocabulary-sized logits)."""
    return model.get_submodule(architecture(model)["body"])
