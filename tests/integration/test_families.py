"""Model families (issue 14): config fields honoured or refused, HF and TransformerLens models equal per family.

The per-family parity of the exact backends against circuit-tracer is in test_backend_parity.py (the
llama32, gemma2 and gemma3 workloads, and llama32-clt, gemma2-clt, gemma3-clt with cross-layer transcoders).
"""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import pytest
import torch
from cli_helpers import invoke

from attrbench.errors import UsageError
from attrbench.workload.build import build_workload
from attrbench.workload.spec import load_workload_file, preset, spec_from_dict

WORKLOADS = Path(__file__).resolve().parents[2] / "workloads"

#: the field set of the real Llama-3.2-1B config.json, with small shapes
LLAMA32_CONFIG = {
    "architectures": ["LlamaForCausalLM"],
    "attention_bias": False,
    "attention_dropout": 0.0,
    "bos_token_id": 1,
    "eos_token_id": [2, 3],
    "head_dim": 16,
    "hidden_act": "silu",
    "hidden_size": 64,
    "initializer_range": 0.02,
    "intermediate_size": 128,
    "max_position_embeddings": 131072,
    "mlp_bias": False,
    "model_type": "llama",
    "num_attention_heads": 4,
    "num_hidden_layers": 2,
    "num_key_value_heads": 2,
    "pretraining_tp": 1,
    "rms_norm_eps": 1e-05,
    "rope_scaling": {
        "factor": 8.0,
        "high_freq_factor": 4.0,
        "low_freq_factor": 1.0,
        "original_max_position_embeddings": 32,
        "rope_type": "llama3",
    },
    "rope_theta": 500000.0,
    "tie_word_embeddings": True,
    "torch_dtype": "bfloat16",
    "transformers_version": "4.45.0.dev0",
    "use_cache": True,
    "vocab_size": 256,
}
#: the field set of the real gemma-2-2b config.json, with small shapes
GEMMA2_CONFIG = {
    "architectures": ["Gemma2ForCausalLM"],
    "attention_bias": False,
    "attention_dropout": 0.0,
    "attn_logit_softcapping": 50.0,
    "bos_token_id": 2,
    "cache_implementation": "hybrid",
    "eos_token_id": 1,
    "final_logit_softcapping": 30.0,
    "head_dim": 32,
    "hidden_act": "gelu_pytorch_tanh",
    "hidden_activation": "gelu_pytorch_tanh",
    "hidden_size": 64,
    "initializer_range": 0.02,
    "intermediate_size": 128,
    "max_position_embeddings": 8192,
    "model_type": "gemma2",
    "num_attention_heads": 4,
    "num_hidden_layers": 2,
    "num_key_value_heads": 2,
    "pad_token_id": 0,
    "query_pre_attn_scalar": 32,
    "rms_norm_eps": 1e-06,
    "rope_theta": 10000.0,
    "sliding_window": 4096,
    "torch_dtype": "float32",
    "transformers_version": "4.42.4",
    "use_cache": True,
    "vocab_size": 256,
}
#: the field set of the real gemma-3-1b-pt config.json, with small shapes
GEMMA3_CONFIG = {
    "architectures": ["Gemma3ForCausalLM"],
    "attention_bias": False,
    "attention_dropout": 0.0,
    "attn_logit_softcapping": None,
    "bos_token_id": 2,
    "cache_implementation": "hybrid",
    "eos_token_id": 1,
    "final_logit_softcapping": None,
    "head_dim": 32,
    "hidden_activation": "gelu_pytorch_tanh",
    "hidden_size": 64,
    "initializer_range": 0.02,
    "intermediate_size": 128,
    "max_position_embeddings": 32768,
    "model_type": "gemma3_text",
    "num_attention_heads": 4,
    "num_hidden_layers": 2,
    "num_key_value_heads": 1,
    "pad_token_id": 0,
    "query_pre_attn_scalar": 32,
    "rms_norm_eps": 1e-06,
    "rope_local_base_freq": 10000.0,
    "rope_scaling": None,
    "rope_theta": 1000000.0,
    "sliding_window": 512,
    "sliding_window_pattern": 6,
    "torch_dtype": "bfloat16",
    "transformers_version": "4.50.0.dev0",
    "use_cache": True,
    "vocab_size": 256,
}


def _spec(model: dict, n_tokens: int = 10):
    return spec_from_dict(
        {
            "model": model,
            "transcoders": {"d_transcoder": 64, "target_l0": 4},
            "prompt": {"n_tokens": n_tokens},
            "seed": 1,
        },
        "w.json",
    )


def _logits(spec) -> torch.Tensor:
    built = build_workload(spec)
    with torch.no_grad():
        return built.hf_model(built.token_ids[None]).logits


def test_pasted_llama32_config_is_honoured_not_dropped():
    spec = _spec(LLAMA32_CONFIG, n_tokens=24)
    assert spec.model.tie_word_embeddings is True and spec.model.rope_scaling["rope_type"] == "llama3"
    built = build_workload(spec)
    assert built.hf_model.lm_head.weight is built.hf_model.model.embed_tokens.weight
    # both fields change the computation: dropping either gives other logits
    logits = _logits(spec)
    no_scaling = _logits(replace(spec, model=replace(spec.model, rope_scaling=None)))
    untied = _logits(replace(spec, model=replace(spec.model, tie_word_embeddings=False)))
    assert (logits - no_scaling).abs().max() > 1e-4
    assert (logits - untied).abs().max() > 1e-3


def test_pasted_gemma_configs_are_accepted_with_their_fields():
    g2 = _spec(GEMMA2_CONFIG).model
    assert (g2.model_type, g2.attn_logit_softcapping, g2.final_logit_softcapping) == ("gemma2", 50.0, 30.0)
    g3 = _spec(GEMMA3_CONFIG).model
    assert (g3.model_type, g3.sliding_window_pattern, g3.rope_local_base_freq) == ("gemma3", 6, 10000.0)
    assert build_workload(_spec(GEMMA3_CONFIG)).hf_model.config.final_logit_softcapping is None


@pytest.mark.parametrize(
    "change, message",
    [
        ({"rope_scaling": {"rope_type": "yarn", "factor": 4.0}}, "type 'yarn' is not supported for llama"),
        ({"attention_bias": True}, "attention_bias=True changes the computation"),
        ({"hidden_act": "gelu"}, "hidden_act='gelu' is not supported for llama"),
        ({"quantization_config": {"bits": 4}}, "field 'quantization_config' is not modelled"),
        (
            {
                "rope_scaling": {
                    "rope_type": "llama3",
                    "factor": 8.0,
                    "low_freq_factor": 4.0,
                    "high_freq_factor": 1.0,
                    "original_max_position_embeddings": 32,
                }
            },
            "high_freq_factor must exceed",
        ),
        ({"model_type": "qwen3", "rope_scaling": {"rope_type": "yarn", "factor": 4.0}}, "not supported for qwen3"),
        (
            {"model_type": "qwen3", "rope_scaling": None, "tie_word_embeddings": False, "use_sliding_window": True},
            "use_sliding_window=True changes the computation",
        ),
        (
            {"rope_local_base_freq": 10.0},
            "rope_local_base_freq=10.0 changes the computation and is not supported for llama",
        ),
        ({**GEMMA2_CONFIG, "rope_local_base_freq": 10.0}, "not supported for gemma2"),
        ({**GEMMA2_CONFIG, "hidden_activation": "gelu"}, "hidden_activation='gelu' is not supported for gemma2"),
        ({"model_type": "gemma3", "text_config": {}}, "multimodal Gemma-3 config"),
        ({**GEMMA3_CONFIG, "rope_scaling": {"rope_type": "dynamic", "factor": 2.0}}, "only linear"),
    ],
)
def test_fields_that_change_the_computation_are_refused(change, message):
    base = {} if "Gemma" in str(change.get("architectures")) else LLAMA32_CONFIG  # the gemma cases are whole
    with pytest.raises(UsageError, match=message):
        _spec({**base, **change})


def test_a_refused_field_is_a_one_line_usage_error_exit_2(tmp_path, capsys):
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"model": {**LLAMA32_CONFIG, "rope_scaling": {"rope_type": "yarn", "factor": 4.0}}}))
    code, _out, err = invoke(capsys, ["estimate", "--workload", str(bad), "--nodes", "10"])
    assert code == 2
    assert "rope_scaling type 'yarn' is not supported" in err and len(err.strip().splitlines()) == 1


def test_existing_workload_hashes_are_unchanged():
    """The new optional model fields stay out of the hash while unset (the committed baseline's tiny hash)."""
    assert preset("tiny").content_hash() == "ecc82d40482fbd46"
    assert preset("small").content_hash() == "871598ac28fe2125"


def test_presets_have_the_real_shapes():
    g = preset("gemma-2-2b").model
    assert (
        g.num_hidden_layers,
        g.hidden_size,
        g.head_dim,
        g.num_attention_heads,
        g.num_key_value_heads,
        g.vocab_size,
        g.final_logit_softcapping,
    ) == (26, 2304, 256, 8, 4, 256000, 30.0)
    ll = preset("llama-3.2-1b").model
    assert (ll.num_hidden_layers, ll.hidden_size, ll.tie_word_embeddings, ll.rope_scaling["factor"]) == (
        16,
        2048,
        True,
        32.0,
    )
    g3 = preset("gemma-3-1b").model
    assert (g3.num_hidden_layers, g3.hidden_size, g3.num_key_value_heads, g3.sliding_window) == (26, 1152, 1, 512)


# family workload -> a change of one family field that must change the HF logits (so that TL agreeing
# with HF shows TL honours that field)
FAMILY_FIELDS = {
    "llama32": {"rope_scaling": None},
    "gemma2": {"attn_logit_softcapping": 0.0, "final_logit_softcapping": 0.0, "sliding_window": 4096},
    "gemma3": {"rope_local_base_freq": 1000000.0},
}


@pytest.mark.parametrize("name", list(FAMILY_FIELDS))
def test_hf_and_transformer_lens_logits_agree(name):
    from attrbench.backends.reference import build_replacement_model, reference_path

    spec = load_workload_file(WORKLOADS / f"{name}.json")
    built = build_workload(spec)
    model = build_replacement_model(built, "cpu", torch.float32)
    tokens = built.token_ids[None]
    with torch.no_grad():
        hf, tl = built.hf_model(tokens).logits, model(tokens)
    assert (hf - tl).abs().max().item() < 1e-5, name
    other = _logits(replace(spec, model=replace(spec.model, **FAMILY_FIELDS[name])))
    assert (hf - other).abs().max().item() > 1e-3, name
    path = reference_path(model)
    hooks = "mlp.hook_in -> mlp.hook_out" if name == "llama32" else "ln2.hook_normalized -> hook_mlp_out"
    assert hooks in path and ("per attention type" in path) == (name == "gemma3"), path


@pytest.mark.parametrize("name", ["llama32-clt", "gemma2-clt", "gemma3-clt"])
def test_cross_layer_transcoders_read_the_familys_hook_resid_mid(name):
    """The seeded CLT is calibrated on TransformerLens' ``hook_resid_mid`` of the family (for Gemma the input of
    pre_feedforward_layernorm, not of post_attention_layernorm), so it has about ``target_l0`` active features
    per position; the reference's replacement model with the CLT still gives the HF logits."""
    from attrbench.backends.exact.linearised import linearise, prepare_weights
    from attrbench.backends.reference import build_replacement_model, reference_path
    from attrbench.workload.seeded_transcoders import resid_mids

    built = build_workload(load_workload_file(WORKLOADS / f"{name}.json"))
    model = build_replacement_model(built, "cpu", torch.float32)
    tokens = built.token_ids[None]
    with torch.no_grad():
        tl, cache = model.run_with_cache(tokens, names_filter=lambda n: n.endswith("hook_resid_mid"))
        hf = built.hf_model(tokens).logits
    assert (hf - tl).abs().max().item() < 1e-5, name
    assert "hook_resid_mid -> hook_mlp_out" in reference_path(model)
    for layer, mid in enumerate(resid_mids(built.hf_model, built.token_ids)):
        assert (cache[f"blocks.{layer}.hook_resid_mid"][0] - mid).abs().max().item() < 1e-4, (name, layer)
    n_active = linearise(prepare_weights(built, "cpu", torch.float32), built.token_ids).n_active
    assert abs(n_active - built.spec.estimated_active_features) <= 0.1 * built.spec.estimated_active_features


@pytest.mark.parametrize(
    "model_type,kind,hooks,ok",
    [
        ("gemma2", "transcoder_set", ("ln2.hook_normalized", "hook_mlp_out"), True),
        ("gemma3", "cross_layer_transcoder", ("hook_resid_mid", "hook_mlp_out"), True),
        # Gemma's mlp.hook_in is after the (1 + w) gain and its mlp.hook_out before post_feedforward_layernorm
        ("gemma2", "transcoder_set", ("mlp.hook_in", "mlp.hook_out"), False),
        ("gemma2", "cross_layer_transcoder", ("hook_resid_mid", "mlp.hook_out"), False),
        ("gemma3", "transcoder_set", ("mlp.hook_in", "hook_mlp_out"), False),
        ("llama", "cross_layer_transcoder", ("hook_resid_mid", "mlp.hook_out"), True),
        ("llama", "transcoder_set", ("mlp.hook_in", "hook_mlp_out"), True),
        # Llama's ln2.hook_normalized is before the gain that the Llama layout's transcoder input includes
        ("llama", "transcoder_set", ("ln2.hook_normalized", "hook_mlp_out"), False),
    ],
)
def test_transcoder_hooks_must_be_where_the_family_reads_and_writes(model_type, kind, hooks, ok):
    from attrbench.workload.transcoder_files import TranscoderSource, check_hooks_for_family

    src = TranscoderSource(kind, hooks[0], hooks[1], "/t", config_file="/t/config.yaml")
    if ok:
        check_hooks_for_family(src, model_type)
    else:
        with pytest.raises(UsageError, match=f"not supported for .* transcoders on {model_type}") as info:
            check_hooks_for_family(src, model_type)
        assert "\n" not in str(info.value) and "feature_input_hook:" in str(info.value)


@pytest.mark.parametrize("name", ["gemma2-clt", "gemma3"])
def test_gemma_from_saved_folders_gives_circuit_tracers_graph(name, tmp_path):
    """A Gemma model folder and transcoders written in circuit-tracer's layout (config.yaml with the family's
    hooks), read back as ``--model DIR --transcoders DIR``: the exact backend's graph is circuit-tracer's."""
    from attrbench.api import AttributeSettings
    from attrbench.graph.parity import compare
    from attrbench.plugin_manager import get_backends
    from attrbench.workload.build import save_workload
    from attrbench.workload.spec import local_spec

    save_workload(build_workload(load_workload_file(WORKLOADS / f"{name}.json")), tmp_path / "entry")
    built = build_workload(
        local_spec(
            tmp_path / "entry" / "model",
            tmp_path / "entry" / "transcoders",
            "t1 t5 t9 t17 t33 t2 t8 t100 t41 t77 t90 t12",
        )
    )
    assert built.transcoder_kind == ("clt" if name.endswith("-clt") else "plt")
    graphs = {}
    for backend_name in ("reference", "gqa-shared"):
        backend = get_backends()[backend_name]
        graphs[backend_name] = backend.attribute(
            backend.prepare(built, "cpu", torch.float32), AttributeSettings(max_feature_nodes=200, batch_size=64)
        )
    parity = compare(graphs["gqa-shared"], graphs["reference"], "reference")
    assert parity["selected_jaccard"] == 1.0 and parity["rel_frobenius"] <= 1e-4, parity
    assert graphs["reference"].active_features.shape[0] > 200
