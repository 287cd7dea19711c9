"""An exclusive lock on a results file, so that two runs never write the same ``--output``.

The lock is ``flock`` on a sidecar ``.NAME.lock`` next to the output (the output itself is replaced on every
write, so its inode cannot carry a lock). The holder writes its pid into it and removes it on release; a
run killed with SIGKILL leaves the file, but the kernel drops the lock, so the next run takes it over.
"""

from __future__ import annotations

import fcntl
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from attrbench.errors import UsageError


def lock_path(output: Path) -> Path:
    return output.with_name(f".{output.name}.lock")


@contextmanager
def output_lock(output: Path | None) -> Iterator[None]:
    """Hold an exclusive lock on ``output`` for the ``with`` block; another holder is one UsageError line."""
    if output is None:
        yield
        return
    path = lock_path(Path(output))
    while True:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            try:
                holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "?"
            finally:
                os.close(fd)
            raise UsageError(
                f"another attrbench run (pid {holder}) is writing {output}; wait for it or choose another --output"
            ) from None
        try:
            same = os.fstat(fd).st_ino == os.stat(path).st_ino  # not unlinked by a releasing holder meanwhile
        except FileNotFoundError:
            same = False
        if same:
            break
        os.close(fd)
    try:
        os.ftruncate(fd, 0)
        os.pwrite(fd, str(os.getpid()).encode(), 0)
        yield
    finally:
        try:
            os.unlink(path)
        except OSError:
            pass
        os.close(fd)
