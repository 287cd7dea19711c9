"""Which graph a cell is compared with, and the comparison.

Every cell of a (nodes, repeat) group is compared with the best yardstick of that group that completed
(:attr:`attrbench.api.Backend.yardstick`: circuit-tracer first, the autodiff-free engine where circuit-tracer
did not complete). A yardstick is never compared with the yardsticks after it. Yardstick graphs stay on disk
until their group is done; a yardstick kept from ``--resume`` has no graph on disk, so it is re-run once,
silently, just for its graph.
"""

from __future__ import annotations

import shutil
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from attrbench.api import Backend
from attrbench.bench.plan import Cell, yardsticks_of
from attrbench.graph.parity import compare
from attrbench.graph.store import load_result
from attrbench.workload.spec import WorkloadSpec

#: re-runs a yardstick cell for its graph; returns the graph folder or None
Rerun = Callable[[Cell], Path | None]


class GroupYardsticks:
    """The yardstick graphs and statuses of one (nodes, repeat) group; removes its graphs when closed."""

    def __init__(self, names: list[str], backends: Mapping[str, Backend], spec: WorkloadSpec, rerun: Rerun):
        self.ranked = yardsticks_of(names, backends)
        self.spec = spec
        self.rerun = rerun
        self.status: dict[str, str] = {}
        self.graphs: dict[str, Path] = {}

    def __enter__(self) -> GroupYardsticks:
        return self

    def __exit__(self, *exc: object) -> None:
        for folder in self.graphs.values():
            shutil.rmtree(folder, ignore_errors=True)

    def record(self, backend: str, status: str) -> None:
        self.status[backend] = status

    def pick(self, backend: str) -> str | None:
        """The yardstick ``backend`` is compared with: the best ok one ranked before it, or None."""
        for y in self.ranked:
            if y == backend:
                return None
            if self.status.get(y) == "ok":
                return y
        return None

    def note(self, cell: Cell, against: str) -> str | None:
        """What to say when ``against`` is not the best yardstick of the run."""
        if not self.ranked or against == self.ranked[0]:
            return None
        best = self.ranked[0]
        return (f"{best} did not complete at nodes={cell.nodes} repeat={cell.repeat} "
                f"({self.status.get(best, 'not run')}); parity there is against {against}")

    def compare(self, cell: Cell, graph_dir: Path) -> dict[str, Any]:
        """Parity of ``cell``'s graph against its yardstick: ``{"parity": ...}`` or ``{"parity_note": ...}``.

        A yardstick's own graph is kept for the cells after it; any other graph is removed.
        """
        out: dict[str, Any] = {}
        against = self.pick(cell.backend)
        if against is not None:
            yard_dir = self.graphs.get(against) or self._recreate(cell, against)
            if yard_dir is None:
                out["parity_note"] = f"the {against} graph could not be re-created for parity"
            else:
                try:
                    out["parity"] = compare(load_result(graph_dir), load_result(yard_dir), against, workload=self.spec)
                except Exception as exc:  # parity must never lose a measured cell
                    out["parity_note"] = f"parity failed: {type(exc).__name__}: {exc}"
        elif cell.backend not in self.ranked:
            out["parity_note"] = "no yardstick completed for this node count and repeat"
        if cell.backend in self.ranked:
            self.graphs[cell.backend] = graph_dir
        else:
            shutil.rmtree(graph_dir, ignore_errors=True)
        return out

    def _recreate(self, cell: Cell, against: str) -> Path | None:
        folder = self.rerun(Cell(against, cell.nodes, cell.repeat))
        if folder is not None:
            self.graphs[against] = folder
        return folder
