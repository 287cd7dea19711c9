"""The result contract, checked: a graph that breaks it is never recorded ``ok`` nor written for real use.

:func:`result_problems` lists every way an :class:`attrbench.api.AttributionResult` breaks the contract
(shapes and the node-count formula ``N = selected + n_layers * n_pos + n_pos + n_logits``, dtypes, finite
values, ``selected_features`` sorted, unique and inside ``active_features``, logit ids inside the
vocabulary, a readable ``adjacency_file``); :func:`check_result` raises :class:`InvalidResult` with all of
them. The benchmark worker (status ``invalid``) and ``attrbench attribute`` (exit 1, nothing written) use it.
"""

from __future__ import annotations

import os
from typing import Any

import numpy as np
import torch

from attrbench.api import AttributionResult

#: rows of the adjacency checked for finite values at a time
_BLOCK_ROWS = 1024
_TENSOR_FIELDS = (
    "input_tokens",
    "logit_token_ids",
    "logit_probabilities",
    "active_features",
    "activation_values",
    "selected_features",
    "adjacency_matrix",
)


class InvalidResult(ValueError):
    """A backend's result breaks the :class:`attrbench.api.AttributionResult` contract (``problems`` says how)."""

    def __init__(self, problems: list[str]):
        super().__init__("invalid graph: " + "; ".join(problems))
        self.problems = problems


def _is_int(t: torch.Tensor) -> bool:
    return not t.dtype.is_floating_point and not t.dtype.is_complex and t.dtype != torch.bool


def _all_finite(t: torch.Tensor) -> bool:
    """``isfinite`` over ``t`` in row blocks (a memory-mapped adjacency is never copied whole)."""
    if t.dim() < 2:
        return bool(torch.isfinite(t).all())
    for r0 in range(0, t.shape[0], _BLOCK_ROWS):
        if not bool(torch.isfinite(t[r0 : r0 + _BLOCK_ROWS]).all()):
            return False
    return True


def result_problems(
    result: Any,
    *,
    n_layers: int | None = None,
    n_pos: int | None = None,
    vocab_size: int | None = None,
    max_feature_nodes: int | None = None,
) -> list[str]:
    """Every way ``result`` breaks the contract (empty when it keeps it).

    The keyword arguments are what the workload and settings say the graph must match (None: not checked).
    """
    if not isinstance(result, AttributionResult):
        return [f"attribute() returned {type(result).__name__}, not an AttributionResult"]
    problems: list[str] = []
    for name in _TENSOR_FIELDS:
        if not isinstance(getattr(result, name), torch.Tensor):
            problems.append(f"{name} is {type(getattr(result, name)).__name__}, not a tensor")
    if problems:
        return problems
    problems += _prompt_problems(result, n_layers, n_pos)
    problems += _logit_problems(result, vocab_size)
    feature_problems, n_active = _feature_problems(result)
    problems += feature_problems
    problems += _selected_problems(result, n_active, max_feature_nodes)
    problems += _adjacency_problems(result)
    if result.adjacency_file is not None:
        problems += _adjacency_file_problems(result.adjacency_file, tuple(result.adjacency_matrix.shape))
    return problems


def _prompt_problems(r: AttributionResult, n_layers: int | None, n_pos: int | None) -> list[str]:
    problems = []
    tokens = r.input_tokens
    if tokens.dim() != 1 or not _is_int(tokens):
        problems.append(f"input_tokens must be a 1-D integer tensor, got {tuple(tokens.shape)} {tokens.dtype}")
    if n_pos is not None and tokens.dim() == 1 and tokens.shape[0] != n_pos:
        problems.append(f"input_tokens has {tokens.shape[0]} positions, the prompt has {n_pos}")
    if not isinstance(r.n_layers, int) or r.n_layers <= 0:
        problems.append(f"n_layers must be a positive int, got {r.n_layers!r}")
    elif n_layers is not None and r.n_layers != n_layers:
        problems.append(f"n_layers is {r.n_layers}, the model has {n_layers}")
    return problems


def _logit_problems(r: AttributionResult, vocab_size: int | None) -> list[str]:
    problems = []
    logits, probs = r.logit_token_ids, r.logit_probabilities
    if logits.dim() != 1 or not _is_int(logits):
        problems.append(f"logit_token_ids must be a 1-D integer tensor, got {tuple(logits.shape)} {logits.dtype}")
    elif logits.numel():
        lo, hi = int(logits.min()), int(logits.max())
        if lo < 0 or (vocab_size is not None and hi >= vocab_size):
            problems.append(f"logit_token_ids must lie in [0, {vocab_size}), got ids from {lo} to {hi}")
        if len(set(logits.tolist())) != logits.numel():
            problems.append("logit_token_ids has duplicate ids")
    if probs.dim() != 1 or not probs.dtype.is_floating_point or probs.shape[:1] != logits.shape[:1]:
        problems.append(
            f"logit_probabilities must be a 1-D float tensor as long as logit_token_ids "
            f"({tuple(logits.shape)}), got {tuple(probs.shape)} {probs.dtype}"
        )
    elif not _all_finite(probs):
        problems.append("logit_probabilities has non-finite values")
    return problems


def _feature_problems(r: AttributionResult) -> tuple[list[str], int | None]:
    """Problems of ``active_features`` / ``activation_values``, and n_active (None when unusable)."""
    problems = []
    active, acts, tokens = r.active_features, r.activation_values, r.input_tokens
    n_active: int | None = None
    if active.dim() != 2 or active.shape[1:] != (3,) or not _is_int(active):
        problems.append(
            f"active_features must be an [n_active, 3] integer tensor, got {tuple(active.shape)} {active.dtype}"
        )
    else:
        n_active = active.shape[0]
        if n_active and isinstance(r.n_layers, int):
            layers, positions = active[:, 0], active[:, 1]
            if int(layers.min()) < 0 or int(layers.max()) >= r.n_layers:
                problems.append(f"active_features layers must lie in [0, {r.n_layers})")
            if tokens.dim() == 1 and (int(positions.min()) < 0 or int(positions.max()) >= tokens.shape[0]):
                problems.append(f"active_features positions must lie in [0, {tokens.shape[0]})")
    if acts.dim() != 1 or not acts.dtype.is_floating_point or (n_active is not None and acts.shape[0] != n_active):
        problems.append(
            f"activation_values must be a 1-D float tensor of n_active={n_active} values, got "
            f"{tuple(acts.shape)} {acts.dtype}"
        )
    elif not _all_finite(acts):
        problems.append("activation_values has non-finite values")
    return problems, n_active


def _selected_problems(r: AttributionResult, n_active: int | None, max_feature_nodes: int | None) -> list[str]:
    problems = []
    selected = r.selected_features
    if selected.dim() != 1 or not _is_int(selected):
        problems.append(f"selected_features must be a 1-D integer tensor, got {tuple(selected.shape)} {selected.dtype}")
    elif selected.numel():
        if selected.numel() > 1 and not bool((selected[1:] > selected[:-1]).all()):
            problems.append("selected_features must be sorted ascending without duplicates")
        if int(selected.min()) < 0 or (n_active is not None and int(selected.max()) >= n_active):
            problems.append(
                f"selected_features must index into active_features (0 .. {n_active}), got "
                f"{int(selected.min())} .. {int(selected.max())}"
            )
        if max_feature_nodes is not None and selected.numel() > max_feature_nodes:
            problems.append(f"{selected.numel()} features selected, more than max_feature_nodes={max_feature_nodes}")
    return problems


def _adjacency_problems(r: AttributionResult) -> list[str]:
    """The node-count formula N = selected + n_layers * n_pos + n_pos + n_logits, dtype and finiteness."""
    problems = []
    tokens, logits, selected, adj = r.input_tokens, r.logit_token_ids, r.selected_features, r.adjacency_matrix
    if tokens.dim() == 1 and logits.dim() == 1 and selected.dim() == 1 and isinstance(r.n_layers, int):
        P = tokens.shape[0]
        expected = selected.shape[0] + r.n_layers * P + P + logits.shape[0]
        if adj.dim() != 2 or tuple(adj.shape) != (expected, expected):
            problems.append(
                f"adjacency_matrix is {tuple(adj.shape)}, expected ({expected}, {expected}): "
                f"N = selected {selected.shape[0]} + n_layers*n_pos {r.n_layers}*{P} + n_pos {P} "
                f"+ n_logits {logits.shape[0]}"
            )
    if not adj.dtype.is_floating_point:
        problems.append(f"adjacency_matrix must be floating point, got {adj.dtype}")
    elif adj.dim() == 2 and not _all_finite(adj):
        problems.append("adjacency_matrix has non-finite values (nan or inf)")
    return problems


def _adjacency_file_problems(path: str, shape: tuple[int, ...]) -> list[str]:
    if not os.path.isfile(path):
        return [f"adjacency_file {path} does not exist"]
    try:
        arr = np.load(path, mmap_mode="r", allow_pickle=False)
    except (OSError, ValueError) as exc:
        return [f"adjacency_file {path} is not a readable .npy file: {exc}"]
    if tuple(arr.shape) != shape:
        return [f"adjacency_file {path} holds {tuple(arr.shape)}, the adjacency_matrix is {shape}"]
    return []


def workload_limits(workload: Any) -> dict[str, int | None]:
    """What a built workload says a graph must match: ``n_layers``, ``n_pos``, ``vocab_size``."""
    config = getattr(getattr(workload, "hf_model", None), "config", None)
    model = getattr(getattr(workload, "spec", None), "model", None)
    tokens = getattr(workload, "token_ids", None)
    return {
        "n_layers": getattr(workload, "n_layers", None),
        "n_pos": int(tokens.shape[-1]) if isinstance(tokens, torch.Tensor) else None,
        "vocab_size": getattr(config, "vocab_size", None) or getattr(model, "vocab_size", None),
    }


def check_result(result: Any, workload: Any = None, max_feature_nodes: int | None = None) -> None:
    """Raise :class:`InvalidResult` naming every problem of ``result`` (checked against ``workload``)."""
    limits = workload_limits(workload) if workload is not None else {}
    problems = result_problems(result, max_feature_nodes=max_feature_nodes, **limits)
    if problems:
        raise InvalidResult(problems)
