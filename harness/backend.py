"""What a backend is and what it returns.

A backend turns a built workload into an attribution graph with the content of circuit-tracer's
``Graph``: the same node order (selected features, error nodes layer-major, token nodes, logit nodes) and
a dense ``[target, source]`` adjacency.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, ClassVar

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
    ``adjacency_matrix`` is ``[N, N]`` with N = selected + n_layers * n_pos + n_pos + n_logits.
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

    name: ClassVar[str]
    exact: ClassVar[bool] = True
    devices: ClassVar[tuple[str, ...]] = ("cpu", "cuda")
    dtypes: ClassVar[tuple[str, ...]] = ("float32", "bfloat16")
    description: ClassVar[str] = ""
    #: options accepted in ``AttributeSettings.options`` with their defaults
    option_defaults: ClassVar[dict[str, Any]] = {}

    def prepare(self, workload: Any, device: str, dtype: torch.dtype) -> Any:
        """Build whatever :meth:`attribute` needs from a :class:`attrbench.workload.BuiltWorkload`."""
        raise NotImplementedError

    def attribute(self, prepared: Any, settings: AttributeSettings) -> AttributionResult:
        """Compute the attribution graph for the workload's prompt."""
        raise NotImplementedError

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
