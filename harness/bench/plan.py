"""The cells of a run and their order.

A cell is one (backend, prompt length, node count, repeat). A run that sweeps prompt lengths (``--n-tokens
64,256,...``) gives each length its own workload (the same model and transcoder weights, the prompt extended);
the lengths run in ascending order, each a block of cells. For each length, node count and repeat the
yardsticks run first, in
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
    """One (backend, prompt length, nodes, repeat) of a run."""

    #: the label in the results (a registered name, a ``NAME@KEY=VALUE`` variant, or ``NAME@fp32`` for a truth)
    backend: str
    nodes: int
    repeat: int
    #: for a truth cell: the registered backend it runs, in :data:`TRUTH_DTYPE`
    truth_of: str | None = None
    #: the prompt length of the cell's workload (None: the workload's own, in plans made without lengths)
    n_tokens: int | None = None
    #: the run sweeps prompt lengths: labels name the length
    sweep: bool = False

    @property
    def runs(self) -> str:
        """The registered backend this cell runs."""
        return self.truth_of or self.backend

    @property
    def key(self) -> tuple[str, int | None, int, int]:
        """(backend, n_tokens, nodes, repeat): what identifies the cell in the results."""
        return (self.backend, self.n_tokens, self.nodes, self.repeat)

    @property
    def group(self) -> tuple[int | None, int, int]:
        """(n_tokens, nodes, repeat): the cells compared with one yardstick."""
        return (self.n_tokens, self.nodes, self.repeat)

    def where(self) -> str:
        """``nodes=N repeat=R``, preceded by ``n_tokens=T`` in a run over several prompt lengths."""
        tokens = f"n_tokens={self.n_tokens} " if self.sweep else ""
        return f"{tokens}nodes={self.nodes} repeat={self.repeat}"

    def label(self) -> str:
        return f"{self.backend} {self.where()}"


def yardsticks_of(names: list[str], backends: Mapping[str, Backend]) -> list[str]:
    """The selected backends that declare themselves yardsticks, best first."""
    ranked = [(rank, n) for n in names if (rank := backends[n].yardstick) is not None]
    return [n for _, n in sorted(ranked, key=lambda rn: rn[0])]


def ordered_backends(names: list[str], backends: Mapping[str, Backend]) -> list[str]:
    """Yardsticks first (by rank), then the others in the given order; duplicates dropped."""
    return list(dict.fromkeys(yardsticks_of(names, backends) + list(names)))


def truth_cell(
    names: list[str],
    backends: Mapping[str, Backend],
    dtype: str,
    nodes: int,
    repeat: int,
    n_tokens: int | None = None,
    sweep: bool = False,
) -> Cell | None:
    """The float32 truth cell of a group in a reduced-precision run (the best selected yardstick), or None."""
    ranked = yardsticks_of(names, backends)
    if dtype == TRUTH_DTYPE or not ranked:
        return None
    return Cell(ranked[0] + TRUTH_SUFFIX, nodes, repeat, truth_of=ranked[0], n_tokens=n_tokens, sweep=sweep)


def plan_cells(
    names: list[str],
    nodes: list[int],
    repeats: int,
    backends: Mapping[str, Backend],
    dtype: str = TRUTH_DTYPE,
    lengths: list[int] | None = None,
) -> list[Cell]:
    """Every cell in run order: prompt lengths (ascending), then node counts, then repeats, then the truth
    (bf16 runs), then backends (yardsticks first). ``lengths`` None: one block with ``n_tokens`` None."""
    order = ordered_backends(names, backends)
    blocks: list[int | None] = list(sorted(set(lengths))) if lengths else [None]
    sweep = len(blocks) > 1
    cells = []
    for t in blocks:
        for n in nodes:
            for r in range(repeats):
                truth = truth_cell(names, backends, dtype, n, r, t, sweep)
                cells += ([truth] if truth else []) + [Cell(b, n, r, n_tokens=t, sweep=sweep) for b in order]
    return cells
