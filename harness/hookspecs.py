"""pluggy hook specifications of attrbench.

A plugin is any module or object with functions marked ``@attrbench.hookspecs.hookimpl``; third-party
plugins are found through the entry-point group ``attrbench`` (or named in ``ATTRBENCH_EXTRA_PLUGINS``).
Every hook takes a ``register`` callback that the plugin calls once per thing it provides, so one plugin
can provide several backends, reporters, trackers or launchers.
"""

from __future__ import annotations

from collections.abc import Callable

import pluggy

from attrbench.api import Backend, Launcher, Reporter, Tracker

PROJECT_NAME = "attrbench"

hookspec = pluggy.HookspecMarker(PROJECT_NAME)
hookimpl = pluggy.HookimplMarker(PROJECT_NAME)

#: a tracker factory: takes the device string ("cpu", "cuda:0"), returns a tracker or raises
TrackerFactory = Callable[[str], Tracker]


@hookspec
def register_backends(register: Callable[[Backend], None]) -> None:
    """Register attribution backends.

    :param register: call ``register(backend)`` once per :class:`attrbench.api.Backend` instance.
    """


@hookspec
def register_reporters(register: Callable[[Reporter], None]) -> None:
    """Register result reporters (table, markdown, csv, json, png, ...).

    :param register: call ``register(reporter)`` once per :class:`attrbench.api.Reporter` instance.
    """


@hookspec
def register_trackers(register: Callable[[TrackerFactory], None]) -> None:
    """Register measurement trackers that run around each benchmark cell in its own process.

    :param register: call ``register(tracker_factory)`` once per tracker; the factory takes the device
        string and returns an :class:`attrbench.api.Tracker` (``start()``, ``stop()``, ``results()``).
    """


@hookspec
def register_launchers(register: Callable[[Launcher], None]) -> None:
    """Register launchers that run benchmark cells (``attrbench run --launcher NAME``).

    :param register: call ``register(launcher)`` once per :class:`attrbench.api.Launcher` instance.
    """
