"""Running the (nodes, repeat) groups of a plan: one after another, or several at once.

Within a group the cells run in order (the yardsticks first, so that every other cell finds its
yardstick's graph); different groups are independent. A launcher that can run several cells at once,
each on its own device (:meth:`attrbench.api.Launcher.slots` > 1, e.g. ``ray`` on a cluster), gets that many
groups in flight; the ``process`` launcher runs one cell at a time.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from concurrent.futures import FIRST_EXCEPTION, ThreadPoolExecutor, wait
from typing import Any, TypeVar

from attrbench.api import CellJob, Launcher

G = TypeVar("G")


def launcher_slots(launcher: Launcher) -> int:
    """How many cells ``launcher`` runs at once (1 unless it says otherwise)."""
    slots = getattr(launcher, "slots", None)
    return max(1, int(slots())) if callable(slots) else 1


def run_groups(groups: Sequence[G], run_group: Callable[[G], None], launcher: Launcher) -> None:
    """``run_group`` over ``groups``, at most ``launcher_slots(launcher)`` at a time.

    On Ctrl-C the launcher's outstanding cells are cancelled (its ``cancel()``, when it has one) and
    ``KeyboardInterrupt`` is raised again; an exception in any group is raised after the others stop.
    """
    slots = min(launcher_slots(launcher), len(groups))
    if slots <= 1:
        for group in groups:
            run_group(group)
        return
    pool = ThreadPoolExecutor(max_workers=slots, thread_name_prefix="attrbench-group")
    futures = [pool.submit(run_group, group) for group in groups]
    try:
        done, _ = wait(futures, return_when=FIRST_EXCEPTION)
        for future in done:
            future.result()
    except BaseException:
        for future in futures:
            future.cancel()
        cancel = getattr(launcher, "cancel", None)
        if callable(cancel):
            cancel()
        raise
    finally:
        pool.shutdown(wait=True, cancel_futures=True)


def run_with_retries(
    launcher: Launcher,
    job: CellJob,
    timeout_s: float | None,
    progress: Callable[[str], None],
    retries: int,
    on_lost: Callable[[dict[str, Any], int], bool],
) -> dict[str, Any]:
    """``launcher.run(job)``, again up to ``retries`` times while its worker is lost (``worker_lost``).

    ``on_lost(values, attempt)`` is told of each lost worker before the retry and returns False to stop
    retrying (the run is being interrupted).
    """
    for attempt in range(1, retries + 2):
        values = launcher.run(job, timeout_s, progress=progress)
        if not values.pop("worker_lost", False) or attempt > retries or not on_lost(values, attempt):
            return values
    raise AssertionError("unreachable")
