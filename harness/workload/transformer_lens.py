"""The TransformerLens configuration of a workload's model, as circuit-tracer's replacement model needs it."""

from __future__ import annotations

from typing import Any

import torch

from attrbench.workload.build import BuiltWorkload
from attrbench.workload.families import transformer_lens_config as family_config


def transformer_lens_config(workload: BuiltWorkload, device: str, dtype: torch.dtype) -> Any:
    """The TransformerLens ``HookedTransformerConfig`` of the workload's model (what circuit-tracer's
    replacement model and its ``Graph.cfg`` need): hand-built per family
    (:func:`attrbench.workload.families.transformer_lens_config`)."""
    return family_config(workload.spec.model, max(256, len(workload.token_ids)), device, dtype)
