"""Which graph a cell is compared with, and the comparison.

Every cell of a (nodes, repeat) group is compared with the best yardstick of that group that completed
(:attr:`attrbench.api.Backend.yardstick`: circuit-tracer first, the autodiff-free engine where circuit-tracer
did not complete). A yardstick is never compared with the yardsticks after it. Yardstick graphs stay on disk
until their group is done; a yardstick kept from ``--resume`` has no graph on disk, so it is re-run once,
silently, just for its graph.

In a bf16 run the group's float32 truth cell (:func:`attrbench.bench.plan.truth_cell`) runs first; every
other graph is also compared with it (``truth_parity``), and :meth:`GroupYardsticks.judge` gives each cell its
verdict (:func:`attrbench.graph.verdicts.judge`).
"""

from __future__ import annotations

import shutil
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from attrbench.api import AttributionResult, Backend
from attrbench.bench.plan import Cell, yardsticks_of
from attrbench.graph.parity import compare, prune_parity_skipped, pruned_nodes
from attrbench.graph.store import drop_cached_pages, load_result
from attrbench.graph.verdicts import TRUTH, YARDSTICK, judge
from attrbench.workload.spec import WorkloadSpec

#: re-runs a yardstick cell for its graph; returns the graph folder or None
Rerun = Callable[[Cell], Path | None]


class GroupYardsticks:
    """The yardstick graphs and statuses of one (nodes, repeat) group; removes its graphs when closed."""

    def __init__(
        self,
        names: list[str],
        backends: Mapping[str, Backend],
        spec: WorkloadSpec,
        rerun: Rerun,
        truth: Cell | None = None,
        dtype: str | None = None,
    ):
        self.ranked = yardsticks_of(names, backends)
        self.spec = spec
        self.rerun = rerun
        self.truth = truth
        self.dtype = dtype
        self.status: dict[str, str] = {}
        self.graphs: dict[str, Path] = {}
        #: each cell's figures against the fp32 truth (bf16 runs), by backend label
        self.truth_parity: dict[str, dict[str, Any]] = {}
        #: each yardstick graph's pruned nodes, pruned once for all the cells compared with it
        self.pruned: dict[Path, set[tuple] | None] = {}

    def __enter__(self) -> GroupYardsticks:
        return self

    def __exit__(self, *exc: object) -> None:
        for folder in self.graphs.values():
            shutil.rmtree(folder, ignore_errors=True)

    def keep(self, cell: Cell, kept: dict[str, Any]) -> None:
        """A cell kept from ``--resume``: its distance from the truth still counts for the others' verdicts."""
        if kept.get("truth_parity"):
            self.truth_parity[cell.backend] = kept["truth_parity"]

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
        return (
            f"{best} did not complete at {cell.where()} "
            f"({self.status.get(best, 'not run')}); parity there is against {against}"
        )

    def compare(self, cell: Cell, graph_dir: Path) -> dict[str, Any]:
        """Parity of ``cell``'s graph against its yardstick: ``{"parity": ...}`` or ``{"parity_note": ...}``.

        A yardstick's own graph is kept for the cells after it; any other graph is removed.
        """
        out: dict[str, Any] = {}
        if self.truth is not None and cell.backend == self.truth.backend:
            self.graphs[cell.backend] = graph_dir
            return out
        out.update(self._compare_with_truth(cell, graph_dir))
        against = self.pick(cell.backend)
        if against is not None:
            yard_dir = self.graphs.get(against) or self._recreate(cell, against)
            if yard_dir is None:
                out["parity_note"] = f"the {against} graph could not be re-created for parity"
            else:
                try:
                    out["parity"] = self._compare(load_result(graph_dir), yard_dir, against)
                except Exception as exc:  # parity must never lose a measured cell
                    out["parity_note"] = f"parity failed: {type(exc).__name__}: {exc}"
        elif cell.backend not in self.ranked:
            out["parity_note"] = "no yardstick completed for this node count and repeat"
        if cell.backend in self.ranked:
            self.graphs[cell.backend] = graph_dir
        else:
            shutil.rmtree(graph_dir, ignore_errors=True)
        for kept in set(self.graphs.values()):  # read for this comparison; the next cell starts without them
            drop_cached_pages(kept)
        return out

    def _compare_with_truth(self, cell: Cell, graph_dir: Path) -> dict[str, Any]:
        """``{"truth_parity": ...}`` against the group's fp32 truth, where there is one; else {}."""
        truth = self.truth
        if truth is None or self.status.get(truth.backend) != "ok":
            return {}
        truth_dir = self.graphs.get(truth.backend) or self._recreate(cell, truth.backend, truth)
        if truth_dir is None:
            return {}
        try:
            figures = self._compare(load_result(graph_dir), truth_dir, truth.backend)
        except Exception:  # parity must never lose a measured cell; the verdict falls back to the yardstick
            return {}
        self.truth_parity[cell.backend] = figures
        return {"truth_parity": figures}

    def _compare(self, result: AttributionResult, yard_dir: Path, against: str) -> dict[str, Any]:
        """:func:`attrbench.graph.parity.compare`, with the yardstick graph pruned once for every cell."""
        yardstick = load_result(yard_dir)
        if yard_dir not in self.pruned and not prune_parity_skipped(result, yardstick):
            try:
                self.pruned[yard_dir] = pruned_nodes(yardstick, self.spec)
            except (RuntimeError, ValueError):
                self.pruned[yard_dir] = None  # compare() tries again and reports no Jaccard
        kept = self.pruned.get(yard_dir)
        return compare(result, yardstick, against, workload=self.spec, yardstick_pruned=kept)

    def truth_note(self, cell: Cell) -> str | None:
        """What to say when a bf16 group has no fp32 truth to judge by (its cell did not complete)."""
        truth = self.truth
        if truth is None or cell.backend == truth.backend or self.status.get(truth.backend) == "ok":
            return None  # the truth cell itself is asked before its own status is recorded
        return (
            f"the float32 truth {truth.backend} did not complete at {cell.where()} "
            f"({self.status.get(truth.backend, 'not run')}); exact bf16 backends there are judged against "
            f"the bf16 yardstick instead (Jaccard 1, relative error within the bf16 tolerance)"
        )

    def judge(self, cell: Cell, record: Mapping[str, Any]) -> dict[str, Any]:
        """``{"verdict", "verdict_note"}`` of a recorded cell (:func:`attrbench.graph.verdicts.judge`)."""
        role = None
        if self.truth is not None and cell.backend == self.truth.backend:
            role = TRUTH
        elif cell.backend in self.ranked and self.pick(cell.backend) is None:
            role = YARDSTICK
        against = (record.get("parity") or {}).get("against") or (self.ranked[0] if self.ranked else None)
        verdict, why = judge(record, self.dtype, role=role, reference_truth=self.truth_parity.get(against or ""))
        return {"verdict": verdict, "verdict_note": why}

    def _recreate(self, cell: Cell, against: str, truth: Cell | None = None) -> Path | None:
        folder = self.rerun(truth or Cell(against, cell.nodes, cell.repeat, n_tokens=cell.n_tokens, sweep=cell.sweep))
        if folder is not None:
            self.graphs[against] = folder
        return folder


def no_yardstick_advice(cell: Cell, backends: Mapping[str, Backend]) -> str:
    """One line saying which backend to add when ``cell``'s graph had nothing to be compared with."""
    names = yardsticks_of(list(backends), backends)
    if names:
        add = f"add {names[0]} to --backends" + (f" (or {', '.join(names[1:])})" if names[1:] else "")
    else:
        add = "register a yardstick backend"
    return f"no yardstick: the graph of {cell.backend} was compared with nothing; {add} to check parity"
