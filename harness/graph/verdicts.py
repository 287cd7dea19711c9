"""Parity verdicts: the tolerances a graph is judged by and the verdict they give.

The figures themselves are computed by :mod:`attrbench.graph.parity`; this module says what they must
reach: an exact backend must select the same features (Jaccard 1) with a relative Frobenius error of the
adjacency within its dtype's tolerance; an approximate backend must keep the edges that carry 99% of the
influence and the nodes that pruning keeps.
"""

from __future__ import annotations

import math

#: exact backends: maximum relative Frobenius error of the adjacency, by dtype
EXACT_REL_TOL = {"float32": 1e-4, "float64": 1e-4, "bfloat16": 2e-2, "float16": 2e-2}
DEFAULT_REL_TOL = 2e-2
#: exact backends: required selected-feature Jaccard
EXACT_MIN_JACCARD = 1.0
#: approximate backends
APPROX_MIN_EDGE_RECALL = 0.99
APPROX_MIN_PRUNED_JACCARD = 0.95

PARITY_FIELDS = ("selected_jaccard", "rel_frobenius", "max_abs", "edge_recall", "pruned_node_jaccard")
#: parity figures where larger is better (the others: smaller is better)
HIGHER_IS_BETTER = {"selected_jaccard", "edge_recall", "pruned_node_jaccard"}


def rel_tolerance(dtype: str | None) -> float:
    return EXACT_REL_TOL.get(str(dtype), DEFAULT_REL_TOL)


def parity_checks(parity: dict | None, exact: bool, dtype: str | None) -> list[tuple[str, float, float, bool]]:
    """The parity figures that are judged: ``(figure, value, threshold, passed)`` for each present one."""
    if not parity:
        return []
    checks = []
    if exact:
        j, rel = parity.get("selected_jaccard"), parity.get("rel_frobenius")
        tol = rel_tolerance(dtype)
        if j is not None:
            checks.append(("selected_jaccard", j, EXACT_MIN_JACCARD, j >= EXACT_MIN_JACCARD))
        if rel is not None:
            checks.append(("rel_frobenius", rel, tol, not math.isnan(rel) and rel <= tol))
    else:
        rec, pj = parity.get("edge_recall"), parity.get("pruned_node_jaccard")
        if rec is not None:
            checks.append(("edge_recall", rec, APPROX_MIN_EDGE_RECALL, rec >= APPROX_MIN_EDGE_RECALL))
        if pj is not None:
            checks.append(("pruned_node_jaccard", pj, APPROX_MIN_PRUNED_JACCARD, pj >= APPROX_MIN_PRUNED_JACCARD))
    return checks


def parity_verdict(row: dict, dtype: str | None, yardstick: bool = False) -> str:
    """``ok``, ``BROKEN``, ``yardstick``, ``not checked`` or ``-`` (the cell failed).

    ``yardstick``: the reference, or the cell the others were compared with where it did not complete.
    """
    if row.get("status") != "ok":
        return "-"
    if yardstick:
        return "yardstick"
    checks = parity_checks(row.get("parity"), row.get("exact", True), dtype)
    if not checks:
        return "not checked"
    return "ok" if all(c[3] for c in checks) else "BROKEN"
