"""Placeholder: being written."""

from attrbench.hookspecs import hookimpl


@hookimpl
def register_reporters(register):
    """Registers nothing yet."""
