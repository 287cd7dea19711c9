"""Scratch folders for the graphs of a run.

Graphs are written under ``--scratch`` (or ``$ATTRBENCH_GRAPH_DIR``, else next to the results file) in a folder of the run's
own, ``.attrbench-graphs-XXXX``, removed when the run ends. Inside it every cell gets a generated name, so
no backend label or option ever becomes part of a path.
"""

from __future__ import annotations

import itertools
import os
import shutil
import tempfile
import threading
from pathlib import Path

GRAPH_DIR_ENV = "ATTRBENCH_GRAPH_DIR"
PREFIX = ".attrbench-graphs-"


class ScratchFolder:
    """The run's graph folder, created on first use."""

    def __init__(self, output: Path | None, base_dir: Path | None = None):
        base = str(base_dir) if base_dir is not None else os.environ.get(GRAPH_DIR_ENV)
        if base is None and output is not None:
            base = str(Path(output).resolve().parent)
        self.base = base
        self.root: Path | None = None
        self._ids = itertools.count()
        self._lock = threading.Lock()  # groups may ask for folders from several threads

    def new_graph_dir(self) -> Path:
        """A fresh, generated folder name for one cell's graph (not yet created)."""
        with self._lock:
            if self.root is None:
                if self.base:
                    Path(self.base).mkdir(parents=True, exist_ok=True)
                self.root = Path(tempfile.mkdtemp(prefix=PREFIX, dir=self.base))
            return self.root / f"cell-{next(self._ids)}"

    def remove(self) -> None:
        if self.root is not None:
            shutil.rmtree(self.root, ignore_errors=True)
