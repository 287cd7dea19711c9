"""The FLOP floor (``info["flop_floor"]``, the denominator of every reported FLOP fraction) is a true floor.

gqa-shared computes every multiply-add of its rows in a GEMM (matmul, bmm, einsum over GEMMs), so the
profiler's FLOP count of one attribution bounds the floor from above; and the floor must not be a loose
bound either, or the fractions the reports print would flatter nothing but the formula.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch.profiler import profile

from attrbench.api import AttributeSettings
from attrbench.bench.summary import flop_fraction_of
from attrbench.fp32_gemm import onednn_probe
from attrbench.plugin_manager import get_backends
from attrbench.plugins.trackers import GemmRateTracker
from attrbench.workload.build import build_workload
from attrbench.workload.spec import load_workload_file, preset

WORKLOADS = Path(__file__).resolve().parents[2] / "workloads"


@pytest.mark.parametrize("workload", ["tiny", "gqa8"])
def test_floor_is_below_the_flops_gqa_shared_does_and_close_to_them(workload):
    spec = preset("tiny") if workload == "tiny" else load_workload_file(WORKLOADS / f"{workload}.json")
    backend = get_backends()["gqa-shared"]
    prepared = backend.prepare(build_workload(spec), "cpu", torch.float32)
    settings = AttributeSettings(max_feature_nodes=200, batch_size=64)
    onednn_probe()  # once per process: its GEMMs are not the attribution's (run alone, the test counted them)
    with profile(with_flops=True) as prof:
        result = backend.attribute(prepared, settings)
    done = sum(e.flops or 0 for e in prof.key_averages())
    floor = result.info["flop_floor"]
    assert 0 < floor <= done
    # 0.77-0.81 here; the floor that left out the attention at each feature's own layer gave 0.65-0.70
    assert floor >= 0.72 * done, f"floor {floor:.3g} is loose: gqa-shared did {done:.3g} FLOPs"


def test_a_bfloat16_cell_is_held_to_the_bfloat16_rate_measured_beside_float32():
    """approximate-pruned's VJPs run in bfloat16 (``info.vjp_dtype``); its FLOP fraction divides by the
    bfloat16 GEMM rate the tracker measured, not by float32's, which bfloat16 GEMMs outrun (fractions
    above 1 that said nothing)."""
    tracker = GemmRateTracker("cpu")
    tracker.start()
    measured = tracker.results()
    rates = measured["gemm_gflops_by_dtype"]
    assert set(rates) == {"float32", "bfloat16"} and all(r > 0 for r in rates.values())
    assert measured["gemm_gflops"] == rates["float32"]

    backend = get_backends()["approximate-pruned"]
    prepared = backend.prepare(build_workload(preset("tiny")), "cpu", torch.float32)
    settings = AttributeSettings(max_feature_nodes=100, batch_size=64, options={"approx_dtype": "bfloat16"})
    result = backend.attribute(prepared, settings)
    assert result.info["vjp_dtype"] == "bfloat16"
    cell = {"status": "ok", "wall_s": 2.0, "info": {**result.info, "measurement": measured}}
    floor = result.info["flop_floor"]
    assert flop_fraction_of(cell, floor) == pytest.approx(floor / (2.0 * rates["bfloat16"] * 1e9))
    exact = get_backends()["gqa-shared"].attribute(prepared, settings)
    assert exact.info["vjp_dtype"] == "float32"
    cell["info"] = {**exact.info, "measurement": measured}
    assert flop_fraction_of(cell, floor) == pytest.approx(floor / (2.0 * rates["float32"] * 1e9))
    # results written before the per-dtype rates keep their one rate
    cell["info"] = {"vjp_dtype": "bfloat16", "measurement": {"gemm_gflops": 100.0}}
    assert flop_fraction_of(cell, floor) == pytest.approx(floor / (2.0 * 100.0 * 1e9))
