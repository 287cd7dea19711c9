"""Helpers shared by the test modules: running the CLI in a subprocess with the test plugins importable.

(A module of its own, not conftest.py: with tests/benchmarks/conftest.py also present, ``import conftest``
would be ambiguous.)
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

TESTS_DIR = Path(__file__).resolve().parent

TEST_PLUGINS = "plugins_for_tests"
BROKEN_PLUGIN = "broken_plugin_for_tests"


def subprocess_env(extra_plugins: str | None = TEST_PLUGINS, **more: str) -> dict[str, str]:
    """Environment for running ``attrbench`` in a subprocess with the test plugins importable."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(TESTS_DIR), env.get("PYTHONPATH")]))
    env["HF_HUB_OFFLINE"] = "1"
    if extra_plugins:
        env["ATTRBENCH_EXTRA_PLUGINS"] = extra_plugins
    else:
        env.pop("ATTRBENCH_EXTRA_PLUGINS", None)
    env.update(more)
    return env


def run_cli(
    args: list[str], env: dict[str, str] | None = None, timeout: float = 600, **kw
) -> subprocess.CompletedProcess:
    """``python -m attrbench.cli ARGS`` in a subprocess."""
    return subprocess.run(
        [sys.executable, "-m", "attrbench.cli", *args],
        capture_output=True,
        text=True,
        env=env if env is not None else subprocess_env(),
        timeout=timeout,
        **kw,
    )


def invoke(capsys, args: list[str]) -> tuple[int, str, str]:
    """Run the CLI in this process; its exit code, stdout and stderr."""
    import pytest

    from attrbench.cli import main

    with pytest.raises(SystemExit) as exc:
        main(args)
    out, err = capsys.readouterr()
    return exc.value.code, out, err
