"""circuit-tracer interop: an :class:`attrbench.api.AttributionResult` as circuit-tracer's ``Graph``."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import torch

from attrbench.api import AttributionResult
from attrbench.workload.build import build_tokenizer
from attrbench.workload.transformer_lens import transformer_lens_config


def _tl_workload(workload: Any, result: AttributionResult) -> Any:
    """Something ``transformer_lens_config`` accepts: a BuiltWorkload, or a spec with the result's tokens."""
    if hasattr(workload, "spec") and hasattr(workload, "token_ids"):
        return workload
    return SimpleNamespace(spec=workload, token_ids=result.input_tokens)


def tokenizer_for(workload: Any) -> Any:
    """The workload's tokenizer (built workloads carry theirs; a spec gets the local word-level one)."""
    tok = getattr(workload, "tokenizer", None)
    if tok is not None:
        return tok
    spec = workload.spec if hasattr(workload, "spec") else workload
    return build_tokenizer(spec.model.vocab_size)[0]


def to_circuit_tracer_graph(result: AttributionResult, workload: Any):
    """The result as a ``circuit_tracer.graph.Graph``.

    ``workload`` is a :class:`attrbench.workload.build.BuiltWorkload` or a
    :class:`attrbench.workload.spec.WorkloadSpec` (then the local word-level tokenizer is loaded; no weights
    are built).
    """
    from circuit_tracer.attribution.targets import LogitTarget
    from circuit_tracer.graph import Graph

    spec = workload.spec if hasattr(workload, "spec") else workload
    cfg = transformer_lens_config(_tl_workload(workload, result), "cpu", torch.float32)
    tokenizer = tokenizer_for(workload)
    ids = [int(i) for i in result.logit_token_ids.tolist()]
    targets = [LogitTarget(token_str=tokenizer.decode([i]), vocab_idx=i) for i in ids]
    return Graph(
        input_string=tokenizer.decode(result.input_tokens.tolist()),
        input_tokens=result.input_tokens,
        active_features=result.active_features,
        adjacency_matrix=result.adjacency_matrix,
        cfg=cfg,
        selected_features=result.selected_features,
        activation_values=result.activation_values,
        logit_targets=targets,
        logit_probabilities=result.logit_probabilities,
        scan=f"attrbench-{spec.content_hash()}",
        vocab_size=spec.model.vocab_size,
    )
