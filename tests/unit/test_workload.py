"""Workload specs: determinism, validation, and agreement of the HF model with circuit-tracer's replacement model."""

from __future__ import annotations

import json
from dataclasses import replace

import pytest
import torch

from attrbench.errors import UsageError
from attrbench.workload.build import build_workload
from attrbench.workload.spec import (
    PRESETS,
    load_workload_file,
    preset,
    smallest_preset_for,
    spec_from_dict,
    with_overrides,
)


@pytest.fixture(scope="module")
def tiny_built():
    return build_workload(preset("tiny"))


def _all_bytes(built) -> list[torch.Tensor]:
    tensors = [built.token_ids] + [v for _, v in sorted(built.hf_model.state_dict().items())]
    for tc in built.transcoders:
        tensors += [t for t in (tc.W_enc, tc.W_dec, tc.b_enc, tc.b_dec, tc.threshold, tc.W_skip) if t is not None]
    return tensors


def test_same_spec_gives_the_same_bytes(tiny_built):
    again = build_workload(preset("tiny"))
    a, b = _all_bytes(tiny_built), _all_bytes(again)
    assert len(a) == len(b)
    assert all(torch.equal(x, y) for x, y in zip(a, b, strict=False))
    assert preset("tiny").content_hash() == replace(preset("tiny"), name="other").content_hash()


def test_different_seed_differs(tiny_built):
    spec = replace(preset("tiny"), seed=1)
    assert spec.content_hash() != preset("tiny").content_hash()
    other = build_workload(spec)
    assert not torch.equal(other.token_ids, tiny_built.token_ids)
    assert not torch.equal(other.transcoders[0].W_enc, tiny_built.transcoders[0].W_enc)


def test_calibrated_active_features(tiny_built):
    spec = tiny_built.spec
    assert spec.estimated_active_features == 4 * 15 * 20
    assert tiny_built.token_ids[0] == 1  # BOS


@pytest.mark.parametrize(
    "data, message",
    [
        ([], "top level must be a JSON object"),
        ({"model": {}, "bogus": 1}, "unknown top-level keys"),
        ({"transcoders": {}}, "missing the 'model' section"),
        ({"model": {"model_type": "gpt2"}}, "model_type 'gpt2' is not supported"),
        ({"model": {"hidden_size": -1}}, "model.hidden_size must be a positive integer"),
        ({"model": {"num_attention_heads": 8, "num_key_value_heads": 3}}, "must be divisible"),
        ({"model": {}, "transcoders": {"target_l0": 5000, "d_transcoder": 64}}, "exceeds d_transcoder"),
        ({"model": {}, "prompt": {"n_tokens": 1}}, "at least 2"),
        ({"model": {}, "prompt": {"token_ids": [1, 99999]}}, "token_ids must be integers"),
        ({"model": {}, "seed": -1}, "seed must be a non-negative integer"),
    ],
)
def test_validation_errors(data, message):
    with pytest.raises(UsageError, match=message):
        spec_from_dict(data, "w.json")


def test_workload_file(tmp_path):
    good = tmp_path / "w.json"
    good.write_text(
        json.dumps(
            {
                "model": {"model_type": "llama", "num_hidden_layers": 2, "architectures": ["x"]},
                "prompt": {"token_ids": [1, 5, 6, 7]},
                "seed": 3,
            }
        )
    )
    spec = load_workload_file(good)
    assert spec.name == "w" and spec.model.model_type == "llama" and spec.prompt.length == 4
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(UsageError, match="not valid JSON"):
        load_workload_file(bad)
    with pytest.raises(UsageError, match="does not exist"):
        load_workload_file(tmp_path / "missing.json")


def test_presets_and_overrides():
    assert smallest_preset_for(200) == "tiny"
    assert smallest_preset_for(5000) == "small"
    with pytest.raises(UsageError, match="more than any preset"):
        smallest_preset_for(10**9)
    with pytest.raises(UsageError, match="unknown preset"):
        preset("gigantic")
    spec = with_overrides(preset("tiny"), d_transcoder=512, n_tokens=8)
    assert spec.transcoders.d_transcoder == 512 and spec.prompt.length == 8
    with pytest.raises(UsageError):
        with_overrides(preset("tiny"), n_tokens=1)
    assert set(PRESETS) >= {"tiny", "small", "large", "qwen3-4b"}


def test_hf_and_replacement_model_logits_agree(tiny_built):
    from attrbench.backends.reference import build_replacement_model

    model = build_replacement_model(tiny_built, "cpu", torch.float32)
    tokens = tiny_built.token_ids[None]
    with torch.no_grad():
        hf = tiny_built.hf_model(tokens).logits
        tl = model(tokens)
    assert hf.shape == tl.shape
    assert (hf - tl).abs().max().item() < 1e-4
