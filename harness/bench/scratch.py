"""Scratch folders for the graphs of a run.

Graphs are written next to the results file (or under ``$ATTRBENCH_GRAPH_DIR``) in a folder of the run's
own, ``.attrbench-graphs-XXXX``, removed when the run ends. Inside it every cell gets a generated name, so
no backend label or option ever becomes part of a path.
"""

from __future__ import annotations

import itertools
import os
import shutil
import tempfile
from pathlib import Path

GRAPH_DIR_ENV = "ATTRBENCH_GRAPH_DIR"
PREFIX = ".attrbench-graphs-"


class ScratchFolder:
    """The run's graph folder, created on first use."""

    def __init__(self, output: Path | None):
        base = os.environ.get(GRAPH_DIR_ENV)
        if base is None and output is not None:
            base = str(Path(output).resolve().parent)
        self.base = base
        self.root: Path | None = None
        self._ids = itertools.count()

    def new_graph_dir(self) -> Path:
        """A fresh, generated folder name for one cell's graph (not yet created)."""
        if self.root is None:
            if self.base:
                Path(self.base).mkdir(parents=True, exist_ok=True)
            self.root = Path(tempfile.mkdtemp(prefix=PREFIX, dir=self.base))
        return self.root / f"cell-{next(self._ids)}"

    def remove(self) -> None:
        if self.root is not None:
            shutil.rmtree(self.root, ignore_errors=True)
