"""Errors the CLI turns into one clear line and exit code 2."""


class UsageError(Exception):
    """Bad user input: a flag, a workload file, a results file. The message names the problem and the fix."""


class NotComparableError(UsageError):
    """Two results files cannot be compared (different workload, dtype, device kind or backend set)."""
