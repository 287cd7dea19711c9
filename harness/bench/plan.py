"""The cells of a run and their order.

A cell is one (backend, node count, repeat). For each node count and repeat the yardsticks run first, in
their declared rank (:attr:`attrbench.api.Backend.yardstick`), then the other backends in the order given,
so that every cell can be compared with a yardstick graph of the same node count and repeat.

In a run whose dtype is not float32 (bf16), the best selected yardstick also runs in float32 first, as the
*truth* every graph of the group is compared with (:mod:`attrbench.graph.verdicts`): its cells are labelled
``NAME@fp32`` (e.g. ``reference@fp32``).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from attrbench.api import Backend

#: the dtype of the truth cells, and the suffix of their labels
TRUTH_DTYPE = "float32"
TRUTH_SUFFIX = "@fp32"


@dataclass(frozen=True)
class Cell:
    """One (backend, nodes, repeat) of a run."""

    #: the label in the results (a registered name, a ``NAME@KEY=VALUE`` variant, or ``NAME@fp32`` for a truth)
    backend: str
    nodes: int
    repeat: int
    #: for a truth cell: the registered backend it runs, in :data:`TRUTH_DTYPE`
    truth_of: str | None = None

    @property
    def runs(self) -> str:
        """The registered backend this cell runs."""
        return self.truth_of or self.backend

    @property
    def key(self) -> tuple[str, int, int]:
        return (self.backend, self.nodes, self.repeat)

    def label(self) -> str:
        return f"{self.backend} nodes={self.nodes} repeat={self.repeat}"


def yardsticks_of(names: list[str], backends: Mapping[str, Backend]) -> list[str]:
    """The selected backends that declare themselves yardsticks, best first."""
    ranked = [(rank, n) for n in names if (rank := backends[n].yardstick) is not None]
    return [n for _, n in sorted(ranked, key=lambda rn: rn[0])]


def ordered_backends(names: list[str], backends: Mapping[str, Backend]) -> list[str]:
    """Yardsticks first (by rank), then the others in the given order; duplicates dropped."""
    return list(dict.fromkeys(yardsticks_of(names, backends) + list(names)))


def truth_cell(names: list[str], backends: Mapping[str, Backend], dtype: str, nodes: int, repeat: int) -> Cell | None:
    """The float32 truth cell of a group in a reduced-precision run (the best selected yardstick), or None."""
    ranked = yardsticks_of(names, backends)
    if dtype == TRUTH_DTYPE or not ranked:
        return None
    return Cell(ranked[0] + TRUTH_SUFFIX, nodes, repeat, truth_of=ranked[0])


def plan_cells(
    names: list[str], nodes: list[int], repeats: int, backends: Mapping[str, Backend], dtype: str = TRUTH_DTYPE
) -> list[Cell]:
    """Every cell in run order: node counts, then repeats, then the truth (bf16 runs), then backends
    (yardsticks first)."""
    order = ordered_backends(names, backends)
    cells = []
    for n in nodes:
        for r in range(repeats):
            truth = truth_cell(names, backends, dtype, n, r)
            cells += ([truth] if truth else []) + [Cell(b, n, r) for b in order]
    return cells
