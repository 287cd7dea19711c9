"""approximate-pruned: gqa-shared with its VJP chain in bfloat16 and the graph's small edges pruned.

* The forward pass, the active features, their activations and the logit targets are the prompt's own
  (computed in the run's dtype); only the backward passes run in ``approx_dtype``: ``bfloat16``, whose
  GEMMs run with float32 accumulation about 2x faster than oneDNN's float32 ones on a CPU with AVX512-BF16
  (4.5x faster than MKL's, which take an AVX2 path on AMD CPUs: :mod:`attrbench.fp32_gemm`) and faster
  still on every GPU with tensor cores, where it pays (``auto``, the default: see :func:`compute_dtype_name`).
  Their results are written into float32 edge rows: every later pass over the rows (ranking, pruning,
  packaging) runs ~3x faster on float32 than on bfloat16 on a CPU. The lean store (large graphs) writes
  the last window's rows, never ranked, from a bfloat16 block straight to the graph file.
* Entries below ``approx_threshold`` times their row's largest magnitude are dropped from the packaged
  graph. The graph is still a dense adjacency, so pruning buys no speed (at 70,000 nodes it costs ~2 s of
  packaging): it gives sparser graphs, at an accuracy cost that grows with the threshold and the row width.
* Features are ranked once, after the logit rows (``approx_ranking=once``, the default), instead of every
  ``update_interval`` batches (``approx_ranking=interval``, circuit-tracer's schedule). The selection is then
  the direct-influence one, and every feature row is computed over the selected features' columns only
  (the last window's rule): no row over all ~10x more active features is written, summed or ranked.
  On ``small`` at 4,000 nodes this keeps edge recall at 0.997 and the pruned-node Jaccard at 0.98 while
  the selected features differ by a few percent (the low-influence tail): a third of the wall time.

The graph diverges slightly from circuit-tracer's: the runner's parity (``edge_recall``,
``pruned_node_jaccard``, ``selected_jaccard``, ``rel_frobenius``) measures by how much.
"""

from __future__ import annotations

import sys

import torch

from attrbench.api import AttributeSettings
from attrbench.backends.exact.linearised import ModelWeights
from attrbench.backends.gqa_shared import GqaSharedBackend
from attrbench.errors import UsageError
from attrbench.fp32_gemm import ONEDNN_MIN_BATCH
from attrbench.hookspecs import hookimpl

#: 1e-3 (the earlier default) kept the pruned-node Jaccard at 0.98 on ``small`` (4,000 nodes) but cut it to
#: 0.81 at 70,000 nodes, where rows have ~35,000 reachable edges whose small ones add up; 1e-4 keeps 0.995
DEFAULT_THRESHOLD = 1e-4
RANKINGS = ("once", "interval")
DTYPES = {"bfloat16": torch.bfloat16, "float16": torch.float16, "float32": torch.float32}


def compute_dtype_name(settings: AttributeSettings, device: torch.device) -> str:
    """The dtype of the backward passes: option ``approx_dtype`` (``auto``, ``bfloat16``, ``float16``,
    ``float32``). ``auto`` is bfloat16 on a GPU, and on a CPU from batch
    :data:`attrbench.fp32_gemm.ONEDNN_MIN_BATCH` (256) up: oneDNN generates a bfloat16 GEMM kernel for every
    new shape, which small batches (many shapes, little work each) do not repay (tiny, 800 nodes, batch 64:
    1.03x circuit-tracer's speed in bfloat16, 3.5x in float32)."""
    name = settings.options.get("approx_dtype", "auto")
    if name == "auto":
        return "bfloat16" if device.type == "cuda" or settings.batch_size >= ONEDNN_MIN_BATCH else "float32"
    if name not in DTYPES:
        raise UsageError(f"approx_dtype must be auto or one of {', '.join(DTYPES)}, got {name!r}")
    return str(name)


class ApproximatePrunedBackend(GqaSharedBackend):
    name = "approximate-pruned"
    exact = False
    description = "gqa-shared with bfloat16 backward passes; edges below approx_threshold x row max pruned"
    option_defaults = {
        "approx_threshold": DEFAULT_THRESHOLD,
        "approx_dtype": "auto",
        "approx_ranking": "once",
        "edge_storage": "auto",
        "fp32_gemm": "auto",
    }

    def cost_model(self) -> str | None:
        return "vjp-causal-gqa-pruned"

    def compute_dtype(self, weights: ModelWeights, settings: AttributeSettings) -> torch.dtype:
        return DTYPES[compute_dtype_name(settings, weights.device)]

    def ranking_window(self, settings: AttributeSettings) -> int:
        """Option ``approx_ranking``: ``once`` (every feature row after one ranking) or ``interval``."""
        ranking = settings.options.get("approx_ranking", "once")
        if ranking not in RANKINGS:
            raise UsageError(f"approx_ranking must be one of {', '.join(RANKINGS)}, got {ranking!r}")
        if ranking == "once":
            return settings.max_feature_nodes or sys.maxsize
        return super().ranking_window(settings)

    def prune_threshold(self, settings: AttributeSettings) -> float:
        """Option ``approx_threshold``: entries below it times their row's largest magnitude are dropped."""
        threshold = settings.options.get("approx_threshold", DEFAULT_THRESHOLD)
        if isinstance(threshold, bool) or not isinstance(threshold, (int, float)) or not 0 <= threshold < 1:
            raise UsageError(f"approx_threshold must be a number in [0, 1), got {threshold!r}")
        return float(threshold)

    def attribute(self, prepared, settings):
        result = super().attribute(prepared, settings)
        result.info["approx_threshold"] = settings.options.get("approx_threshold", DEFAULT_THRESHOLD)
        result.info["approx_dtype"] = compute_dtype_name(settings, prepared.weights.device)
        result.info["approx_ranking"] = settings.options.get("approx_ranking", "once")
        return result


@hookimpl
def register_backends(register):
    register(ApproximatePrunedBackend())
