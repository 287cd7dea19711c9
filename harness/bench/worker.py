"""One cell, measured: the part of a run that is the same whatever launcher runs it.

:func:`run_job` builds the workload, prepares the backend, does one untimed warm-up, then times
``backend.attribute`` with every registered tracker running, saves the graph into the job's folder
(:mod:`attrbench.graph.store`) and returns the cell's measured values. It reports its progress through a
callback: ``("progress", text)`` lines, and ``("ready", None)`` once build, prepare and warm-up are done (a
launcher starts the ``--timeout`` clock there).
"""

from __future__ import annotations

import gc
import json
import os
import socket
import time
from collections.abc import Callable
from dataclasses import replace
from typing import Any

import torch

from attrbench.allocator import keep_freed_memory
from attrbench.api import CellJob, Tracker
from attrbench.bench.results import cpu_name
from attrbench.bench.settings import BenchSettings
from attrbench.graph.store import save_result
from attrbench.graph.validate import InvalidResult, check_result
from attrbench.plugin_manager import get_backends, get_tracker_factories
from attrbench.progress import no_progress
from attrbench.workload.build import build_workload
from attrbench.workload.spec import spec_from_dict

MEMORY_KEYS = ("peak_host_bytes", "peak_gpu_bytes", "peak_gpu_torch_bytes")
OOM_MARKERS = (
    "MemoryError",
    "OutOfMemoryError",
    "CUDA out of memory",
    "can't allocate memory",
    "DefaultCPUAllocator: not enough memory",
    "std::bad_alloc",
    "[Errno 12] Cannot allocate memory",  # ENOMEM from mmap (e.g. beyond the cell's RLIMIT_DATA)
)


#: how a worker reports: ("progress", text) lines and ("ready", None) before the timed attribution
Report = Callable[[str, Any], None]


def is_oom_text(text: str) -> bool:
    """Whether an error text says the cell ran out of memory."""
    return any(marker in text for marker in OOM_MARKERS)


def _jsonable(obj: Any) -> Any:
    try:
        return json.loads(json.dumps(obj, default=lambda o: o.item() if hasattr(o, "item") else str(o)))
    except Exception:
        return {}


def _sync(device: str) -> None:
    if str(device).startswith("cuda"):
        torch.cuda.synchronize()


def _start_trackers(device: str) -> list[Tracker]:
    trackers = []
    for factory in get_tracker_factories():
        try:
            trackers.append(factory(device))
        except Exception:  # a tracker that cannot run here (no GPU, no NVML) measures nothing
            pass
    for t in trackers:
        t.start()
    return trackers


def _collect(trackers: list[Tracker]) -> tuple[dict[str, Any], dict[str, Any]]:
    """(measured values, where each came from) of the stopped trackers."""
    measured: dict[str, Any] = dict.fromkeys(MEMORY_KEYS)
    sources: dict[str, Any] = {}
    for t in trackers:
        try:
            r = dict(t.results())
        except Exception:
            continue
        sources.update(r.pop("sources", {}) or {})
        for k, v in r.items():
            if v is not None or k not in measured:
                measured[k] = v
    return measured, sources


def placement(device: str) -> dict[str, str]:
    """Where a cell ran: the node's host name and the device model (GPU name, else the CPU's)."""
    if str(device).startswith("cuda"):
        name = torch.cuda.get_device_name(torch.device(device))
    else:
        name = cpu_name()
    return {"node": socket.gethostname(), "device": name}


def run_job(job: CellJob, report: Report) -> dict[str, Any]:
    """Measure one cell; returns its values (see :func:`attrbench.bench.results.new_cell`).

    A graph that breaks the result contract (:mod:`attrbench.graph.validate`) is not saved: the values then
    carry ``status`` ``invalid`` and the reasons in ``error``.
    """
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    keep_freed_memory()  # every cell alike, the reference included
    settings = BenchSettings.from_dict(job.settings)

    def say(text: str) -> None:
        report("progress", text)

    say("building the workload")
    built = build_workload(spec_from_dict(job.spec, "<worker>"))
    backend = get_backends()[job.backend]
    say("preparing the backend")
    prepared = backend.prepare(built, settings.device, getattr(torch, settings.dtype))
    attribute = settings.attribute_settings(job.nodes, scratch_dir=job.graph_dir, progress=say, backend=backend)
    if settings.warmup:
        say("warm-up")
        warm = replace(attribute, max_feature_nodes=min(job.nodes, settings.batch_size), progress=no_progress)
        backend.attribute(prepared, warm)  # result dropped at once
        gc.collect()
        _sync(settings.device)
    report("ready", None)

    trackers = _start_trackers(settings.device)
    _sync(settings.device)
    t0 = time.perf_counter()
    result = backend.attribute(prepared, attribute)
    _sync(settings.device)
    wall = time.perf_counter() - t0
    for t in reversed(trackers):
        t.stop()
    measured, sources = _collect(trackers)

    measured_values = {"wall_s": wall, **{k: measured[k] for k in MEMORY_KEYS}}
    say("checking the graph")
    try:
        check_result(result, built, job.nodes)
    except InvalidResult as exc:  # never recorded ok, never saved for parity
        return {**measured_values, "status": "invalid", "error": "; ".join(exc.problems)}

    phases = {k: float(v) for k, v in (result.phases_s or {}).items()}
    rest = wall - sum(phases.values())
    if "packaging" not in phases and rest >= 0:
        phases["packaging"] = rest
    say("saving the graph")
    save_result(result, job.graph_dir)
    info = _jsonable(dict(result.info or {}))
    info["placement"] = placement(settings.device)
    extra = {k: v for k, v in measured.items() if k not in MEMORY_KEYS}
    if extra or sources:
        info.setdefault("measurement", {}).update(_jsonable(extra))
        info["measurement"]["sources"] = _jsonable(sources)
    return {
        **measured_values,
        "phases_s": phases,
        "n_selected": int(result.selected_features.shape[0]),
        "n_active": int(result.active_features.shape[0]),
        "n_logits": int(result.logit_token_ids.shape[0]),
        "info": info,
    }
