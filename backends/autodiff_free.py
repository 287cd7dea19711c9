"""autodiff-free: circuit-tracer's algorithm with hand-written VJPs and no autograd.

Everything is :class:`attrbench.backends.exact.engine.ExactBackend` as it stands: full-length backward passes,
one V projection per query head, circuit-tracer's own influence ranking.
"""

from attrbench.backends.exact.engine import ExactBackend
from attrbench.hookspecs import hookimpl


class AutodiffFreeBackend(ExactBackend):
    name = "autodiff-free"
    description = "hand-written VJPs through the frozen linearised model, no torch.autograd"
    yardstick: int | None = 1  # stands in for the reference where circuit-tracer cannot run (out of memory)

    def cost_model(self) -> str | None:
        return "vjp"


@hookimpl
def register_backends(register):
    register(AutodiffFreeBackend())
