"""The public API of attrbench: what plugins implement and what they receive.

* :class:`Backend` turns a built workload into an attribution graph (:class:`AttributionResult`) with the
  content of circuit-tracer's ``Graph``: the same node order (selected features, error nodes layer-major,
  token nodes, logit nodes) and a ``[target, source]`` adjacency. It declares what the harness needs:
  exact or approximate, devices and dtypes, options, whether it is a yardstick, and its cost model.
* :class:`Tracker` measures something around the timed attribution of one cell (in the cell's process).
* :class:`Reporter` turns results documents into text or bytes.
* :class:`Launcher` runs one :class:`CellJob` somewhere and returns its measured values.

Each is registered through a hook of :mod:`attrbench.hookspecs`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any, Protocol

import torch

from attrbench.progress import no_progress


@dataclass
class AttributeSettings:
    """circuit-tracer's ``attribute()`` knobs plus backend-specific options."""

    max_feature_nodes: int | None = None
    batch_size: int = 512
    update_interval: int = 4
    max_n_logits: int = 10
    desired_logit_prob: float = 0.95
    #: the backend's own ``option_defaults`` updated with the run's values of its declared keys only
    #: (:func:`attrbench.bench.settings.options_for`)
    options: dict[str, Any] = field(default_factory=dict)
    #: where a backend may write large files (e.g. an adjacency too big to hold in memory)
    scratch_dir: str | None = None
    #: called with one short status line (e.g. ``"feature rows 12,288/70,000"``) as work proceeds; the
    #: caller decides how often to show it (:class:`attrbench.progress.ProgressLine`), so report freely
    progress: Callable[[str], None] = no_progress


@dataclass
class AttributionResult:
    """The content of a circuit-tracer ``Graph`` plus timing.

    ``active_features`` is ``[n_active, 3]`` (layer, position, feature index) in circuit-tracer's order
    (layer, then position, then feature); ``selected_features`` indexes into it, ascending.
    ``adjacency_matrix`` is ``[N, N]`` (``[target, source]``, finite floats) with
    N = selected + n_layers * n_pos + n_pos + n_logits, nodes in circuit-tracer's order: selected features,
    error nodes layer-major, token nodes, logit nodes. ``selected_features`` is sorted, unique and at most
    ``max_feature_nodes``; ``logit_token_ids`` lie in the vocabulary. :mod:`attrbench.graph.validate` checks
    all of it: a result that breaks it is recorded ``invalid`` and never written by ``attrbench attribute``.
    """

    input_tokens: torch.Tensor
    logit_token_ids: torch.Tensor
    logit_probabilities: torch.Tensor
    active_features: torch.Tensor
    activation_values: torch.Tensor
    selected_features: torch.Tensor
    adjacency_matrix: torch.Tensor
    n_layers: int
    phases_s: dict[str, float] = field(default_factory=dict)
    info: dict[str, Any] = field(default_factory=dict)
    #: the ``.npy`` file the adjacency is memory-mapped from, when the backend wrote it to disk
    adjacency_file: str | None = None

    @property
    def n_pos(self) -> int:
        return int(self.input_tokens.shape[0])

    @property
    def n_logits(self) -> int:
        return int(self.logit_token_ids.shape[0])


class Backend:
    """Base class of attribution backends.

    Subclasses set the class attributes and implement :meth:`prepare` and :meth:`attribute`.
    ``prepare`` is untimed set-up that depends only on the workload (weights moved to the device,
    layouts chosen); ``attribute`` is the timed attribution of one prompt.
    """

    # declared by each backend class (a variant of a backend sets them per instance)
    name: str
    exact: bool = True
    devices: tuple[str, ...] = ("cpu", "cuda")
    dtypes: tuple[str, ...] = ("float32", "bfloat16")
    description: str = ""
    #: options accepted in ``AttributeSettings.options`` with their defaults
    option_defaults: dict[str, Any] = {}
    #: rank among the yardsticks every other backend is compared with: 0 is the truth (circuit-tracer
    #: itself), 1 stands in where 0 did not complete; None (the default) for a backend that is not one
    yardstick: int | None = None

    def prepare(self, workload: Any, device: str, dtype: torch.dtype) -> Any:
        """Build whatever :meth:`attribute` needs from a :class:`attrbench.workload.build.BuiltWorkload`."""
        raise NotImplementedError

    def attribute(self, prepared: Any, settings: AttributeSettings) -> AttributionResult:
        """Compute the attribution graph for the workload's prompt."""
        raise NotImplementedError

    def cost_model(self) -> str | None:
        """The cost model :mod:`attrbench.bench.estimate` predicts this backend's memory and time with.

        One of :data:`attrbench.bench.estimate.COST_MODELS` (``"autograd"``: circuit-tracer's loop; ``"vjp"``,
        ``"vjp-causal"``, ``"vjp-causal-gqa"``, ``"vjp-causal-gqa-pruned"``: the exact engine's rungs). The
        default, None, means "cannot be estimated": ``estimate`` says so instead of guessing.
        """
        return None

    def properties(self) -> dict[str, Any]:
        """The declared properties, as ``list-backends`` prints them."""
        return {
            "name": self.name,
            "exact": self.exact,
            "devices": list(self.devices),
            "dtypes": list(self.dtypes),
            "description": self.description,
            "options": dict(self.option_defaults),
        }


@dataclass(frozen=True)
class CellJob:
    """Everything a worker needs for one benchmark cell; plain data, so any launcher can ship it."""

    #: the workload spec (:meth:`attrbench.workload.spec.WorkloadSpec.to_dict`)
    spec: dict[str, Any]
    backend: str
    nodes: int
    repeat: int
    #: the run's settings (:meth:`attrbench.bench.settings.BenchSettings.to_dict`)
    settings: dict[str, Any]
    #: the folder the cell's graph is written to (a generated name, never derived from a label)
    graph_dir: str

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


class Tracker(Protocol):
    """Measures something around one cell's timed attribution, in the cell's own process.

    A tracker factory (registered with ``register_trackers``) takes the device string and returns a
    tracker, or raises when it cannot measure there. ``results()`` returns values keyed like the results
    file's cell (``peak_host_bytes``, ``peak_gpu_bytes``, ``peak_gpu_torch_bytes``; any other key goes to
    ``info.measurement``) plus an optional ``sources`` dict saying where each value came from.
    """

    def start(self) -> None: ...

    def stop(self) -> None: ...

    def results(self) -> dict[str, Any]: ...


class Reporter:
    """Base class of reporters: renders results documents (schema 1, as ``attrbench run`` writes them).

    Set :attr:`format` (the ``--format`` name), :attr:`binary` for bytes output, and implement :meth:`render`.
    """

    format: str = ""
    binary: bool = False
    description: str = ""

    def render(self, results: list[dict[str, Any]]) -> str | bytes:
        """Render one or more results documents."""
        raise NotImplementedError


class Launcher(Protocol):
    """Runs benchmark cells somewhere (``--launcher NAME``) and returns what the worker measured.

    :meth:`run` runs :func:`attrbench.bench.worker.run_job` for ``job`` in isolation (its own process, on
    a device no other timed cell uses), enforces ``timeout_s`` on the timed attribution, forwards the
    worker's progress lines to ``progress``, and returns the worker's values plus ``status`` (``ok``,
    ``error``, ``oom``, ``timeout``), ``error`` and, for a failure, ``traceback``; ``worker_lost: True``
    when the cell's worker died (the runner records it and retries it up to ``--retries`` times).

    Optional methods the runner uses when present: ``configure(**options)`` (launcher options from the
    command line, e.g. ``address``), ``slots() -> int`` (cells it can run at once, each on its own device;
    default 1, and the runner then keeps that many (nodes, repeat) groups in flight) and ``cancel()``
    (stop every outstanding cell, on Ctrl-C). ``run`` may then be called from several threads at once.
    """

    name: str
    description: str

    def run(
        self, job: CellJob, timeout_s: float | None, progress: Callable[[str], None] | None = None
    ) -> dict[str, Any]: ...
