"""Shared fixtures: offline environment, test plugins, one reference run reused by several test modules."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import pytest

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

TESTS_DIR = Path(__file__).resolve().parent
if str(TESTS_DIR) not in sys.path:
    sys.path.insert(0, str(TESTS_DIR))  # spawned children inherit sys.path, subprocesses get PYTHONPATH below

from cli_helpers import TEST_PLUGINS, run_cli, subprocess_env  # noqa: E402,F401


@pytest.fixture
def extra_plugins(monkeypatch):
    """Make the test backends known to this process's plugin manager (and to spawned children)."""
    from attrbench.plugin_manager import get_plugin_manager

    def use(modules: str = TEST_PLUGINS):
        monkeypatch.setenv("ATTRBENCH_EXTRA_PLUGINS", modules)
        get_plugin_manager.cache_clear()
        return get_plugin_manager()

    try:
        yield use
    finally:
        monkeypatch.delenv("ATTRBENCH_EXTRA_PLUGINS", raising=False)
        get_plugin_manager.cache_clear()


@pytest.fixture(scope="session")
def reference_run(tmp_path_factory):
    """``attrbench run --backends reference --nodes 200,800`` on tiny, once per session.

    Returns (completed process, results dict, results path).
    """
    out = tmp_path_factory.mktemp("reference") / "r.json"
    proc = run_cli(
        ["run", "--backends", "reference", "--nodes", "200,800", "--output", str(out)], env=subprocess_env(None)
    )
    data = json.loads(out.read_text()) if out.exists() else None
    return proc, data, out


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Every test under tests/cli/ runs ``attrbench`` in subprocesses: it is ``slow``
    (``pytest -m "not slow"`` runs the unit and in-process integration tests only)."""
    cli_dir = TESTS_DIR / "cli"
    for item in items:
        if cli_dir in Path(str(item.fspath)).parents:
            item.add_marker(pytest.mark.slow)
