"""Model families: what each ``model_type`` computes, and how every part of attrbench builds it.

One :class:`Family` per supported ``model_type`` says

* which Hugging Face ``config.json`` fields it honours, which it ignores (they cannot change a forward pass
  over a prompt inside the context: token ids, dtype, cache settings...) and which values it refuses
  (:func:`check_config_fields`: a field that changes the computation is honoured or refused with one
  :class:`~attrbench.errors.UsageError` line, never dropped);
* the Hugging Face config and seeded model (:func:`hf_config`, :func:`seeded_model_fixups`);
* the TransformerLens config, weight converter and transcoder hooks of the reference
  (:func:`transformer_lens_config`, :func:`convert_weights`, ``feature_input_hook``/``feature_output_hook``,
  as circuit-tracer's own configs for that family name them);
* the layout the linearised model reads from the HF model (:func:`linearisation_layout`).

What circuit-tracer freezes and what the hand-written VJP passes through, per family
(``r`` residual entering a layer, ``m`` residual after attention, ``x`` transcoder input)::

  qwen3   r -> ln1 (w * 1/rms frozen) -> attention (QK-norm and pattern frozen: only V/O) -> m = r + attn
          x = mlp.hook_in = ln2(m) (w * 1/rms frozen); r' = m + transcoder/skip(x) + frozen error
          final: logit target injected after ln_final (w * 1/rms frozen)
  llama   as qwen3 without QK-norm; RoPE (with llama3 rope_scaling) only shapes the frozen pattern;
          tied embeddings: the same matrix gives token vectors and logit directions
  gemma2  token vectors are sqrt(d_model) * W_E (scaled embeddings); ln1 ((1 + w) / rms frozen) ->
          attention (softcapped pattern frozen: only V/O) -> post-attention norm ((1 + w) / rms frozen)
          -> m = r + that; x = ln2.hook_normalized = m / rms(m) (frozen scale, *before* the (1 + w) gain);
          the MLP with its pre/post-feedforward norms is replaced: r' = m + skip(x) + decoders + frozen
          error, written at hook_mlp_out (after the post-feedforward norm); final norm (1 + w) / rms
          frozen; the final-logit softcap acts on the forward pass only (it sets the logit probabilities;
          logit targets are injected before it, as circuit-tracer does)
  gemma3  as gemma2 without softcaps, with QK-norm (frozen with the pattern) and local/global layers
          with two RoPE bases (again only in the frozen pattern)
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch

from attrbench.errors import UsageError

#: ``config.json`` fields of every Hugging Face config that never change a forward pass's numbers
GENERIC_IGNORED = frozenset(
    {
        "_name_or_path",
        "architectures",
        "transformers_version",
        "torch_dtype",
        "dtype",
        "use_cache",
        "initializer_range",
        "bos_token_id",
        "eos_token_id",
        "pad_token_id",
        "sep_token_id",
        "decoder_start_token_id",
        "max_position_embeddings",
        "attention_dropout",
        "cache_implementation",
        "attn_implementation",
        "_attn_implementation",
        "model_type",
        "name",
        "add_cross_attention",
        "bad_words_ids",
        "begin_suppress_tokens",
        "chunk_size_feed_forward",
        "cross_attention_hidden_size",
        "diversity_penalty",
        "do_sample",
        "early_stopping",
        "encoder_no_repeat_ngram_size",
        "exponential_decay_length_penalty",
        "finetuning_task",
        "forced_bos_token_id",
        "forced_eos_token_id",
        "id2label",
        "label2id",
        "is_decoder",
        "is_encoder_decoder",
        "length_penalty",
        "max_length",
        "min_length",
        "no_repeat_ngram_size",
        "num_beam_groups",
        "num_beams",
        "num_return_sequences",
        "output_attentions",
        "output_hidden_states",
        "output_scores",
        "prefix",
        "problem_type",
        "remove_invalid_values",
        "repetition_penalty",
        "return_dict",
        "return_dict_in_generate",
        "suppress_tokens",
        "task_specific_params",
        "temperature",
        "tf_legacy_loss",
        "tie_encoder_decoder",
        "tokenizer_class",
        "top_k",
        "top_p",
        "torchscript",
        "typical_p",
        "use_bfloat16",
    }
)

#: fields that must have exactly this value (anything else changes the computation and is not modelled)
_FIXED_COMMON = {
    "attention_bias": False,
    "mlp_bias": False,
    "pretraining_tp": 1,
    "pruned_heads": {},
    "use_sliding_window": False,
    "use_bidirectional_attention": False,
}


@dataclass(frozen=True)
class Family:
    model_type: str
    architecture: str  # Hugging Face class (and TransformerLens ``original_architecture``)
    activation: str  # hidden_act / hidden_activation it must use
    #: optional ModelSpec fields it honours (the others must stay unset)
    fields: tuple[str, ...]
    #: fields of its real config.json that are accepted and not modelled (they do not change the numbers)
    ignored: frozenset[str] = frozenset()
    feature_input_hook: str = "mlp.hook_in"
    feature_output_hook: str = "mlp.hook_out"
    tied_default: bool = False
    gemma: bool = False  # (1 + w) norm gains, scaled embeddings, pre/post norms around attention and MLP

    @property
    def is_gemma(self) -> bool:
        return self.gemma


FAMILIES: dict[str, Family] = {
    "qwen3": Family(
        "qwen3",
        "Qwen3ForCausalLM",
        "silu",
        ("tie_word_embeddings",),
        ignored=frozenset({"max_window_layers", "sliding_window", "layer_types"}),
    ),
    "llama": Family("llama", "LlamaForCausalLM", "silu", ("tie_word_embeddings", "rope_scaling")),
    "gemma2": Family(
        "gemma2",
        "Gemma2ForCausalLM",
        "gelu_pytorch_tanh",
        (
            "tie_word_embeddings",
            "attn_logit_softcapping",
            "final_logit_softcapping",
            "query_pre_attn_scalar",
            "sliding_window",
        ),
        ignored=frozenset({"layer_types"}),
        feature_input_hook="ln2.hook_normalized",
        feature_output_hook="hook_mlp_out",
        tied_default=True,
        gemma=True,
    ),
    "gemma3": Family(
        "gemma3",
        "Gemma3ForCausalLM",
        "gelu_pytorch_tanh",
        (
            "tie_word_embeddings",
            "attn_logit_softcapping",
            "final_logit_softcapping",
            "query_pre_attn_scalar",
            "sliding_window",
            "rope_local_base_freq",
            "sliding_window_pattern",
            "rope_scaling",
        ),
        ignored=frozenset({"layer_types", "_sliding_window_pattern"}),
        feature_input_hook="ln2.hook_normalized",
        feature_output_hook="hook_mlp_out",
        tied_default=True,
        gemma=True,
    ),
}
#: Hugging Face model_type names read as one of ours
ALIASES = {"gemma3_text": "gemma3"}
#: every optional ModelSpec field (None = the family's default; left out of the content hash when None)
OPTIONAL_FIELDS = (
    "tie_word_embeddings",
    "rope_scaling",
    "attn_logit_softcapping",
    "final_logit_softcapping",
    "query_pre_attn_scalar",
    "sliding_window",
    "rope_local_base_freq",
    "sliding_window_pattern",
)
#: family defaults of the optional fields (Hugging Face's defaults for that config class)
DEFAULTS: dict[str, dict[str, Any]] = {
    "gemma2": {"attn_logit_softcapping": 50.0, "final_logit_softcapping": 30.0, "sliding_window": 4096},
    "gemma3": {
        "attn_logit_softcapping": 0.0,
        "final_logit_softcapping": 0.0,
        "sliding_window": 4096,
        "rope_local_base_freq": 10000.0,
        "sliding_window_pattern": 6,
    },
}
LLAMA3_ROPE_KEYS = {
    "rope_type",
    "type",
    "factor",
    "low_freq_factor",
    "high_freq_factor",
    "original_max_position_embeddings",
}


def family(model_type: str) -> Family:
    return FAMILIES[ALIASES.get(model_type, model_type)]


def value(m, name: str) -> Any:
    """The effective value of an optional ModelSpec field (its family default when unset)."""
    v = getattr(m, name)
    if v is not None:
        return v
    if name == "tie_word_embeddings":
        return family(m.model_type).tied_default
    if name == "query_pre_attn_scalar":
        return m.head_dim
    return DEFAULTS.get(family(m.model_type).model_type, {}).get(name)


def rope_scaling(m) -> dict | None:
    """The rope_scaling dict (None when there is none or it is the ``default`` type)."""
    rs = m.rope_scaling
    if not rs:
        return None
    kind = rs.get("rope_type", rs.get("type"))
    return None if kind == "default" else rs


def layer_types(m) -> list[str]:
    """Per layer ``"local"`` (sliding window) or ``"global"``, as the Hugging Face config lays them out."""
    f = family(m.model_type)
    L = m.num_hidden_layers
    if f.model_type == "gemma2":
        return ["local" if (i + 1) % 2 else "global" for i in range(L)]
    if f.model_type == "gemma3":
        pattern = value(m, "sliding_window_pattern")
        return ["local" if (i + 1) % pattern else "global" for i in range(L)]
    return ["global"] * L


def _hf_layer_types(m) -> list[str]:
    return ["sliding_attention" if t == "local" else "full_attention" for t in layer_types(m)]


# ---------------------------------------------------------------------------------------------- checks
def check_config_fields(raw: dict, where: str) -> dict:
    """Refuse (one UsageError line) every field of a model section that would change the computation and is
    not honoured; returns ``raw`` with the HF model_type alias and renamed fields normalised."""
    mt = raw.get("model_type", "qwen3")
    if mt == "gemma3" and "text_config" in raw:
        raise UsageError(
            f"{where}: a multimodal Gemma-3 config (model_type 'gemma3' with text_config) is not "
            "supported; paste its text_config (model_type 'gemma3_text')"
        )
    if mt not in FAMILIES and mt not in ALIASES:
        return raw  # validate() names the unsupported model_type
    f = family(mt)
    out = dict(raw)
    out["model_type"] = f.model_type
    if "_sliding_window_pattern" in out and "sliding_window_pattern" not in out:
        out["sliding_window_pattern"] = out["_sliding_window_pattern"]
    from attrbench.workload.spec import ModelSpec  # the base fields every family honours

    base = {name for name in ModelSpec.__dataclass_fields__ if name not in OPTIONAL_FIELDS}
    for key, v in raw.items():
        if key in base or key in f.fields or key in GENERIC_IGNORED or key in f.ignored:
            continue
        if key in _FIXED_COMMON:
            if v != _FIXED_COMMON[key] and v is not None:
                raise UsageError(
                    f"{where}: {key}={v!r} changes the computation and is not supported (only {_FIXED_COMMON[key]!r})"
                )
            continue
        if key in ("hidden_act", "hidden_activation"):
            if v != f.activation and v is not None:
                raise UsageError(f"{where}: {key}={v!r} is not supported for {f.model_type} (only {f.activation!r})")
            continue
        if key in OPTIONAL_FIELDS:
            if v is None or (key == "rope_scaling" and not v) or (key == "tie_word_embeddings" and v == f.tied_default):
                out.pop(key, None)
                continue
            raise UsageError(f"{where}: {key}={v!r} changes the computation and is not supported for {f.model_type}")
        raise UsageError(
            f"{where}: field {key!r} is not modelled for model_type {f.model_type}; remove it only if "
            "it does not change the computation"
        )
    if f.model_type == "qwen3" and raw.get("use_sliding_window"):
        raise UsageError(f"{where}: use_sliding_window=true is not supported for qwen3")
    for key in f.fields:  # JSON null means "the family default"
        if key in out and out[key] is None:
            del out[key]
    out.pop("_sliding_window_pattern", None)
    return out


def validate_model(m) -> None:
    """Check the optional fields of a ModelSpec (one UsageError line for the first bad one)."""
    f = family(m.model_type)
    for name in OPTIONAL_FIELDS:
        v = getattr(m, name)
        if v is None:
            continue
        if name not in f.fields:
            raise UsageError(f"workload: model.{name} is not supported for model_type {f.model_type}")
        if name == "tie_word_embeddings":
            if not isinstance(v, bool):
                raise UsageError(f"workload: model.tie_word_embeddings must be true or false, got {v!r}")
        elif name == "rope_scaling":
            _check_rope_scaling(f, v)
        elif name in ("attn_logit_softcapping", "final_logit_softcapping"):
            if isinstance(v, bool) or not isinstance(v, (int, float)) or v < 0:
                raise UsageError(f"workload: model.{name} must be a number >= 0 (0 = off), got {v!r}")
        elif name in ("sliding_window", "sliding_window_pattern"):
            if isinstance(v, bool) or not isinstance(v, int) or v <= 0:
                raise UsageError(f"workload: model.{name} must be a positive integer, got {v!r}")
        elif isinstance(v, bool) or not isinstance(v, (int, float)) or v <= 0:
            raise UsageError(f"workload: model.{name} must be a positive number, got {v!r}")


def _check_rope_scaling(f: Family, rs: Any) -> None:
    if not isinstance(rs, dict):
        raise UsageError(f"workload: model.rope_scaling must be an object, got {rs!r}")
    kind = rs.get("rope_type", rs.get("type"))
    if kind == "default":
        return
    if f.model_type == "llama":
        if kind != "llama3":
            raise UsageError(f"workload: model.rope_scaling type {kind!r} is not supported for llama (only 'llama3')")
        extra = set(rs) - LLAMA3_ROPE_KEYS
        if extra:
            raise UsageError(f"workload: model.rope_scaling fields {sorted(extra)} are not supported")
        for key in ("factor", "low_freq_factor", "high_freq_factor", "original_max_position_embeddings"):
            v = rs.get(key)
            if isinstance(v, bool) or not isinstance(v, (int, float)) or v <= 0:
                raise UsageError(f"workload: model.rope_scaling.{key} must be a positive number, got {v!r}")
        if rs["high_freq_factor"] <= rs["low_freq_factor"]:
            raise UsageError("workload: model.rope_scaling.high_freq_factor must exceed low_freq_factor")
    elif f.model_type == "gemma3":
        if kind != "linear" or set(rs) - {"rope_type", "type", "factor"}:
            raise UsageError(f"workload: model.rope_scaling {rs!r} is not supported for gemma3 (only linear)")
        v = rs.get("factor")
        if isinstance(v, bool) or not isinstance(v, (int, float)) or v <= 0:
            raise UsageError(f"workload: model.rope_scaling.factor must be a positive number, got {v!r}")
    else:
        raise UsageError(f"workload: model.rope_scaling is not supported for {f.model_type}")


# ---------------------------------------------------------------------------------------------- builds
def hf_config(m, common: dict):
    """The transformers config of a ModelSpec; ``common`` holds the fields every family shares."""
    from transformers import Gemma2Config, Gemma3TextConfig, LlamaConfig, Qwen3Config

    f = family(m.model_type)
    common = dict(common, tie_word_embeddings=value(m, "tie_word_embeddings"))
    if f.model_type == "qwen3":
        return Qwen3Config(**common)
    if f.model_type == "llama":
        return LlamaConfig(attention_bias=False, mlp_bias=False, rope_scaling=rope_scaling(m), **common)
    softcaps = {k: (value(m, k) or None) for k in ("attn_logit_softcapping", "final_logit_softcapping")}
    gemma = dict(
        common,
        hidden_activation=f.activation,
        query_pre_attn_scalar=value(m, "query_pre_attn_scalar"),
        sliding_window=value(m, "sliding_window"),
        layer_types=_hf_layer_types(m),
        pad_token_id=0,
        **softcaps,
    )
    if f.model_type == "gemma2":
        return Gemma2Config(**gemma)
    return Gemma3TextConfig(
        rope_local_base_freq=value(m, "rope_local_base_freq"),
        rope_scaling=rope_scaling(m),
        sliding_window_pattern=value(m, "sliding_window_pattern"),
        **gemma,
    )


@torch.no_grad()
def seeded_model_fixups(m, model: Any, seed: int) -> None:
    """Gemma's RMSNorm weights start at 0 (gain 1 + 0): give them seeded values so that a wrong gain rule
    (w instead of 1 + w, or a missing post-norm) shows in every comparison. They lie on a 1/64 grid, so
    ``w`` and ``1 + w`` are exact in bfloat16 and HF (1 + w in float32) and TransformerLens (1 + w stored in
    the model dtype) multiply by the same gain in bf16 runs."""
    if not family(m.model_type).is_gemma:
        return
    g = torch.Generator().manual_seed(seed * 1_000_003 + 17)
    for name, p in sorted(model.named_parameters()):
        if "norm" in name and p.ndim == 1:
            p.copy_(torch.round(torch.randn(p.shape, generator=g) * 0.2 * 64) / 64)


def transformer_lens_config(m, n_ctx: int, device: str, dtype: torch.dtype):
    """The hand-built HookedTransformerConfig of the family (TransformerLens hard-codes official names only)."""
    from transformer_lens import HookedTransformerConfig

    f = family(m.model_type)
    kwargs: dict[str, Any] = dict(
        n_layers=m.num_hidden_layers,
        d_model=m.hidden_size,
        n_heads=m.num_attention_heads,
        n_key_value_heads=m.num_key_value_heads,
        d_head=m.head_dim,
        d_mlp=m.intermediate_size,
        d_vocab=m.vocab_size,
        n_ctx=n_ctx,
        act_fn=f.activation,
        normalization_type="RMS",
        positional_embedding_type="rotary",
        gated_mlp=True,
        final_rms=True,
        rotary_dim=m.head_dim,
        rotary_base=m.rope_theta,
        eps=m.rms_norm_eps,
        original_architecture=f.architecture,
        tokenizer_prepends_bos=False,
        default_prepend_bos=False,
        dtype=dtype,
        device=device,
        use_qk_norm=f.model_type in ("qwen3", "gemma3"),
    )
    rs = rope_scaling(m)
    if f.model_type == "llama" and rs is not None:
        kwargs.update(
            use_NTK_by_parts_rope=True,
            NTK_by_parts_factor=float(rs["factor"]),
            NTK_by_parts_low_freq_factor=float(rs["low_freq_factor"]),
            NTK_by_parts_high_freq_factor=float(rs["high_freq_factor"]),
            NTK_original_ctx_len=int(rs["original_max_position_embeddings"]),
        )
    if f.is_gemma:
        types = layer_types(m)
        kwargs.update(
            use_normalization_before_and_after=True,
            attn_scale=math.sqrt(value(m, "query_pre_attn_scalar")),
            attn_scores_soft_cap=float(value(m, "attn_logit_softcapping") or -1.0),
            output_logits_soft_cap=float(value(m, "final_logit_softcapping") or -1.0),
            use_local_attn="local" in types,
            attn_types=types,
            window_size=value(m, "sliding_window"),
        )
        if f.model_type == "gemma3":
            kwargs["rotary_base_local"] = value(m, "rope_local_base_freq")
            if rs is not None:
                kwargs["rotary_scaling_factor"] = float(rs["factor"])
    return HookedTransformerConfig(**kwargs)


def convert_weights(m, hf_model: Any, cfg) -> dict:
    """TransformerLens state dict of the HF model, with TransformerLens' own converter for the family."""
    f = family(m.model_type)
    if f.model_type == "qwen3":
        from transformer_lens.pretrained.weight_conversions.qwen3 import convert_qwen3_weights

        return convert_qwen3_weights(hf_model, cfg)
    if f.model_type == "llama":
        from transformer_lens.pretrained.weight_conversions.llama import convert_llama_weights

        return convert_llama_weights(hf_model, cfg)
    from transformer_lens.pretrained.weight_conversions.gemma import convert_gemma_weights

    return convert_gemma_weights(hf_model, cfg)


# ---------------------------------------------------------------------------------------------- linearisation
@dataclass
class LinearisationLayout:
    """Where the linearised model reads the HF model, per family.

    ``norm_offset`` is added to every RMSNorm weight to get its gain (1 for Gemma's ``1 + w``);
    ``pre_mlp_norm`` is the norm whose *input* is ``m`` and whose normalised value (with or without its gain:
    ``input_has_gain``) is the transcoder input; ``mlp_out_module`` is the module whose output the
    transcoder replaces; ``post_attn_norm`` is the norm between attention and the residual (None if absent).
    """

    norm_offset: float
    pre_mlp_norm: str
    input_has_gain: bool
    mlp_out_module: str
    post_attn_norm: str | None
    embed_scale: float


def linearisation_layout(m) -> LinearisationLayout:
    """The family's layout (``m=None``: the Qwen3/Llama one)."""
    if m is not None and family(m.model_type).is_gemma:
        return LinearisationLayout(
            1.0,
            "pre_feedforward_layernorm",
            False,
            "post_feedforward_layernorm",
            "post_attention_layernorm",
            m.hidden_size**0.5,
        )
    return LinearisationLayout(0.0, "post_attention_layernorm", True, "mlp", None, 1.0)
