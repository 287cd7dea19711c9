"""An example attrbench plugin: one exact backend on the engine, one approximate wrapper, one reporter."""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any

import torch

from attrbench.api import AttributeSettings, AttributionResult, Backend, Reporter
from attrbench.backends.exact.engine import ExactBackend, TargetBatch
from attrbench.hookspecs import hookimpl


class ExampleExactBackend(ExactBackend):
    """circuit-tracer's loop on the engine; backward passes stop at the batch's last target position."""

    name = "example-exact"
    description = "example plugin: the engine with backward passes only over positions <= the batch's targets"
    devices = ("cpu", "cuda")
    dtypes = ("float32", "bfloat16")

    def cost_model(self) -> str | None:
        return "vjp-causal"

    def position_limit(self, batch: TargetBatch, n_pos: int) -> int:
        # attention is causal: a target at position p has a zero gradient at every later position
        return int(batch.positions.max()) + 1


@dataclass
class _Wrapped:
    base: Backend
    prepared: Any


class ExampleApproxBackend(Backend):
    """Wraps a registered backend (:attr:`wraps`) and drops the small edges of its graph: approximate."""

    name = "example-approx"
    exact = False
    description = "example plugin: gqa-shared's graph with edges below drop_below x their row's max dropped"
    option_defaults = {"drop_below": 1e-3}
    wraps = "gqa-shared"

    def prepare(self, workload, device, dtype) -> _Wrapped:
        from attrbench.plugin_manager import get_backends

        base = get_backends()[self.wraps]
        return _Wrapped(base, base.prepare(workload, device, dtype))

    def attribute(self, prepared: _Wrapped, settings: AttributeSettings) -> AttributionResult:
        # settings.options holds our own keys over our defaults; the wrapped backend gets its own defaults
        base_settings = replace(settings, options=dict(prepared.base.option_defaults))
        result = prepared.base.attribute(prepared.prepared, base_settings)
        adj = torch.as_tensor(result.adjacency_matrix).clone()  # may be a read-only memory map: copy
        row_max = adj.abs().amax(dim=1, keepdim=True)
        adj[adj.abs() < float(settings.options["drop_below"]) * row_max] = 0
        result.adjacency_matrix, result.adjacency_file = adj, None
        result.info["dropped_fraction"] = float((adj == 0).float().mean())
        return result


class ExampleSummaryReporter(Reporter):
    """One line per cell: backend, nodes, status, parity verdict and wall time."""

    format = "example-summary"
    description = "example plugin: one line per cell with its parity verdict"

    def render(self, results: list[dict[str, Any]]) -> str:
        lines = []
        for doc in results:
            for cell in doc["cells"]:
                wall = f"{cell['wall_s']:.3f} s" if cell.get("wall_s") is not None else "-"
                lines.append(
                    f"{cell['backend']} nodes={cell['nodes']} repeat={cell['repeat']}: {cell['status']}, "
                    f"parity {cell.get('verdict') or 'not judged (older results file)'}, {wall}"
                )
        return "\n".join(lines) + "\n"


@hookimpl
def register_backends(register):
    register(ExampleExactBackend())
    register(ExampleApproxBackend())


@hookimpl
def register_reporters(register):
    register(ExampleSummaryReporter())
