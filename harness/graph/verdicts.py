"""Parity verdicts, in one place: the tolerances a graph is judged by and the verdict they give.

The figures themselves are computed by :mod:`attrbench.graph.parity`; this module says what they must reach.
The runner stores each cell's verdict, every reporter shows it, and the gate fails on the same checks.

Verdicts (:func:`judge`):

* ``ok`` / ``failed``: an exact backend within / beyond its tolerance;
* ``approx`` / ``approx: below target``: an approximate backend meets / misses its stated accuracy
  (edge recall >= 0.99 and pruned-node Jaccard >= 0.95 against the yardstick);
* ``no yardstick``: no graph to compare with (neither the reference nor a stand-in completed or was selected);
* ``yardstick``: the graph the others were compared with; ``truth``: the float32 reference of a bf16 run;
* ``-``: the cell did not complete (its status says why).

**Exact backends, float32** (or where no fp32 truth exists): the same selected features as the yardstick
(Jaccard 1) and a relative Frobenius error within :data:`EXACT_REL_TOL` of the dtype.

**Exact backends in a reduced precision (bf16) run, judged against the fp32 truth.** circuit-tracer's own
bf16 graph breaks near-ties of the influence ranking its own way, so matching it exactly says nothing. The
run also computes the reference in float32 (the *truth*), and every bf16 graph, circuit-tracer's own bf16
graph included, is compared with it (``truth_parity``). An exact backend passes when it is no further from the
truth than circuit-tracer's bf16 graph, within a small slack:

* selected Jaccard >= circuit-tracer's - :data:`TRUTH_JACCARD_SLACK` (0.02: about 1% of the selected features
  swapped at near-ties beyond those circuit-tracer swaps),
* relative error <= circuit-tracer's x :data:`TRUTH_REL_FACTOR` (1.25),
* edge recall >= circuit-tracer's - :data:`TRUTH_RECALL_SLACK` (0.01).

Where the fp32 truth or the bf16 reference did not complete (out of memory), the float32 rule above applies
with the bf16 tolerance (today's rule), and the report says so.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

#: exact backends: maximum relative Frobenius error of the adjacency, by dtype
EXACT_REL_TOL = {"float32": 1e-4, "float64": 1e-4, "bfloat16": 2e-2, "float16": 2e-2}
DEFAULT_REL_TOL = 2e-2
#: exact backends: required selected-feature Jaccard
EXACT_MIN_JACCARD = 1.0
#: approximate backends
APPROX_MIN_EDGE_RECALL = 0.99
APPROX_MIN_PRUNED_JACCARD = 0.95
#: exact backends in bf16, against the fp32 truth, relative to circuit-tracer's own bf16 graph
TRUTH_JACCARD_SLACK = 0.02
TRUTH_REL_FACTOR = 1.25
TRUTH_RECALL_SLACK = 0.01
#: the fields of ``truth_parity`` the fp32-truth rule judges
TRUTH_FIELDS = ("selected_jaccard", "rel_frobenius", "edge_recall")

PARITY_FIELDS = ("selected_jaccard", "rel_frobenius", "max_abs", "edge_recall", "pruned_node_jaccard")
#: parity figures where larger is better (the others: smaller is better)
HIGHER_IS_BETTER = {"selected_jaccard", "edge_recall", "pruned_node_jaccard"}

OK, FAILED, APPROX, APPROX_MISS = "ok", "failed", "approx", "approx: below target"
NO_YARDSTICK, YARDSTICK, TRUTH, NOT_RUN = "no yardstick", "yardstick", "truth", "-"
#: verdicts that fail a run (exit 1 unless --allow-parity-failures) and the gate
FAILING = {FAILED, APPROX_MISS}

#: a check: (figure, value, threshold, passed, comparison ">=" or "<=")
Check = tuple[str, float, float, bool, str]


def rel_tolerance(dtype: str | None) -> float:
    return EXACT_REL_TOL.get(str(dtype), DEFAULT_REL_TOL)


def _at_least(figure: str, value: Any, threshold: float) -> Check:
    return (figure, value, threshold, value is not None and not math.isnan(value) and value >= threshold, ">=")


def _at_most(figure: str, value: Any, threshold: float) -> Check:
    return (figure, value, threshold, value is not None and not math.isnan(value) and value <= threshold, "<=")


def parity_checks(parity: Mapping | None, exact: bool, dtype: str | None) -> list[Check]:
    """The figures of ``parity`` (against the yardstick) that are judged, as checks; [] without parity."""
    if not parity:
        return []
    checks = []
    if exact:
        j, rel = parity.get("selected_jaccard"), parity.get("rel_frobenius")
        if j is not None:
            checks.append(_at_least("selected_jaccard", j, EXACT_MIN_JACCARD))
        if rel is not None:
            checks.append(_at_most("rel_frobenius", rel, rel_tolerance(dtype)))
    else:
        rec, pj = parity.get("edge_recall"), parity.get("pruned_node_jaccard")
        if rec is not None:
            checks.append(_at_least("edge_recall", rec, APPROX_MIN_EDGE_RECALL))
        if pj is not None:
            checks.append(_at_least("pruned_node_jaccard", pj, APPROX_MIN_PRUNED_JACCARD))
    return checks


def truth_checks(truth_parity: Mapping | None, reference_truth: Mapping | None) -> list[Check]:
    """The fp32-truth rule: ``truth_parity`` (a bf16 graph vs the fp32 truth) against ``reference_truth``
    (circuit-tracer's bf16 graph vs the same truth) with the documented slack; [] when either is missing."""
    if not truth_parity or not reference_truth:
        return []
    checks = []
    j, ref_j = truth_parity.get("selected_jaccard"), reference_truth.get("selected_jaccard")
    if j is not None and ref_j is not None:
        checks.append(_at_least("selected_jaccard vs fp32 truth", j, ref_j - TRUTH_JACCARD_SLACK))
    rel, ref_rel = truth_parity.get("rel_frobenius"), reference_truth.get("rel_frobenius")
    if rel is not None and ref_rel is not None:
        checks.append(_at_most("rel_frobenius vs fp32 truth", rel, ref_rel * TRUTH_REL_FACTOR))
    rec, ref_rec = truth_parity.get("edge_recall"), reference_truth.get("edge_recall")
    if rec is not None and ref_rec is not None:
        checks.append(_at_least("edge_recall vs fp32 truth", rec, ref_rec - TRUTH_RECALL_SLACK))
    return checks


def verdict_checks(cell: Mapping, dtype: str | None, reference_truth: Mapping | None = None) -> tuple[str, list[Check]]:
    """(rule, checks) that judge an ok cell: ``"fp32 truth"`` where an exact cell and circuit-tracer's own
    graph both have figures against the fp32 truth, else ``"yardstick"`` (the parity against the yardstick)."""
    exact = bool(cell.get("exact", True))
    if exact:
        checks = truth_checks(cell.get("truth_parity"), reference_truth)
        if checks:
            return "fp32 truth", checks
    return "yardstick", parity_checks(cell.get("parity"), exact, dtype)


def judge(
    cell: Mapping, dtype: str | None, *, role: str | None = None, reference_truth: Mapping | None = None
) -> tuple[str, str]:
    """(verdict, why) of one cell (or one aggregated report row).

    ``role``: ``"yardstick"`` or ``"truth"`` for the cells the others are compared with, else None.
    ``reference_truth``: circuit-tracer's own bf16 graph's ``truth_parity`` at the same node count, for the
    fp32-truth rule.
    """
    if cell.get("status") != "ok":
        return NOT_RUN, "the cell did not complete"
    if role == "truth":
        return TRUTH, "the float32 reference: the truth the bf16 graphs are compared with"
    if role == "yardstick":
        return YARDSTICK, "the graph the others were compared with"
    rule, checks = verdict_checks(cell, dtype, reference_truth)
    if not checks:
        return NO_YARDSTICK, "no yardstick graph to compare with"
    why = "; ".join(
        f"{figure} {value:.6g} {cmp} {threshold:.6g}{'' if passed else ' FAILS'}"
        for figure, value, threshold, passed, cmp in checks
    )
    passed = all(c[3] for c in checks)
    if not cell.get("exact", True):
        return (APPROX if passed else APPROX_MISS), f"approximate, stated accuracy: {why}"
    return (OK if passed else FAILED), f"exact, against the {rule}: {why}"


def parity_verdict(
    row: Mapping, dtype: str | None, yardstick: bool = False, reference_truth: Mapping | None = None
) -> str:
    """The verdict alone (see :func:`judge`); ``yardstick`` marks the graph the others were compared with."""
    return judge(row, dtype, role=YARDSTICK if yardstick else None, reference_truth=reference_truth)[0]
