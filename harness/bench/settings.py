"""The settings of one benchmark run, defined once.

:class:`BenchSettings` travels unchanged from the command line to the plan, to every launcher and worker,
and into the results file (``settings``): a new knob is one field here and one option in
:mod:`attrbench.cli.options`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass, field, fields
from typing import Any

import psutil

from attrbench.api import AttributeSettings, Backend
from attrbench.progress import no_progress

#: settings that must match for a resumed cell to be reused
RESUME_KEYS = (
    "device",
    "dtype",
    "batch_size",
    "update_interval",
    "max_n_logits",
    "desired_logit_prob",
    "backend_options",
)


@dataclass(frozen=True)
class BenchSettings:
    """How every cell of a run attributes and is measured (the results file's ``settings``)."""

    device: str = "cpu"
    dtype: str = "float32"
    batch_size: int = 512
    update_interval: int = 4
    max_n_logits: int = 10
    desired_logit_prob: float = 0.95
    repeats: int = 1
    #: seconds the timed attribution of one cell may take
    timeout_s: float | None = None
    warmup: bool = True
    #: ``--option KEY=VALUE`` pairs; each backend gets its defaults updated with its own keys (:func:`options_for`)
    backend_options: dict[str, Any] = field(default_factory=dict)
    #: RLIMIT_DATA of each CPU cell's child in bytes, or None for no limit
    memory_limit_bytes: int | None = None
    #: do not launch cells predicted not to fit; record them as ``oom``
    strict: bool = False
    #: times a cell whose worker was lost (node died, process killed) is run again
    retries: int = 0

    def to_dict(self) -> dict[str, Any]:
        """The results file's ``settings`` object."""
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> BenchSettings:
        """The inverse of :meth:`to_dict` (unknown keys are ignored)."""
        names = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in names})

    def resumable_from(self, recorded: dict[str, Any]) -> bool:
        """Whether cells recorded under ``recorded`` settings measure the same thing as these."""
        mine = self.to_dict()
        return all(recorded.get(k) == mine.get(k) for k in RESUME_KEYS)

    def attribute_settings(
        self,
        nodes: int,
        scratch_dir: str | None = None,
        progress: Callable[[str], None] = no_progress,
        backend: Backend | None = None,
    ) -> AttributeSettings:
        """The backend-facing settings of one cell; with ``backend``, its options as :func:`options_for` gives."""
        options = options_for(backend, self.backend_options) if backend is not None else dict(self.backend_options)
        return AttributeSettings(
            max_feature_nodes=nodes,
            batch_size=self.batch_size,
            update_interval=self.update_interval,
            max_n_logits=self.max_n_logits,
            desired_logit_prob=self.desired_logit_prob,
            options=options,
            scratch_dir=scratch_dir,
            progress=progress,
        )


def options_for(backend: Backend, given: dict[str, Any]) -> dict[str, Any]:
    """The options ``backend`` receives: its declared defaults (:attr:`Backend.option_defaults`) updated with
    the given values of its own declared keys; keys other backends declare never reach it."""
    declared = backend.option_defaults
    return {**declared, **{k: v for k, v in given.items() if k in declared}}


def default_memory_limit(device: str) -> int | None:
    """Physical memory + swap for CPU cells; None (no limit) for CUDA, whose driver reserves huge virtual
    ranges.

    The limit is RLIMIT_DATA: private writable memory (heap and anonymous mappings, where torch's tensors
    live), reserved or not, but not file mappings, so a backend may memory-map a graph file larger than the
    limit (the lean edge store does at 70,000 nodes; RLIMIT_AS refused that mapping). A limit this tight
    makes circuit-tracer's 24.5 GiB ``torch.zeros`` edge matrix at 70,000 nodes fail at once with "can't
    allocate memory" (zero pages are not resident until written, so the kernel's OOM killer would only
    find the cell much later, after swapping).
    """
    if not str(device).startswith("cpu"):
        return None
    return int(psutil.virtual_memory().total + psutil.swap_memory().total)


def resolve_memory_limit(device: str, gib: float | None) -> int | None:
    """``--memory-limit`` in GiB -> bytes: None = default for the device, 0 = no limit."""
    if gib is None:
        return default_memory_limit(device)
    if gib == 0:
        return None
    return int(gib * 2**30)
