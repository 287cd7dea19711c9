"""The results file: schema (version 1), environment record, atomic writes and loading.

A results file is one JSON object::

    {"schema_version": 1, "attrbench_version", "created", "environment": {...},
     "workload": {"name", "hash", "config", "n_active"}, "settings": {...}, "yardstick_note", "cells": [...]}

Each cell is one (backend, n_tokens, nodes, repeat) run; see :func:`new_cell` for its keys. A run over several
prompt lengths also carries ``growth`` (:mod:`attrbench.bench.growth`): each backend's fitted exponents of
time and peak memory in the prompt length.
"""

from __future__ import annotations

import datetime as _dt
import json
import os
import platform
import subprocess
import sys
import tempfile
import threading
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any, TextIO

from attrbench.bench.growth import growth_records, prompt_length
from attrbench.bench.schema import NonFinite, check_results_schema, parse_json
from attrbench.errors import UsageError
from attrbench.guard import read_text_bounded

SCHEMA_VERSION = 1
#: cell keys written only where they have a value (files without them are schema 1 as well)
OPTIONAL_CELL_KEYS = ("n_tokens", "parity_note", "truth_parity", "verdict", "verdict_note", "error_traceback")


def attrbench_version() -> str:
    try:
        from importlib.metadata import version

        return version("attrbench")
    except Exception:
        return "unknown"


def _pkg_version(name: str) -> str | None:
    try:
        from importlib.metadata import version

        return version(name)
    except Exception:
        return None


def cpu_name() -> str:
    """The CPU model, from /proc/cpuinfo where there is one."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def git_revision() -> str | None:
    """The git revision of the attrbench checkout, or None outside a git checkout."""
    try:
        here = Path(__file__).resolve().parent
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=here, capture_output=True, text=True, timeout=5)
        if out.returncode != 0:
            return None
        rev = out.stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=here,
            capture_output=True,
            text=True,
            timeout=5,
        )
        return rev + ("-dirty" if dirty.returncode == 0 and dirty.stdout.strip() else "")
    except Exception:
        return None


def environment_info() -> dict[str, Any]:
    """Versions, CPU, GPU and git revision of this machine."""
    gpu = cuda = None
    torch_version = None
    try:
        import torch

        torch_version = torch.__version__
        if torch.cuda.is_available():
            gpu = torch.cuda.get_device_name(0)
            cuda = torch.version.cuda
    except Exception:
        pass
    return {
        "python": platform.python_version(),
        "torch": torch_version,
        "circuit_tracer": _pkg_version("circuit-tracer"),
        "transformers": _pkg_version("transformers"),
        "platform": platform.platform(),
        "cpu": cpu_name(),
        "cpu_count": os.cpu_count(),
        "gpu": gpu,
        "cuda": cuda,
        "git_revision": git_revision(),
    }


def now_iso() -> str:
    return _dt.datetime.now(_dt.UTC).astimezone().isoformat(timespec="seconds")


def new_results(
    workload: dict[str, Any], settings: dict[str, Any], environment: dict[str, Any] | None = None
) -> dict[str, Any]:
    """An empty results document."""
    return {
        "schema_version": SCHEMA_VERSION,
        "attrbench_version": attrbench_version(),
        "created": now_iso(),
        "environment": environment if environment is not None else environment_info(),
        "workload": workload,
        "settings": settings,
        "yardstick_note": None,
        "cells": [],
    }


def new_cell(backend: str, exact: bool, nodes: int, repeat: int, **values: Any) -> dict[str, Any]:
    """One cell record with every key present (None where not measured)."""
    return CellRecord.from_dict(
        {"backend": backend, "exact": bool(exact), "nodes": int(nodes), "repeat": int(repeat), **values}
    ).to_dict()


@dataclass
class CellRecord:
    """One cell of a results file, typed; :meth:`to_dict` gives the schema-1 JSON object."""

    backend: str
    exact: bool
    nodes: int
    repeat: int
    status: str = "error"
    #: the prompt length of the cell's workload (absent in files written before prompt-length sweeps)
    n_tokens: int | None = None
    error: str | None = None
    wall_s: float | None = None
    phases_s: dict[str, float] = field(default_factory=dict)
    peak_host_bytes: int | None = None
    peak_gpu_bytes: int | None = None
    peak_gpu_torch_bytes: int | None = None
    n_selected: int | None = None
    n_active: int | None = None
    n_logits: int | None = None
    info: dict[str, Any] = field(default_factory=dict)
    parity: dict[str, Any] | None = None
    #: why a completed cell has no parity figures
    parity_note: str | None = None
    #: bf16 runs: the parity figures of this graph against the float32 truth (``NAME@fp32``)
    truth_parity: dict[str, Any] | None = None
    #: ``ok``, ``failed``, ``approx``, ``approx: below target``, ``no yardstick``, ``yardstick``, ``truth`` or
    #: ``-`` (:func:`attrbench.graph.verdicts.judge`), and the figures and limits behind it
    verdict: str | None = None
    verdict_note: str | None = None
    #: the formatted traceback of a failed cell
    error_traceback: str | None = None

    @property
    def key(self) -> tuple[str, int | None, int, int]:
        return (self.backend, self.n_tokens, self.nodes, self.repeat)

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        for key in OPTIONAL_CELL_KEYS:
            if out[key] is None:
                del out[key]  # present only where there is something to say
        return out

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> CellRecord:
        names = {f.name for f in fields(cls)}
        unknown = set(data) - names
        if unknown:
            raise ValueError(f"unknown cell keys {sorted(unknown)}")
        return cls(**data)


class ResultsWriteError(Exception):
    """The results file could not be rewritten (disk full, ...): its previous version is intact and
    ``cell`` is the record that did not reach it."""

    def __init__(self, output: Path, error: OSError, cell: dict[str, Any] | None):
        super().__init__(f"cannot write {output}: {error.strerror or error}")
        self.output, self.error, self.cell = output, error, cell

    def report(self, stream: TextIO) -> None:
        """The unwritten cell as one JSON line, then one line saying what happened."""
        if self.cell is None:
            print(f"attrbench: {self}; no cell has run; stopping", file=stream, flush=True)
            return
        print(json.dumps(self.cell, default=str), file=stream, flush=True)
        print(
            f"attrbench: {self}; the file keeps the cells written before it, the cell above (JSON) was not "
            "written; stopping",
            file=stream,
            flush=True,
        )


class ResultsDocument:
    """The results document of a run: every record of ``--resume`` first (its ok cells are not run again;
    the others are replaced when their cell runs, kept as they are otherwise), each new cell replacing any
    earlier record of the same key, the file rewritten atomically whenever something changes."""

    def __init__(
        self,
        workload: dict[str, Any],
        settings: dict[str, Any],
        output: Path | None,
        resume: dict[str, Any] | None = None,
    ):
        self.output = output
        #: cells may finish in several threads at once (launchers that run groups in parallel)
        self.lock = threading.RLock()
        self.doc = new_results(workload, settings)
        self.kept: set[tuple[str, int | None, int, int]] = set()
        self.notes: list[str] = []
        if resume is not None:
            self.doc["resumed_from"] = resume.get("created")
            length = prompt_length((resume.get("workload") or {}).get("config"))
            for cell in resume.get("cells", []):
                if cell.get("n_tokens") is None and length is not None:
                    cell = dict(cell, n_tokens=length)  # written before sweeps: the workload's own length
                self.doc["cells"].append(cell)  # every record survives until its cell is run again
                if cell.get("status") == "ok":
                    self.kept.add(cell_key(cell))
                    if cell.get("n_active") is not None:
                        self.doc["workload"]["n_active"] = cell["n_active"]
            if resume.get("yardstick_note"):
                self.notes.append(resume["yardstick_note"])

    def record(self, key: tuple[str, int | None, int, int]) -> dict[str, Any]:
        """The record of the cell ``key`` (one kept from ``--resume``, or written by this run)."""
        with self.lock:
            return next(c for c in self.doc["cells"] if cell_key(c) == key)

    def put(self, cell: CellRecord) -> None:
        """Add ``cell`` (replacing a record of the same key) and write the file."""
        record = cell.to_dict()
        with self.lock:
            self.doc["cells"] = [c for c in self.doc["cells"] if cell_key(c) != cell.key] + [record]
            main = prompt_length(self.doc["workload"].get("config"))
            if cell.status == "ok" and cell.n_tokens in (None, main) and self.doc["workload"].get("n_active") is None:
                self.doc["workload"]["n_active"] = cell.n_active
            try:
                self.write()
            except OSError as exc:
                raise ResultsWriteError(self.output or Path("-"), exc, record) from exc

    def note(self, text: str | None) -> None:
        with self.lock:
            if text and text not in self.notes:
                self.notes.append(text)

    def start(self) -> None:
        """The first write, before any cell runs (a full disk stops the run here, with nothing lost)."""
        try:
            self.write()
        except OSError as exc:
            raise ResultsWriteError(self.output or Path("-"), exc, None) from exc

    def close(self) -> None:
        """The last write (the yardstick notes); a failure here was already reported."""
        try:
            self.write()
        except OSError:
            pass

    def write(self) -> None:
        with self.lock:
            self.doc["yardstick_note"] = "; ".join(self.notes) or None
            curves = growth_records(self.doc)
            if curves:
                self.doc["growth"] = curves
            if self.output is not None:
                write_results_atomic(self.output, self.doc)


def cell_key(cell: dict[str, Any]) -> tuple[str, int | None, int, int]:
    """(backend, n_tokens, nodes, repeat): what identifies a cell within one results file (``n_tokens`` None in
    files written before prompt-length sweeps)."""
    tokens = cell.get("n_tokens")
    return (str(cell["backend"]), None if tokens is None else int(tokens), int(cell["nodes"]), int(cell["repeat"]))


def _json_default(obj: Any) -> Any:
    try:
        import numpy as np

        if isinstance(obj, np.generic):
            return obj.item()
    except Exception:
        pass
    if hasattr(obj, "item"):
        return obj.item()
    if isinstance(obj, (set, tuple)):
        return list(obj)
    if isinstance(obj, Path):
        return str(obj)
    return str(obj)


def write_results_atomic(path: str | os.PathLike, data: dict[str, Any]) -> None:
    """Write JSON to a temporary file in the same folder, fsync it, then ``os.replace`` it into place."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp makes it 0600; a results file is an ordinary file
        with os.fdopen(fd, "w") as f:
            json.dump(data, f, indent=1, default=_json_default, allow_nan=True)
            f.write("\n")
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise


def validate_results(data: Any, where: str = "results") -> dict[str, Any]:
    """Raise :class:`UsageError` with one line when ``data`` is not a schema-1 results document
    (:mod:`attrbench.bench.schema`: types, ranges, finite wall times, depth); returns the document."""
    if not isinstance(data, dict):
        raise UsageError(f"{where} is not an attrbench results file (top level is not a JSON object)")
    version = data.get("schema_version")
    if version != SCHEMA_VERSION:
        shown = version if isinstance(version, int) and abs(version) < 10**6 else str(version)[:20]
        raise UsageError(f"{where} has schema_version {shown!r}; this attrbench reads schema_version {SCHEMA_VERSION}")
    for key in ("workload", "settings", "cells"):
        if key not in data:
            raise UsageError(f"{where} is not an attrbench results file (missing {key!r})")
    if not any(isinstance(v, NonFinite) for v in _walk(data)):
        # an in-memory document: give its floats the same NaN/Inf treatment a file gets
        data = parse_json(json.dumps(data, default=_json_default, allow_nan=True), where)
    return check_results_schema(data, where)


def _walk(data: Any):
    stack = [data]
    while stack:
        obj = stack.pop()
        yield obj
        if isinstance(obj, dict):
            stack.extend(obj.values())
        elif isinstance(obj, list):
            stack.extend(obj)


def load_results(path: str | os.PathLike) -> dict[str, Any]:
    """Read (at most :data:`attrbench.guard.MAX_INPUT_BYTES`) and check a results file against the schema;
    every problem is one :class:`UsageError` line."""
    p = Path(path)
    where = f"results file {p}"
    data = parse_json(read_text_bounded(p, "results file"), where)
    return validate_results(data, where)


if __name__ == "__main__":  # pragma: no cover
    json.dump(environment_info(), sys.stdout, indent=1)
