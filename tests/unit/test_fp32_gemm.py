"""The float32 GEMM route: probed exact before use, restored after, chosen per option."""

from __future__ import annotations

import pytest
import torch

from attrbench import fp32_gemm
from attrbench.errors import UsageError
from attrbench.fp32_gemm import (
    EXACT_REL_ERROR,
    ONEDNN_MIN_BATCH,
    choose_route,
    fp32_gemms,
    onednn_probe,
    onednn_route_active,
    probe_error,
)


def test_probe_error_tells_float32_from_bfloat16_rounded_inputs():
    def rounded(f):
        return lambda a, b: f(a.bfloat16().float(), b.bfloat16().float())

    assert probe_error(torch.mm, torch.bmm) < EXACT_REL_ERROR / 10
    assert probe_error(rounded(torch.mm), torch.bmm) > EXACT_REL_ERROR * 100
    assert probe_error(torch.mm, rounded(torch.bmm)) > EXACT_REL_ERROR * 100


def test_route_is_restored_even_after_an_error():
    knob = torch.backends.mkldnn.matmul
    before = knob.fp32_precision
    with pytest.raises(RuntimeError), fp32_gemms("onednn"):
        assert onednn_route_active()
        raise RuntimeError("boom")
    assert knob.fp32_precision == before and not onednn_route_active()
    with fp32_gemms("blas"):
        assert not onednn_route_active()


def test_choose_route_follows_the_option_the_batch_and_the_probe(monkeypatch):
    def route(requested, device="cpu", batch=ONEDNN_MIN_BATCH):
        return choose_route(requested, device, batch)

    with pytest.raises(UsageError, match="fp32_gemm must be"):
        route("fast")
    assert route("blas") == "blas"
    assert route("auto", "cuda") == "blas" and route("onednn", "cuda") == "blas"
    probe = onednn_probe()
    assert route("auto") == ("onednn" if probe.pays else "blas")
    monkeypatch.setattr(fp32_gemm, "onednn_probe", lambda: fp32_gemm.OnednnProbe(True, True, 2.0))
    assert route("auto") == "onednn"
    assert route("auto", batch=ONEDNN_MIN_BATCH - 1) == "blas"  # small batches: a kernel per shape
    assert route("onednn", batch=1) == "onednn"
    monkeypatch.setattr(fp32_gemm, "onednn_probe", lambda: fp32_gemm.OnednnProbe(True, True, 1.1))
    assert route("auto") == "blas" and route("onednn") == "onednn"  # not faster here
    # a machine where oneDNN would round the inputs to bfloat16: never taken, refused when asked for
    monkeypatch.setattr(fp32_gemm, "onednn_probe", lambda: fp32_gemm.OnednnProbe(True, False, 3.0))
    assert route("auto") == "blas"
    with pytest.raises(UsageError, match="not float32-exact"):
        route("onednn")
