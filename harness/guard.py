"""Hostile input, checked once: bounded reads of input files and every environment variable attrbench reads.

Every check raises :class:`attrbench.errors.UsageError` with one line naming the file or the variable, so
the CLI turns it into exit code 2. :func:`check_environment` validates all variables at start-up; the
accessors below are what the rest of the code calls (they validate again, cheaply, in child processes).
"""

from __future__ import annotations

import math
import os
import stat
from pathlib import Path

from attrbench.errors import UsageError

#: the most bytes read from a results file, workload file or other JSON input
MAX_INPUT_BYTES = 64 * 2**20

PROGRESS_ENV = "ATTRBENCH_PROGRESS_INTERVAL"
CACHE_ENV = "ATTRBENCH_CACHE"
GRAPH_DIR_ENV = "ATTRBENCH_GRAPH_DIR"
#: ``0``: parity skips the pruned-node Jaccard above 30,000 nodes (default: computed at every size)
LARGE_PRUNE_PARITY_ENV = "ATTRBENCH_LARGE_PRUNE_PARITY"

#: ATTRBENCH_PROGRESS_INTERVAL may be 0 (off) up to one day
MAX_PROGRESS_INTERVAL_S = 86_400.0


def read_text_bounded(path: str | os.PathLike, what: str, limit: int = MAX_INPUT_BYTES) -> str:
    """The text of a regular file of at most ``limit`` bytes; anything else is one UsageError line.

    A device (``/dev/zero``), a FIFO or a file that grows past the limit is refused without reading more
    than ``limit + 1`` bytes.
    """
    p = Path(path)
    try:
        st = p.stat()
    except FileNotFoundError:
        raise UsageError(f"{what} {p} does not exist") from None
    except OSError as exc:
        raise UsageError(f"{what} {p} cannot be read: {exc.strerror or exc}") from None
    if stat.S_ISDIR(st.st_mode):
        raise UsageError(f"{what} {p} is a directory, not a file")
    if not stat.S_ISREG(st.st_mode):
        raise UsageError(f"{what} {p} is not a regular file")
    if st.st_size > limit:
        raise UsageError(f"{what} {p} is {st.st_size:,} bytes, more than the {limit:,} bytes attrbench reads")
    try:
        with open(p, "rb") as f:
            data = f.read(limit + 1)
    except OSError as exc:
        raise UsageError(f"{what} {p} cannot be read: {exc.strerror or exc}") from None
    if len(data) > limit:
        raise UsageError(f"{what} {p} is more than the {limit:,} bytes attrbench reads")
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        raise UsageError(f"{what} {p} is not UTF-8 text") from None


def env_float(name: str, default: float, low: float, high: float) -> float:
    """A numeric environment variable: finite, in ``[low, high]``, or one UsageError line naming it."""
    text = os.environ.get(name, "").strip()
    if not text:
        return default
    try:
        value = float(text)
    except ValueError:
        raise UsageError(f"{name}={text!r} is not a number") from None
    if not math.isfinite(value) or not low <= value <= high:
        raise UsageError(f"{name}={text!r} must be a finite number of seconds in [{low:g}, {high:g}]")
    return value


def progress_interval_s() -> float:
    """``$ATTRBENCH_PROGRESS_INTERVAL`` (default 30 s; 0 = off)."""
    return env_float(PROGRESS_ENV, 30.0, 0.0, MAX_PROGRESS_INTERVAL_S)


def env_folder(name: str) -> Path | None:
    """A folder named by an environment variable, created if needed and writable; None when unset."""
    text = os.environ.get(name)
    if text is None or text == "":
        return None
    if "\x00" in text:
        raise UsageError(f"{name} contains a NUL byte")
    path = Path(text)
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise UsageError(f"{name}={text!r} is not a usable folder: {exc.strerror or exc}") from None
    if not path.is_dir():
        raise UsageError(f"{name}={text!r} is not a folder")
    if not os.access(path, os.W_OK | os.X_OK):
        raise UsageError(f"{name}={text!r} is not writable")
    return path


def check_environment() -> None:
    """Validate every environment variable attrbench reads (one UsageError line naming the first bad one)."""
    progress_interval_s()
    env_folder(CACHE_ENV)
    env_folder(GRAPH_DIR_ENV)
    flag = os.environ.get(LARGE_PRUNE_PARITY_ENV)
    if flag not in (None, "", "0", "1"):
        raise UsageError(f"{LARGE_PRUNE_PARITY_ENV}={flag!r} must be 0 or 1")
