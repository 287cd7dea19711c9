"""Test backends, registered in every process through ATTRBENCH_EXTRA_PLUGINS=plugins_for_tests."""

from __future__ import annotations

import os
import signal
import time

from attrbench.api import Backend
from attrbench.backends.reference import ReferenceBackend
from attrbench.hookspecs import hookimpl


class CopyBackend(ReferenceBackend):
    """Returns the reference's own graph (parity must be exactly 1.0 / 0.0)."""

    name = "copy"
    description = "test: the reference, under another name"


class MalformedBackend(ReferenceBackend):
    """Declared exact, but its adjacency is one row and one column short of N (the contract is broken)."""

    name = "malformed"
    description = "test: the reference's graph with the adjacency one node short"
    yardstick = None

    def attribute(self, prepared, settings):
        result = super().attribute(prepared, settings)
        result.adjacency_matrix = result.adjacency_matrix[:-1, :-1].contiguous()
        return result


class PerturbedBackend(ReferenceBackend):
    """Declared exact: the reference's graph with every edge scaled by 1 + ``perturb`` (default 1%)."""

    name = "perturbed"
    description = "test: the reference's edges perturbed by 1% (option perturb)"
    yardstick = None
    option_defaults = {"perturb": 0.01}

    def attribute(self, prepared, settings):
        result = super().attribute(prepared, settings)
        result.adjacency_matrix = result.adjacency_matrix * (1.0 + float(settings.options["perturb"]))
        return result


class ChattyBackend(ReferenceBackend):
    """The reference, after reporting five numbered progress steps a little apart."""

    name = "chatty"
    description = "test: reports progress steps, then runs the reference"

    def attribute(self, prepared, settings):
        for step in range(1, 6):
            settings.progress(f"step {step}/5")
            time.sleep(0.3)
        return super().attribute(prepared, settings)


class _Crashing(Backend):
    exact = True
    devices = ("cpu",)
    dtypes = ("float32",)

    def prepare(self, workload, device, dtype):
        return None


class RaisesBackend(_Crashing):
    name = "raises"
    description = "test: raises in attribute"

    def attribute(self, prepared, settings):
        raise RuntimeError("boom from the raises test backend")


class _SignalsItself(_Crashing):
    """Sends ``signum`` to its own process in attribute."""

    signum: signal.Signals

    def attribute(self, prepared, settings):
        os.kill(os.getpid(), self.signum)
        time.sleep(60)


class SegfaultBackend(_SignalsItself):
    name = "segfault"
    description = "test: dies with SIGSEGV"
    signum = signal.SIGSEGV


class KilledBackend(_SignalsItself):
    name = "killed"
    description = "test: killed by SIGKILL, like the OOM killer does"
    signum = signal.SIGKILL


class SleeperBackend(_Crashing):
    """Returns at once from the untimed warm-up (its result is discarded), then sleeps past any --timeout."""

    name = "sleeper"
    description = "test: sleeps far past any --timeout"
    calls = 0

    def attribute(self, prepared, settings):
        type(self).calls += 1
        if type(self).calls > 1:
            time.sleep(3600)
        return None


class InterruptBackend(_Crashing):
    """Sends SIGINT to the runner (like Ctrl-C), records its pid, then sleeps."""

    name = "interrupt"
    description = "test: interrupts the parent"

    def attribute(self, prepared, settings):
        pid_file = os.environ.get("ATTRBENCH_TEST_PID_FILE")
        if pid_file:
            with open(pid_file, "w") as f:
                f.write(str(os.getpid()))
        os.kill(os.getppid(), signal.SIGINT)
        time.sleep(120)


class HogBackend(_Crashing):
    """Allocates and touches ATTRBENCH_TEST_HOG_GIB GiB (default 64) in attribute: beyond any --memory-limit."""

    name = "hog"
    description = "test: allocates far more memory than a small --memory-limit"

    def attribute(self, prepared, settings):
        import torch

        gib = float(os.environ.get("ATTRBENCH_TEST_HOG_GIB", "64"))
        torch.empty(int(gib * 2**30) // 4, dtype=torch.float32).fill_(1)
        raise RuntimeError("the hog test backend was not stopped by the memory limit")


class HangBackend(_Crashing):
    """Writes its pid to ATTRBENCH_TEST_PID_FILE, then hangs (a cell whose parent is killed under it)."""

    name = "hang"
    description = "test: records its pid and hangs"

    def attribute(self, prepared, settings):
        pid_file = os.environ.get("ATTRBENCH_TEST_PID_FILE")
        if pid_file:
            with open(pid_file + ".tmp", "w") as f:
                f.write(str(os.getpid()))
            os.replace(pid_file + ".tmp", pid_file)
        time.sleep(120)


class InstantLauncher:
    """Records every cell as ``oom`` at once without running anything (runner and results tests)."""

    name = "instant"
    description = "test: every cell oom at once, nothing run"

    def run(self, job, timeout_s, progress=None):
        return {"status": "oom", "error": "instant test launcher: not run"}


@hookimpl
def register_launchers(register):
    register(InstantLauncher())


class Float32OnlyBackend(_Crashing):
    name = "f32only"
    description = "test: declares float32 on cpu only"

    def attribute(self, prepared, settings):
        raise RuntimeError("not meant to run")


@hookimpl
def register_backends(register):
    for cls in (
        CopyBackend,
        MalformedBackend,
        PerturbedBackend,
        ChattyBackend,
        RaisesBackend,
        SegfaultBackend,
        KilledBackend,
        SleeperBackend,
        InterruptBackend,
        Float32OnlyBackend,
        HogBackend,
        HangBackend,
    ):
        register(cls())
