"""The ``process`` launcher: every cell in a fresh ``spawn`` child process on this machine.

The child runs :func:`attrbench.bench.worker.run_job` under the run's memory limit and sends its
progress, then a small dict of measured values (or the formatted traceback), back over a pipe. The parent
waits on the pipe and the child's sentinel (no busy-wait), enforces ``--timeout`` from the moment the
child reports that build, prepare and warm-up are done (those get :data:`SETUP_GRACE_S` + 4 x timeout),
and classifies failures (``error``, ``oom``, ``timeout``). The child is its own process group, so killing
it takes everything it started with it, and it dies with the parent (:func:`die_with_parent`), so a parent
killed with SIGKILL leaves no orphan.
"""

from __future__ import annotations

import multiprocessing as mp
import multiprocessing.connection
import os
import resource
import signal
import sys
import threading
import time
import traceback
from collections.abc import Callable
from multiprocessing.connection import Connection
from typing import Any

import psutil

from attrbench.api import CellJob
from attrbench.bench.worker import is_oom_text, run_job
from attrbench.hookspecs import hookimpl
from attrbench.progress import ProgressLine, no_progress

SETUP_GRACE_S = 600.0


def apply_memory_limit(limit: int | None) -> None:
    """Set RLIMIT_DATA of this (child) process; beyond it allocations raise instead of swapping."""
    if not limit:
        return
    soft, hard = resource.getrlimit(resource.RLIMIT_DATA)
    if hard != resource.RLIM_INFINITY:
        limit = min(limit, hard)
    resource.setrlimit(resource.RLIMIT_DATA, (limit, hard))


#: PR_SET_PDEATHSIG from <linux/prctl.h>
_PR_SET_PDEATHSIG = 1


def die_with_parent(parent_pid: int | None) -> None:
    """Make this (child) process die when its parent does, even by SIGKILL: the kernel's parent-death signal
    on Linux, and on every platform a watchdog thread that notices the parent is gone."""
    try:
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    except (OSError, AttributeError):  # not Linux: the watchdog below does it
        pass
    if parent_pid is None:
        return
    if os.getppid() != parent_pid:  # the parent died before the signal was armed
        os._exit(1)

    def watch() -> None:
        while True:
            time.sleep(1.0)
            if os.getppid() != parent_pid:
                try:
                    os.killpg(os.getpgrp(), signal.SIGKILL)
                finally:
                    os._exit(1)

    threading.Thread(target=watch, name="attrbench-parent-watchdog", daemon=True).start()


def _child_main(conn: Connection, job: CellJob, parent_pid: int | None = None) -> None:
    """Entry point of the spawned child: run one cell, send ("result", dict) or ("error", dict), exit."""
    try:
        os.setpgrp()  # its own process group: the parent can kill it with everything it started
    except OSError:
        pass
    die_with_parent(parent_pid)
    code = 0
    try:
        apply_memory_limit(job.settings.get("memory_limit_bytes"))
        out = run_job(job, lambda kind, data: conn.send((kind, data)))
        conn.send(("result", out))
    except BaseException as exc:  # noqa: BLE001 - everything goes back to the parent
        tb = traceback.format_exc()
        try:
            conn.send(("error", {"traceback": tb, "oom": isinstance(exc, MemoryError) or is_oom_text(tb)}))
        except Exception:
            code = 1
    finally:
        try:
            conn.close()
            sys.stdout.flush()
            sys.stderr.flush()
            # release semaphores (e.g. tqdm's lock) so the resource tracker does not report them as leaked
            mp.util._run_finalizers()  # type: ignore[attr-defined]
        finally:
            # skip interpreter teardown (slow, and some libraries print errors from __del__ there)
            os._exit(code)


def kill_tree(proc: mp.process.BaseProcess) -> None:
    """SIGKILL the child's process group and any descendants; reap it."""
    pid = proc.pid
    if pid is None:
        return
    try:
        descendants = psutil.Process(pid).children(recursive=True)
    except psutil.Error:
        descendants = []
    try:
        if os.getpgid(pid) == pid:
            os.killpg(pid, signal.SIGKILL)
    except (OSError, ProcessLookupError):
        pass
    for p in descendants:
        try:
            p.kill()
        except psutil.Error:
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


def classify(message: tuple[str, Any] | None, exitcode: int | None) -> dict[str, Any]:
    """The cell's status from the child's last message, or from how it died when it sent none."""
    if message is not None and message[0] == "result":
        return {"status": "ok", "error": None, **message[1]}
    if message is not None and message[0] == "error":
        tb = message[1]["traceback"].rstrip()
        last = tb.splitlines()[-1] if tb else "unknown error"
        if message[1].get("oom"):
            return {"status": "oom", "error": f"out of memory: {last}", "traceback": tb}
        return {"status": "error", "error": last, "traceback": tb}
    if exitcode == -signal.SIGKILL or exitcode == 137:
        return {"status": "oom", "error": "child process was killed by SIGKILL (most likely the out-of-memory killer)"}
    if exitcode is not None and exitcode < 0:
        return {"status": "error", "error": f"child process crashed with {_signal_name(-exitcode)}"}
    return {"status": "error", "error": f"child process exited with code {exitcode} without a result"}


class ProcessLauncher:
    """Each cell in a fresh spawned child process on this machine, one at a time."""

    name = "process"
    description = "a fresh spawned child process per cell on this machine, one cell at a time"

    def run(
        self, job: CellJob, timeout_s: float | None, progress: Callable[[str], None] | None = None
    ) -> dict[str, Any]:
        """Run one cell; returns its measured values and its status.

        ``progress`` receives a line with the elapsed time and the child's latest status every
        ``$ATTRBENCH_PROGRESS_INTERVAL`` seconds (:class:`attrbench.progress.ProgressLine`).
        """
        ctx = mp.get_context("spawn")
        recv_conn, send_conn = ctx.Pipe(duplex=False)
        proc = ctx.Process(target=_child_main, args=(send_conn, job, os.getpid()), name="attrbench-cell")
        proc.start()
        send_conn.close()
        line = ProgressLine(
            progress if progress is not None else no_progress, interval_s=None if progress is not None else 0.0
        )
        try:
            message, timed_out = self._wait(proc, recv_conn, timeout_s, line)
            if timed_out:
                kill_tree(proc)
            else:
                proc.join(timeout=60)
                if proc.is_alive():
                    kill_tree(proc)
        finally:
            if proc.is_alive():  # KeyboardInterrupt or any other exception in the parent: no orphans
                kill_tree(proc)
            recv_conn.close()
        if timed_out:
            return {"status": "timeout", "error": f"did not finish within --timeout {timeout_s:g} s; killed"}
        return classify(message, proc.exitcode)

    @staticmethod
    def _wait(
        proc: mp.process.BaseProcess, conn: Connection, timeout_s: float | None, line: ProgressLine
    ) -> tuple[tuple[str, Any] | None, bool]:
        """Wait for the child's final message; returns (message or None, whether the deadline passed)."""
        deadline = time.monotonic() + SETUP_GRACE_S + 4 * timeout_s if timeout_s else None
        while True:
            waits = [
                w
                for w in (None if deadline is None else deadline - time.monotonic(), line.seconds_to_next())
                if w is not None
            ]
            ready = mp.connection.wait([conn, proc.sentinel], timeout=max(0.0, min(waits)) if waits else None)
            if not ready:
                if deadline is not None and time.monotonic() >= deadline:
                    return None, True
                line.tick()
                continue
            if conn in ready:
                try:
                    kind, data = conn.recv()
                except (EOFError, OSError):
                    return None, False  # the child died; its exit code says how
                if kind == "progress":
                    line.update(str(data))
                elif kind == "ready":
                    deadline = time.monotonic() + timeout_s if timeout_s else None
                    line.update("timed attribution started")
                else:
                    return (kind, data), False
            elif not conn.poll():
                return None, False


@hookimpl
def register_launchers(register: Callable[[ProcessLauncher], None]) -> None:
    """The built-in ``process`` launcher."""
    register(ProcessLauncher())
