"""pluggy hook specifications of attrbench.

A plugin is any module or object with functions marked ``@attrbench.hookimpl``; third-party plugins are
found through the entry-point group ``attrbench``. Every hook takes a ``register`` callback that the
plugin calls once per thing it provides, so one plugin can provide several backends, reporters or
trackers.
"""

from __future__ import annotations

from typing import Callable

import pluggy

PROJECT_NAME = "attrbench"

hookspec = pluggy.HookspecMarker(PROJECT_NAME)
hookimpl = pluggy.HookimplMarker(PROJECT_NAME)


@hookspec
def register_backends(register: Callable) -> None:
    """Register attribution backends.

    :param register: call ``register(backend)`` once per :class:`attrbench.backend.Backend` instance.
    """


@hookspec
def register_reporters(register: Callable) -> None:
    """Register result reporters (table, markdown, csv, json, png, ...).

    :param register: call ``register(reporter)`` once per :class:`attrbench.reporting.Reporter`.
    """


@hookspec
def register_trackers(register: Callable) -> None:
    """Register measurement trackers that run around each benchmark cell in its child process.

    :param register: call ``register(tracker_factory)`` once per tracker; the factory takes the device
        string and returns an object with ``start()``, ``stop()`` and ``results() -> dict``.
    """
