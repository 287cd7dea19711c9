"""attrbench: benchmark harness and fast backends for circuit-tracer attribution graphs."""

__version__ = "0.1.0"
