"""The TransformerLens configuration of a workload's model, as circuit-tracer's replacement model needs it."""

from __future__ import annotations

from typing import Any

import torch

from attrbench.workload.build import BuiltWorkload


def transformer_lens_config(workload: BuiltWorkload, device: str, dtype: torch.dtype) -> Any:
    """The TransformerLens ``HookedTransformerConfig`` of the workload's model (what circuit-tracer's
    replacement model and its ``Graph.cfg`` need)."""
    from transformer_lens import HookedTransformerConfig  # heavy: imported only when a model is built

    m = workload.spec.model
    return HookedTransformerConfig(
        n_layers=m.num_hidden_layers, d_model=m.hidden_size, n_heads=m.num_attention_heads,
        n_key_value_heads=m.num_key_value_heads, d_head=m.head_dim, d_mlp=m.intermediate_size,
        d_vocab=m.vocab_size, n_ctx=max(256, len(workload.token_ids)), act_fn="silu",
        normalization_type="RMS", positional_embedding_type="rotary", gated_mlp=True, final_rms=True,
        use_qk_norm=m.model_type == "qwen3", rotary_dim=m.head_dim, rotary_base=m.rope_theta,
        eps=m.rms_norm_eps,
        original_architecture="Qwen3ForCausalLM" if m.model_type == "qwen3" else "LlamaForCausalLM",
        tokenizer_prepends_bos=False, default_prepend_bos=False, dtype=dtype, device=device,
    )
