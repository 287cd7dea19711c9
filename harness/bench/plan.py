"""The cells of a run and their order.

A cell is one (backend, node count, repeat). For each node count and repeat the yardsticks run first, in
their declared rank (:attr:`attrbench.api.Backend.yardstick`), then the other backends in the order given,
so that every cell can be compared with a yardstick graph of the same node count and repeat.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from attrbench.api import Backend


@dataclass(frozen=True)
class Cell:
    """One (backend, nodes, repeat) of a run."""

    backend: str
    nodes: int
    repeat: int

    @property
    def key(self) -> tuple[str, int, int]:
        return (self.backend, self.nodes, self.repeat)

    def label(self) -> str:
        return f"{self.backend} nodes={self.nodes} repeat={self.repeat}"


def yardsticks_of(names: list[str], backends: Mapping[str, Backend]) -> list[str]:
    """The selected backends that declare themselves yardsticks, best first."""
    ranked = [(backends[n].yardstick, n) for n in names if backends[n].yardstick is not None]
    return [n for _, n in sorted(ranked, key=lambda rn: rn[0])]


def ordered_backends(names: list[str], backends: Mapping[str, Backend]) -> list[str]:
    """Yardsticks first (by rank), then the others in the given order; duplicates dropped."""
    return list(dict.fromkeys(yardsticks_of(names, backends) + list(names)))


def plan_cells(names: list[str], nodes: list[int], repeats: int, backends: Mapping[str, Backend]) -> list[Cell]:
    """Every cell in run order: node counts, then repeats, then backends (yardsticks first)."""
    order = ordered_backends(names, backends)
    return [Cell(b, n, r) for n in nodes for r in range(repeats) for b in order]
