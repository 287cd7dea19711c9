"""The plugin manager: built-in plugins first, then third-party ones from the ``attrbench`` entry points,
then modules named in ``ATTRBENCH_EXTRA_PLUGINS``; ``check_pending`` so a misspelled hook fails loudly.

Hooks are called through pluggy, one plugin at a time: a plugin that fails at any hook is reported (by
name, hook and exception type) and skipped, and the others still register.
"""

from __future__ import annotations

import importlib
import json
import os
import sys
from dataclasses import replace
from functools import lru_cache
from importlib.metadata import entry_points
from typing import Any

import pluggy

from attrbench import hookspecs
from attrbench.api import Backend, Launcher, Reporter
from attrbench.hookspecs import TrackerFactory

BUILTIN_PLUGINS = (
    "attrbench.backends.reference",
    "attrbench.backends.autodiff_free",
    "attrbench.backends.causal_trick",
    "attrbench.backends.gqa_shared",
    "attrbench.backends.approximate_pruned",
    "attrbench.plugins.reporters",
    "attrbench.plugins.trackers",
    "attrbench.plugins.launchers",
    "attrbench.plugins.ray_launcher",
)


def _load_entry_point_plugins(pm: pluggy.PluginManager, warnings: list[str]) -> None:
    """Register each entry-point plugin; one that fails to import is reported by name and skipped."""
    for ep in entry_points(group=hookspecs.PROJECT_NAME):
        if pm.get_plugin(ep.name) is not None or pm.is_blocked(ep.name):
            continue
        try:
            plugin = ep.load()
            pm.register(plugin, name=ep.name)
        except Exception as exc:  # a broken third-party plugin must not take the built-ins down
            warnings.append(
                f"plugin {ep.name!r} ({ep.value}) failed to load and was skipped: {type(exc).__name__}: {exc}"
            )


@lru_cache(maxsize=1)
def get_plugin_manager() -> pluggy.PluginManager:
    """The process-wide plugin manager (built-ins, then entry points, then ``check_pending``)."""
    pm = pluggy.PluginManager(hookspecs.PROJECT_NAME)
    pm.add_hookspecs(hookspecs)
    for module_name in BUILTIN_PLUGINS:
        pm.register(importlib.import_module(module_name), name=module_name)
    pm.load_warnings = []  # type: ignore[attr-defined]
    _load_entry_point_plugins(pm, pm.load_warnings)  # type: ignore[attr-defined]
    # Extra plugin modules named in ATTRBENCH_EXTRA_PLUGINS (comma-separated import paths): registered after
    # the built-ins and entry points, in every process (the runner's spawned children inherit the variable).
    for module_name in filter(None, (m.strip() for m in os.environ.get("ATTRBENCH_EXTRA_PLUGINS", "").split(","))):
        if pm.get_plugin(module_name) is not None:
            continue
        try:
            pm.register(importlib.import_module(module_name), name=module_name)
        except Exception as exc:  # reported by name and skipped, like a broken entry point
            pm.load_warnings.append(  # type: ignore[attr-defined]
                f"plugin {module_name!r} (ATTRBENCH_EXTRA_PLUGINS) failed to load and was skipped: "
                f"{type(exc).__name__}: {exc}"
            )
    pm.check_pending()
    return pm


def plugin_warnings() -> list[str]:
    """Messages about third-party plugins that were skipped."""
    return list(getattr(get_plugin_manager(), "load_warnings", []))


def _collect(hook_name: str) -> list[Any]:
    """Call ``hook_name`` through pluggy once per implementing plugin; a failing plugin is reported and skipped."""
    pm = get_plugin_manager()
    warnings = pm.load_warnings  # type: ignore[attr-defined]
    items: list[Any] = []
    for impl in getattr(pm.hook, hook_name).get_hookimpls():
        others = [p for p in pm.get_plugins() if p is not impl.plugin]
        collected: list[Any] = []
        try:
            pm.subset_hook_caller(hook_name, remove_plugins=others)(register=collected.append)
        except Exception as exc:
            message = f"plugin {impl.plugin_name!r} failed in {hook_name} and was skipped: {type(exc).__name__}: {exc}"
            if message not in warnings:
                warnings.append(message)
            continue
        items.extend(collected)
    return items


class VariantBackend(Backend):
    """A registered backend with some options fixed: ``NAME@KEY=VALUE[;KEY=VALUE...]``.

    Variants let one run compare settings of a backend side by side (a sweep of approximate-pruned's
    ``approx_threshold``, say): each variant is its own column of cells, named by its label.
    """

    def __init__(self, label: str, base: Backend, options: dict):
        self.name = label
        self.base = base
        self.fixed_options = options
        self.exact, self.devices, self.dtypes = base.exact, base.devices, base.dtypes
        self.yardstick = None  # a variant is compared with the yardsticks, never one itself
        self.description = f"{base.name} with {options}"
        self.option_defaults = {**base.option_defaults, **options}

    def prepare(self, workload, device, dtype):
        return self.base.prepare(workload, device, dtype)

    def attribute(self, prepared, settings):
        return self.base.attribute(prepared, replace(settings, options={**settings.options, **self.fixed_options}))


class BackendRegistry(dict):
    """Registered backends by name; looking up ``NAME@KEY=VALUE;...`` gives a :class:`VariantBackend`."""

    def _variant(self, label: str) -> Backend | None:
        name, _, spec = label.partition("@")
        if not spec or not dict.__contains__(self, name):
            return None
        options = {}
        for item in spec.split(";"):
            key, sep, value = item.partition("=")
            if not sep or not key:
                return None
            try:
                options[key] = json.loads(value)
            except ValueError:
                options[key] = value
        return VariantBackend(label, self[name], options)

    def __missing__(self, label: str) -> Backend:
        variant = self._variant(label)
        if variant is None:
            raise KeyError(label)
        return variant

    def __contains__(self, label: object) -> bool:
        return dict.__contains__(self, label) or (isinstance(label, str) and self._variant(label) is not None)

    def get(self, label, default=None):
        return self[label] if label in self else default


def get_backends() -> BackendRegistry:
    """Every registered backend by name, built-ins first, in registration order."""
    warnings = get_plugin_manager().load_warnings  # type: ignore[attr-defined]
    backends = BackendRegistry()
    for backend in _collect("register_backends"):
        if backend.name in backends:
            warnings.append(f"backend name {backend.name!r} registered twice; the first one is kept")
            continue
        backends[backend.name] = backend
    return backends


def get_reporters() -> dict[str, Reporter]:
    """Every registered reporter by format name."""
    return {r.format: r for r in _collect("register_reporters")}


def get_tracker_factories() -> list[TrackerFactory]:
    """Every registered tracker factory."""
    return _collect("register_trackers")


def get_launchers() -> dict[str, Launcher]:
    """Every registered launcher by name."""
    return {launcher.name: launcher for launcher in _collect("register_launchers")}


def report_plugin_warnings(stream=None) -> None:
    """Print every plugin warning on ``stream`` (default: the current ``sys.stderr``)."""
    for message in plugin_warnings():
        print(f"attrbench: warning: {message}", file=stream if stream is not None else sys.stderr)
