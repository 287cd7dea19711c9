"""A third-party plugin that imports fine but fails in its reporter and tracker hooks."""

from attrbench.hookspecs import hookimpl


@hookimpl
def register_reporters(register):
    raise ValueError("reporter hook broken on purpose")


@hookimpl
def register_trackers(register):
    raise KeyError("tracker hook broken on purpose")
