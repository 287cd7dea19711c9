"""Scratch folders for the graphs of a run.

Graphs are written under ``--scratch`` (or ``$ATTRBENCH_GRAPH_DIR``, else next to the results file) in a
folder of the run's own, ``.attrbench-graphs-XXXX``, removed when the run ends. Inside it every cell gets a
generated name, so no backend label or option ever becomes part of a path. Each folder holds an
``owner.json`` (the run's pid and output file): a run killed before it could clean up leaves its folder
behind, and the next run on the same output (or any run, once the owning process is gone) removes it.
"""

from __future__ import annotations

import itertools
import json
import os
import shutil
import tempfile
import threading
from collections.abc import Callable
from pathlib import Path

from attrbench.guard import GRAPH_DIR_ENV, env_folder

PREFIX = ".attrbench-graphs-"
OWNER_FILE = "owner.json"

__all__ = ["GRAPH_DIR_ENV", "PREFIX", "ScratchFolder"]


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OverflowError):
        return True
    return True


class ScratchFolder:
    """The run's graph folder, created on first use."""

    def __init__(self, output: Path | None, base_dir: Path | None = None):
        env = env_folder(GRAPH_DIR_ENV)
        base = str(base_dir) if base_dir is not None else (str(env) if env is not None else None)
        if base is None and output is not None:
            base = str(Path(output).resolve().parent)
        self.base = base
        self.output = str(Path(output).resolve()) if output is not None else None
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
                (self.root / OWNER_FILE).write_text(json.dumps({"pid": os.getpid(), "output": self.output}))
            return self.root / f"cell-{next(self._ids)}"

    def remove_stale(self, say: Callable[[str], None]) -> None:
        """Remove scratch folders of dead runs: those of this output (whose lock this run now holds) and
        those whose owning process is gone."""
        base = Path(self.base) if self.base else Path(tempfile.gettempdir())
        try:
            candidates = [p for p in base.iterdir() if p.name.startswith(PREFIX) and p.is_dir()]
        except OSError:
            return
        for folder in candidates:
            if folder == self.root:
                continue
            try:
                owner = json.loads((folder / OWNER_FILE).read_text()[:4096])
                pid, output = int(owner["pid"]), owner.get("output")
            except (OSError, ValueError, KeyError, TypeError):
                continue  # not ours to judge (being created this instant, or not an attrbench folder)
            if (self.output is not None and output == self.output and pid != os.getpid()) or not _alive(pid):
                say(f"removing {folder}, the graph folder of a run that did not finish (pid {pid})")
                shutil.rmtree(folder, ignore_errors=True)

    def remove(self) -> None:
        if self.root is not None:
            shutil.rmtree(self.root, ignore_errors=True)
