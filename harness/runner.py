"""The benchmark runner: one fresh ``spawn`` child process per (backend, nodes, repeat) cell.

The child builds the workload, prepares the backend, does one untimed warm-up, then times
``backend.attribute`` with the trackers running, saves the graph with :mod:`attrbench.graph_store` into a
per-run folder and sends a small dict (or the formatted traceback) back over a pipe. The parent waits on the
pipe and the child's sentinel (no busy-wait), classifies failures (``error``, ``oom``, ``timeout``), computes
parity against the yardstick of the same (nodes, repeat) and rewrites the results file atomically after
every cell.

Cell order: for each node count, for each repeat: ``reference`` first, then ``autodiff-free``, then the
other backends in the order given. The yardstick of a cell is the reference cell of the same nodes and
repeat; when that is not ok, the ``autodiff-free`` cell (when it ran ok), and ``yardstick_note`` says so.

``--timeout`` bounds the timed attribution of a cell (counted from the moment the child reports that build,
prepare and warm-up are done); build, prepare and warm-up together get ``SETUP_GRACE_S + 4 * timeout``.

Resume: cells that are ``ok`` in the resumed file (same workload hash and settings) are kept as they are and
not run again. Their graphs are not on disk; when a cell that does run needs a resumed yardstick's graph, the
yardstick is re-run silently once for that (nodes, repeat) just to get its graph (its kept record is not
changed). If that re-run fails, the cell's parity is null and ``parity_note`` says why.
"""

from __future__ import annotations

import gc
import json
import multiprocessing as mp
import multiprocessing.connection
import os
import shutil
import signal
import sys
import tempfile
import time
import traceback
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Callable, TextIO

from attrbench.progress import ProgressLine, no_progress
from attrbench.results import cell_key, new_cell, new_results, write_results_atomic
from attrbench.workload import WorkloadSpec

YARDSTICKS = ("reference", "autodiff-free")
SETUP_GRACE_S = 600.0
#: graphs above this size get a progress line before parity (it reads both adjacencies, minutes at 70k nodes)
LARGE_GRAPH_BYTES = 2**30
OOM_MARKERS = ("MemoryError", "OutOfMemoryError", "CUDA out of memory", "can't allocate memory",
               "DefaultCPUAllocator: not enough memory", "std::bad_alloc")


@dataclass
class RunConfig:
    """Everything one ``attrbench run`` needs (validated by the CLI)."""

    spec: WorkloadSpec
    backends: list[str]
    nodes: list[int]
    device: str = "cpu"
    dtype: str = "float32"
    batch_size: int = 512
    update_interval: int = 4
    max_n_logits: int = 10
    desired_logit_prob: float = 0.95
    repeats: int = 1
    timeout_s: float | None = None
    warmup: bool = True
    options: dict[str, Any] = field(default_factory=dict)
    output: Path | None = None
    resume: dict[str, Any] | None = None
    #: address-space limit of each CPU cell's child in GiB: None = the default (:func:`default_memory_limit`),
    #: 0 = no limit
    memory_limit_gib: float | None = None
    #: do not launch cells predicted (:mod:`attrbench.estimate`) not to fit; record them as ``oom``
    strict: bool = False

    def memory_limit_bytes(self) -> int | None:
        """The RLIMIT_DATA each child gets, or None for no limit."""
        return resolve_memory_limit(self.device, self.memory_limit_gib)

    def settings(self) -> dict[str, Any]:
        return {
            "device": self.device, "dtype": self.dtype, "batch_size": self.batch_size,
            "update_interval": self.update_interval, "max_n_logits": self.max_n_logits,
            "desired_logit_prob": self.desired_logit_prob, "repeats": self.repeats, "timeout_s": self.timeout_s,
            "warmup": self.warmup, "backend_options": dict(self.options),
            "memory_limit_bytes": self.memory_limit_bytes(), "strict": self.strict,
        }

    def workload_record(self) -> dict[str, Any]:
        return {"name": self.spec.name, "hash": self.spec.content_hash(), "config": self.spec.to_dict(),
                "n_active": None}


def default_memory_limit(device: str) -> int | None:
    """Physical memory + swap for CPU cells; None (no limit) for CUDA, whose driver reserves huge virtual
    ranges.

    The limit is RLIMIT_DATA: private writable memory (heap and anonymous mappings, where torch's tensors
    live), reserved or not, but not file mappings, so a backend may memory-map a graph file larger than the
    limit (the lean edge store does at 70,000 nodes; RLIMIT_AS refused that mapping). A limit this tight
    makes circuit-tracer's 24.5 GiB ``torch.zeros`` edge matrix at 70,000 nodes fail at once with "can't
    allocate memory" (zero pages are not resident until written, so the kernel's OOM killer would only
    find the cell much later, after swapping).
    """
    if not str(device).startswith("cpu"):
        return None
    import psutil

    return int(psutil.virtual_memory().total + psutil.swap_memory().total)


def resolve_memory_limit(device: str, gib: float | None) -> int | None:
    """``--memory-limit`` in GiB -> bytes: None = default for the device, 0 = no limit."""
    if gib is None:
        return default_memory_limit(device)
    if gib == 0:
        return None
    return int(gib * 2**30)


def _apply_memory_limit(limit: int | None) -> None:
    """Set RLIMIT_DATA of this (child) process; beyond it allocations raise instead of swapping."""
    if not limit:
        return
    import resource

    soft, hard = resource.getrlimit(resource.RLIMIT_DATA)
    if hard != resource.RLIM_INFINITY:
        limit = min(limit, hard)
    resource.setrlimit(resource.RLIMIT_DATA, (limit, hard))


def ordered_backends(names: list[str]) -> list[str]:
    """reference first, autodiff-free second, the others in the given order (duplicates dropped)."""
    seen: list[str] = []
    for name in [n for n in YARDSTICKS if n in names] + list(names):
        if name not in seen:
            seen.append(name)
    return seen


def plan_cells(config: RunConfig) -> list[tuple[str, int, int]]:
    """Every (backend, nodes, repeat) in run order."""
    backends = ordered_backends(config.backends)
    return [(b, n, r) for n in config.nodes for r in range(config.repeats) for b in backends]


# ----------------------------------------------------------------------------------------------- child side


def _is_oom_text(text: str) -> bool:
    return any(marker in text for marker in OOM_MARKERS)


def _jsonable(obj: Any) -> Any:
    try:
        return json.loads(json.dumps(obj, default=lambda o: o.item() if hasattr(o, "item") else str(o)))
    except Exception:
        return {}


def _sync(device: str) -> None:
    if str(device).startswith("cuda"):
        import torch

        torch.cuda.synchronize()


def _child_run(conn, payload: dict[str, Any]) -> dict[str, Any]:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import torch

    from attrbench.backend import AttributeSettings
    from attrbench.build import build_workload
    from attrbench.graph_store import save_result
    from attrbench.manager import get_backends, get_tracker_factories
    from attrbench.progress import no_progress
    from attrbench.workload import spec_from_dict

    def say(text: str) -> None:
        conn.send(("progress", text))

    spec = spec_from_dict(payload["spec"], "<runner>")
    say("building the workload")
    built = build_workload(spec)
    backend = get_backends()[payload["backend"]]
    device = payload["device"]
    say("preparing the backend")
    prepared = backend.prepare(built, device, getattr(torch, payload["dtype"]))
    settings = AttributeSettings(
        max_feature_nodes=payload["nodes"], batch_size=payload["batch_size"],
        update_interval=payload["update_interval"], max_n_logits=payload["max_n_logits"],
        desired_logit_prob=payload["desired_logit_prob"], options=dict(payload["options"]),
        scratch_dir=payload["graph_dir"], progress=say,
    )
    if payload["warmup"]:
        say("warm-up")
        backend.attribute(prepared, replace(settings, max_feature_nodes=min(payload["nodes"], payload["batch_size"]),
                                            progress=no_progress))  # result dropped at once
        gc.collect()
        _sync(device)
    conn.send(("ready", None))

    trackers = []
    for factory in get_tracker_factories():
        try:
            trackers.append(factory(device))
        except Exception:
            pass
    for t in trackers:
        t.start()
    _sync(device)
    t0 = time.perf_counter()
    result = backend.attribute(prepared, settings)
    _sync(device)
    wall = time.perf_counter() - t0
    for t in reversed(trackers):
        t.stop()
    measured: dict[str, Any] = {"peak_host_bytes": None, "peak_gpu_bytes": None, "peak_gpu_torch_bytes": None}
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

    phases = {k: float(v) for k, v in (result.phases_s or {}).items()}
    rest = wall - sum(phases.values())
    if "packaging" not in phases and rest >= 0:
        phases["packaging"] = rest
    say("saving the graph")
    save_result(result, payload["graph_dir"])
    info = _jsonable(dict(result.info or {}))
    extra = {k: v for k, v in measured.items() if k not in ("peak_host_bytes", "peak_gpu_bytes", "peak_gpu_torch_bytes")}
    if extra or sources:
        info.setdefault("measurement", {}).update(_jsonable(extra))
        info["measurement"]["sources"] = _jsonable(sources)
    return {
        "wall_s": wall, "phases_s": phases,
        "peak_host_bytes": measured["peak_host_bytes"], "peak_gpu_bytes": measured["peak_gpu_bytes"],
        "peak_gpu_torch_bytes": measured["peak_gpu_torch_bytes"],
        "n_selected": int(result.selected_features.shape[0]), "n_active": int(result.active_features.shape[0]),
        "n_logits": int(result.logit_token_ids.shape[0]), "info": info,
    }


def _child_main(conn, payload: dict[str, Any]) -> None:
    """Entry point of the spawned child: run one cell, send ("result", dict) or ("error", dict), exit."""
    try:
        os.setpgrp()  # its own process group: the parent can kill it with everything it started
    except OSError:
        pass
    code = 0
    try:
        _apply_memory_limit(payload.get("memory_limit_bytes"))
        out = _child_run(conn, payload)
        conn.send(("result", out))
    except BaseException as exc:  # noqa: BLE001 - everything goes back to the parent
        tb = traceback.format_exc()
        try:
            conn.send(("error", {"traceback": tb, "oom": isinstance(exc, MemoryError) or _is_oom_text(tb)}))
        except Exception:
            code = 1
    finally:
        try:
            conn.close()
            sys.stdout.flush()
            sys.stderr.flush()
            # release semaphores (e.g. tqdm's lock) so the resource tracker does not report them as leaked
            mp.util._run_finalizers()
        finally:
            # skip interpreter teardown (slow, and some libraries print errors from __del__ there)
            os._exit(code)


# ---------------------------------------------------------------------------------------------- parent side


def _kill_tree(proc: mp.process.BaseProcess) -> None:
    """SIGKILL the child's process group and any descendants; reap it."""
    pid = proc.pid
    if pid is None:
        return
    try:
        import psutil

        descendants = psutil.Process(pid).children(recursive=True)
    except Exception:
        descendants = []
    try:
        if os.getpgid(pid) == pid:
            os.killpg(pid, signal.SIGKILL)
    except (OSError, ProcessLookupError):
        pass
    for p in descendants:
        try:
            p.kill()
        except Exception:
            pass
    try:
        proc.kill()
    except Exception:
        pass
    proc.join(timeout=10)


def _signal_name(num: int) -> str:
    try:
        return signal.Signals(num).name
    except ValueError:
        return f"signal {num}"


def run_cell(payload: dict[str, Any], timeout_s: float | None,
             progress: Callable[[str], None] | None = None) -> dict[str, Any]:
    """Run one cell in a fresh spawned child; returns the cell's measured values and its status.

    ``progress`` receives a line with the elapsed time and the child's latest status every
    ``$ATTRBENCH_PROGRESS_INTERVAL`` seconds (:class:`attrbench.progress.ProgressLine`).
    """
    ctx = mp.get_context("spawn")
    recv_conn, send_conn = ctx.Pipe(duplex=False)
    proc = ctx.Process(target=_child_main, args=(send_conn, payload), name=f"attrbench-{payload['backend']}")
    proc.start()
    send_conn.close()
    setup_deadline = time.monotonic() + SETUP_GRACE_S + 4 * timeout_s if timeout_s else None
    deadline = setup_deadline
    message: tuple[str, Any] | None = None
    timed_out = False
    line = ProgressLine(progress if progress is not None else no_progress,
                        interval_s=None if progress is not None else 0.0)
    try:
        while True:
            waits = [w for w in (None if deadline is None else deadline - time.monotonic(), line.seconds_to_next())
                     if w is not None]
            ready = mp.connection.wait([recv_conn, proc.sentinel], timeout=max(0.0, min(waits)) if waits else None)
            if not ready:
                if deadline is not None and time.monotonic() >= deadline:
                    timed_out = True
                    break
                line.tick()
                continue
            if recv_conn in ready:
                try:
                    kind, data = recv_conn.recv()
                except (EOFError, OSError):
                    break  # the child died; its exit code says how
                if kind == "progress":
                    line.update(str(data))
                    continue
                if kind == "ready":
                    deadline = time.monotonic() + timeout_s if timeout_s else None
                    line.update("timed attribution started")
                    continue
                message = (kind, data)
                break
            if not recv_conn.poll():
                break
        if timed_out:
            _kill_tree(proc)
        else:
            proc.join(timeout=60)
            if proc.is_alive():
                _kill_tree(proc)
    finally:
        if proc.is_alive():  # KeyboardInterrupt or any other exception in the parent: no orphans
            _kill_tree(proc)
        recv_conn.close()

    if timed_out:
        return {"status": "timeout", "error": f"did not finish within --timeout {timeout_s:g} s; killed"}
    if message is not None and message[0] == "result":
        return {"status": "ok", "error": None, **message[1]}
    if message is not None and message[0] == "error":
        tb = message[1]["traceback"].rstrip()
        last = tb.splitlines()[-1] if tb else "unknown error"
        if message[1].get("oom"):
            return {"status": "oom", "error": f"out of memory: {last}", "traceback": tb}
        return {"status": "error", "error": last, "traceback": tb}
    code = proc.exitcode
    if code == -signal.SIGKILL or code == 137:
        return {"status": "oom", "error": "child process was killed by SIGKILL (most likely the out-of-memory killer)"}
    if code is not None and code < 0:
        return {"status": "error", "error": f"child process crashed with {_signal_name(-code)}"}
    return {"status": "error", "error": f"child process exited with code {code} without a result"}


class Runner:
    """Runs a :class:`RunConfig` cell by cell, keeping the results document up to date."""

    def __init__(self, config: RunConfig, progress: TextIO | None = None):
        from attrbench.manager import get_backends

        self.config = config
        self.progress = progress if progress is not None else sys.stderr
        self.backends = get_backends()
        self.doc = new_results(config.workload_record(), config.settings())
        self.kept: dict[tuple, dict[str, Any]] = {}
        if config.resume is not None:
            self.doc["resumed_from"] = config.resume.get("created")
            for cell in config.resume.get("cells", []):
                if cell.get("status") == "ok":
                    self.kept[cell_key(cell)] = cell
                    self.doc["cells"].append(cell)
                    if cell.get("n_active") is not None:
                        self.doc["workload"]["n_active"] = cell["n_active"]
            notes = config.resume.get("yardstick_note")
            if notes:
                self.doc["yardstick_note"] = notes
        self.graph_root: Path | None = None
        self.yardstick_notes: list[str] = [self.doc["yardstick_note"]] if self.doc["yardstick_note"] else []

    # -- helpers
    def _say(self, text: str) -> None:
        print(f"attrbench: {text}", file=self.progress, flush=True)

    def _write(self) -> None:
        if self.config.output is not None:
            write_results_atomic(self.config.output, self.doc)

    def _payload(self, backend: str, nodes: int, graph_dir: Path) -> dict[str, Any]:
        c = self.config
        return {
            "spec": c.spec.to_dict(), "backend": backend, "nodes": nodes, "device": c.device, "dtype": c.dtype,
            "batch_size": c.batch_size, "update_interval": c.update_interval, "max_n_logits": c.max_n_logits,
            "desired_logit_prob": c.desired_logit_prob, "options": dict(c.options), "warmup": c.warmup,
            "graph_dir": str(graph_dir), "memory_limit_bytes": c.memory_limit_bytes(),
        }

    def _graph_root(self) -> Path:
        if self.graph_root is None:
            base = os.environ.get("ATTRBENCH_GRAPH_DIR")
            if base is None and self.config.output is not None:
                base = str(Path(self.config.output).resolve().parent)
            Path(base).mkdir(parents=True, exist_ok=True) if base else None
            self.graph_root = Path(tempfile.mkdtemp(prefix=".attrbench-graphs-", dir=base))
        return self.graph_root

    def _execute(self, backend: str, nodes: int, repeat: int, label: str) -> tuple[dict[str, Any], Path | None]:
        graph_dir = self._graph_root() / f"{backend}-{nodes}-{repeat}-{time.monotonic_ns()}"
        values = run_cell(self._payload(backend, nodes, graph_dir), self.config.timeout_s,
                          progress=lambda text: self._say(f"{label}: {text}"))
        ok = values["status"] == "ok" and (graph_dir / "adjacency.npy").exists()
        if not ok:
            shutil.rmtree(graph_dir, ignore_errors=True)
        return values, graph_dir if ok else None

    def _parity(self, graph_dir: Path, yard_dir: Path, against: str) -> dict[str, Any]:
        from attrbench.graph_store import load_result
        from attrbench.parity import compare

        return compare(load_result(graph_dir), load_result(yard_dir), against, workload=self.config.spec)

    def _predict(self, plan: list[tuple[str, int, int]]) -> dict[tuple[str, int], str]:
        """Estimate every (backend, nodes) to run; warn about those predicted not to fit. Returns the reason
        per cell that does not fit."""
        c = self.config
        try:
            from attrbench.estimate import DEFAULT_CPU_RATE, available_memory, estimate_cell, fits

            host, gpu = available_memory(c.device, c.memory_limit_bytes())
        except Exception as exc:  # an estimate must never stop a run
            self._say(f"warning: memory estimate unavailable ({type(exc).__name__}: {exc})")
            return {}
        too_big: dict[tuple[str, int], str] = {}
        for b, n in dict.fromkeys((b, n) for b, n, r in plan if (b, n, r) not in self.kept):
            try:
                est = estimate_cell(c.spec, b, n, c.device, c.dtype, c.batch_size, c.update_interval,
                                    c.max_n_logits, c.options, rate=DEFAULT_CPU_RATE)
            except Exception:
                continue
            ok, reason = fits(est, host, gpu)
            if not ok:
                too_big[(b, n)] = reason
                action = "not run (--strict)" if c.strict else "it may run out of memory"
                self._say(f"warning: {b} nodes={n}: {reason}; {action}")
        return too_big

    def _record_predicted_oom(self, b: str, n: int, r: int, reason: str, done: int, total: int) -> None:
        backend = self.backends.get(b)
        cell = new_cell(b, getattr(backend, "exact", True), n, r, status="oom",
                        error=f"{reason}; not run (--strict)")
        self.doc["cells"] = [x for x in self.doc["cells"] if cell_key(x) != (b, n, r)] + [cell]
        self._write()
        self._say(f"[{done}/{total}] {b} nodes={n} repeat={r}: oom ({cell['error']})")

    # -- the run
    def run(self) -> dict[str, Any]:
        c = self.config
        plan = plan_cells(c)
        total = len(plan)
        try:
            self._write()
            too_big = self._predict(plan)
            groups: dict[tuple[int, int], list[str]] = {}
            for b, n, r in plan:
                groups.setdefault((n, r), []).append(b)
            done = 0
            for (n, r), names in groups.items():
                graphs: dict[str, Path] = {}
                status: dict[str, str] = {}
                try:
                    for b in names:
                        done += 1
                        kept = self.kept.get((b, n, r))
                        if kept is not None:
                            status[b] = "ok"
                            self._say(f"[{done}/{total}] {b} nodes={n} repeat={r}: kept from --resume (ok)")
                            continue
                        if c.strict and (b, n) in too_big:
                            status[b] = "oom"
                            self._record_predicted_oom(b, n, r, too_big[(b, n)], done, total)
                            continue
                        self._run_one(b, n, r, done, total, graphs, status)
                finally:
                    for d in graphs.values():
                        shutil.rmtree(d, ignore_errors=True)
            return self.doc
        except KeyboardInterrupt:
            self._say("interrupted; stopping (finished cells are kept)")
            raise
        finally:
            if self.yardstick_notes:
                self.doc["yardstick_note"] = "; ".join(dict.fromkeys(self.yardstick_notes))
            try:
                self._write()
            finally:
                if self.graph_root is not None:
                    shutil.rmtree(self.graph_root, ignore_errors=True)

    def _yardstick_for(self, backend: str, n: int, r: int, status: dict[str, str]) -> str | None:
        names = ordered_backends(self.config.backends)
        for y in YARDSTICKS:
            if y == backend:
                return None  # a yardstick is never compared with the ones after it
            if y in names and status.get(y) == "ok":
                return y
        return None

    def _ensure_graph(self, y: str, n: int, r: int, graphs: dict[str, Path]) -> Path | None:
        if y in graphs:
            return graphs[y]
        self._say(f"re-running {y} nodes={n} repeat={r} for its graph (its record was kept from --resume)")
        values, graph_dir = self._execute(y, n, r, f"{y} nodes={n} repeat={r} (re-run for its graph)")
        if graph_dir is not None:
            graphs[y] = graph_dir
        return graph_dir

    def _run_one(self, b: str, n: int, r: int, done: int, total: int, graphs: dict[str, Path],
                 status: dict[str, str]) -> None:
        self._say(f"[{done}/{total}] {b} nodes={n} repeat={r}: started")
        t0 = time.monotonic()
        values, graph_dir = self._execute(b, n, r, f"[{done}/{total}] {b} nodes={n} repeat={r}")
        elapsed = time.monotonic() - t0
        values.pop("traceback", None)
        backend = self.backends.get(b)
        cell = new_cell(b, getattr(backend, "exact", True), n, r, **values)
        status[b] = cell["status"]
        if cell["status"] == "ok" and self.doc["workload"].get("n_active") is None:
            self.doc["workload"]["n_active"] = cell["n_active"]

        if cell["status"] == "ok" and graph_dir is not None:
            y = self._yardstick_for(b, n, r, status)
            if y is not None:
                if y != "reference" and "reference" in self.config.backends:
                    note = (f"reference did not complete at nodes={n} repeat={r} "
                            f"({status.get('reference', 'not run')}); parity there is against {y}")
                    self.yardstick_notes.append(note)
                yard_dir = self._ensure_graph(y, n, r, graphs)
                if yard_dir is None:
                    cell["parity_note"] = f"the {y} graph could not be re-created for parity"
                else:
                    if (graph_dir / "adjacency.npy").stat().st_size > LARGE_GRAPH_BYTES:
                        self._say(f"[{done}/{total}] {b} nodes={n} repeat={r}: comparing its graph with {y}'s")
                    try:
                        cell["parity"] = self._parity(graph_dir, yard_dir, "reference" if y == "reference" else y)
                    except Exception as exc:  # parity must never lose a measured cell
                        cell["parity_note"] = f"parity failed: {type(exc).__name__}: {exc}"
            elif b not in YARDSTICKS:
                cell["parity_note"] = "no yardstick completed for this node count and repeat"
            if b in YARDSTICKS:
                graphs[b] = graph_dir  # kept until the (nodes, repeat) group is done
            else:
                shutil.rmtree(graph_dir, ignore_errors=True)

        self.doc["cells"] = [c for c in self.doc["cells"] if cell_key(c) != (b, n, r)] + [cell]
        self._write()
        wall = f"{cell['wall_s']:.3f} s" if cell["wall_s"] is not None else f"after {elapsed:.1f} s"
        extra = f" ({cell['error']})" if cell["error"] else ""
        self._say(f"[{done}/{total}] {b} nodes={n} repeat={r}: {cell['status']} {wall}{extra}")


def run(config: RunConfig, progress: TextIO | None = None) -> dict[str, Any]:
    """Run every cell of ``config``; returns the results document (also written to ``config.output``).

    Raises ``KeyboardInterrupt`` after killing the running child and writing the finished cells.
    """
    return Runner(config, progress).run()
