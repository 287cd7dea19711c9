"""The ``ray`` launcher: the same cells, spread over a Ray cluster (``pip install 'attrbench[ray]'``).

Each cell is one Ray task, and the task runs the cell exactly as the ``process`` launcher does on its node:
a fresh spawned child with the run's memory limit and ``--timeout``, so the peak memory and the wall time
belong to that cell alone. Timings stay honest because a cell holds a whole device for as long as it runs:

* a CPU cell asks for one unit of the custom resource ``attrbench_cell``, which every node offers exactly
  once (``ray start --resources='{"attrbench_cell": 1}'``; a local cluster started here gets it too), so
  no two timed cells share a machine;
* a CUDA cell asks for one whole GPU (``num_gpus=1``), so no two timed cells share a GPU.

Graphs never travel through the object store: every task writes its graph into the run's scratch folder
(``--scratch DIR``, which must be on a filesystem all nodes share, e.g. NFS; on one machine the default is
next to the results file) and the driver reads it from there for parity. A task whose worker dies (node
lost, process killed) comes back as ``worker lost``; the runner records it and retries it up to
``--retries`` times.
"""

from __future__ import annotations

import os
import sys
import threading
from collections.abc import Callable
from typing import Any

from attrbench.api import CellJob
from attrbench.errors import UsageError
from attrbench.hookspecs import hookimpl
from attrbench.plugins.launchers import ProcessLauncher

CELL_RESOURCE = "attrbench_cell"
#: environment the tasks get from the driver: attrbench's own variables, the offline hub, the import path
FORWARDED_PREFIXES = ("ATTRBENCH_", "HF_", "TRANSFORMERS_")


def run_cell_task(job: dict[str, Any], timeout_s: float | None, omp_threads: str | None) -> dict[str, Any]:
    """The body of one Ray task: the ``process`` launcher on this node; progress goes to the task's stderr
    (Ray forwards it to the driver).

    Ray sets ``OMP_NUM_THREADS=1`` in workers of tasks that ask for no CPUs; the cell holds the whole node,
    so its child gets the driver's setting back (or none: every core, as with the ``process`` launcher).
    """
    cell = CellJob(**job)
    if omp_threads is None:
        os.environ.pop("OMP_NUM_THREADS", None)
    else:
        os.environ["OMP_NUM_THREADS"] = omp_threads

    def progress(text: str) -> None:
        print(f"attrbench: {cell.backend} nodes={cell.nodes} repeat={cell.repeat}: {text}", file=sys.stderr, flush=True)

    return ProcessLauncher().run(cell, timeout_s, progress)


class RayLauncher:
    """Cells as Ray tasks, each holding one node's ``attrbench_cell`` resource (CPU) or one GPU (CUDA)."""

    name = "ray"
    description = "each cell a Ray task on a cluster (--ray-address) or a local Ray instance, one cell per device"

    def __init__(self) -> None:
        self.address: str | None = None
        self._lock = threading.Lock()
        self._outstanding: set[Any] = set()
        self._remote: Any = None
        self._ray: Any = None

    def configure(self, address: str | None = None) -> None:
        """Connect to ``address`` (``ray start --head`` prints it) or start a local Ray instance."""
        self.address = address
        self._connect()

    def _connect(self) -> Any:
        if self._ray is not None:
            return self._ray
        try:
            import ray
        except ImportError:
            raise UsageError("--launcher ray needs Ray: pip install 'attrbench[ray]'") from None
        env = {k: v for k, v in os.environ.items() if k.startswith(FORWARDED_PREFIXES)}
        env["PYTHONPATH"] = os.pathsep.join(p for p in [env.get("PYTHONPATH", ""), *sys.path] if p)
        if not ray.is_initialized():
            kwargs: dict[str, Any] = {
                "runtime_env": {"env_vars": env},
                "log_to_driver": True,
                "include_dashboard": False,
            }
            if self.address:
                ray.init(address=self.address, **kwargs)
            else:
                # a local instance: this machine is one node, offering one cell slot
                ray.init(resources={CELL_RESOURCE: 1}, **kwargs)
        self._ray = ray
        self._remote = ray.remote(max_retries=0)(run_cell_task)
        return ray

    def slots(self) -> int:
        """Cells that can run at once: nodes offering ``attrbench_cell`` (or GPUs, for CUDA runs)."""
        ray = self._connect()
        resources = ray.cluster_resources()
        return int(max(resources.get(CELL_RESOURCE, 0), resources.get("GPU", 0), 1))

    def run(
        self, job: CellJob, timeout_s: float | None, progress: Callable[[str], None] | None = None
    ) -> dict[str, Any]:
        ray = self._connect()
        cuda = str(job.settings.get("device", "cpu")).startswith("cuda")
        resources = {"num_cpus": 0, "num_gpus": 1} if cuda else {"num_cpus": 0, "resources": {CELL_RESOURCE: 1}}
        if not cuda and ray.cluster_resources().get(CELL_RESOURCE, 0) < 1:
            raise UsageError(
                f"the Ray cluster offers no {CELL_RESOURCE!r} resource: start each node with "
                f"ray start --resources='{{\"{CELL_RESOURCE}\": 1}}'"
            )
        ref = self._remote.options(**resources).remote(job.to_dict(), timeout_s, os.environ.get("OMP_NUM_THREADS"))
        with self._lock:
            self._outstanding.add(ref)
        try:
            return dict(ray.get(ref))
        except ray.exceptions.TaskCancelledError:
            return {"status": "error", "error": "cancelled (the run was interrupted)"}
        except ray.exceptions.RayTaskError as exc:  # our own code failed inside the task
            return {"status": "error", "error": f"ray task failed: {str(exc).strip().splitlines()[-1]}"}
        except ray.exceptions.RayError as exc:  # the worker or its node died mid-cell
            return {"status": "error", "error": f"worker lost ({type(exc).__name__})", "worker_lost": True}
        finally:
            with self._lock:
                self._outstanding.discard(ref)

    def cancel(self) -> None:
        """Cancel every outstanding task (Ctrl-C); finished cells are already recorded."""
        if self._ray is None:
            return
        with self._lock:
            refs = list(self._outstanding)
        for ref in refs:
            try:
                self._ray.cancel(ref, force=True)
            except Exception:  # already finished or its worker is gone
                pass


@hookimpl
def register_launchers(register: Callable[[RayLauncher], None]) -> None:
    """The ``ray`` launcher (Ray itself is imported only when it is used)."""
    register(RayLauncher())
