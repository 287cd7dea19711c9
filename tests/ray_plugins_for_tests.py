"""Test backends for the ray launcher: they kill the Ray worker that runs their cell (a lost worker).

Run them with ``--no-warmup``: the warm-up would kill the worker too."""

from __future__ import annotations

import os
import signal
from pathlib import Path

import psutil

from attrbench.backends.reference import ReferenceBackend
from attrbench.hookspecs import hookimpl


def _kill_ray_worker() -> None:
    """SIGKILL this cell's Ray worker (the process launcher's parent inside a Ray task), then exit."""
    parent = psutil.Process(os.getppid())
    if "ray" not in " ".join(parent.cmdline()).lower():
        raise RuntimeError("the ray-killer test backends run only under --launcher ray")
    os.kill(parent.pid, signal.SIGKILL)
    os._exit(1)


class KillsItsWorkerOnceBackend(ReferenceBackend):
    """Kills its Ray worker the first time (marker file in ATTRBENCH_TEST_MARKER_DIR), then is the reference."""

    name = "ray-killer-once"
    description = "test: kills its Ray worker once, then is the reference"

    def attribute(self, prepared, settings):
        marker = Path(os.environ["ATTRBENCH_TEST_MARKER_DIR"]) / self.name
        if not marker.exists():
            marker.write_text("killed once")
            _kill_ray_worker()
        return super().attribute(prepared, settings)


class KillsItsWorkerBackend(ReferenceBackend):
    """Kills its Ray worker every time."""

    name = "ray-killer"
    description = "test: always kills its Ray worker"

    def attribute(self, prepared, settings):
        _kill_ray_worker()
        return super().attribute(prepared, settings)


@hookimpl
def register_backends(register):
    register(KillsItsWorkerOnceBackend())
    register(KillsItsWorkerBackend())
