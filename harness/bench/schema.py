"""The results file's JSON Schema (schema_version 1), checked with ``jsonschema`` before anything reads a file.

``report``, ``gate`` and ``run --resume`` load results through :func:`attrbench.bench.results.load_results`,
which parses the text with non-finite numbers (``NaN``, ``Infinity``, ``1e400``) kept visible as
:class:`NonFinite` markers and then validates the document here: types, ranges (no NaN/Inf/0 wall time on an
ok cell, no 100-digit node count) and a depth limit. Any failure is one :class:`attrbench.errors.UsageError`
line naming the file and the JSON path (exit code 2).
"""

from __future__ import annotations

import json
import math
from typing import Any

import jsonschema

from attrbench.errors import UsageError

#: --repeats and plan-size caps (also enforced by the CLI, :func:`attrbench.cli.options.bench_settings`)
MAX_REPEATS = 1000
MAX_PLAN_CELLS = 10_000
MAX_NODES = 2**31 - 1
#: deepest nesting a results file may have
MAX_DEPTH = 32

_BYTES = {"type": ["integer", "null"], "minimum": 0, "maximum": 2**63 - 1}
_COUNT = {"type": ["integer", "null"], "minimum": 0, "maximum": 2**40}
_SECONDS = {"type": "number", "minimum": 0, "maximum": 1e9}
_TEXT = {"type": ["string", "null"], "maxLength": 1_000_000}
#: a parity figure: a number, null, or a non-finite marker (a broken graph's relative error may be NaN)
_FIGURE = {"anyOf": [{"type": ["number", "null"]}, {"enum": ["NaN", "Infinity", "-Infinity"]}]}

CELL_SCHEMA: dict[str, Any] = {
    "type": "object",
    "required": ["backend", "nodes", "repeat", "status"],
    "properties": {
        # a label, never a path: printable, one line
        "backend": {"type": "string", "minLength": 1, "maxLength": 1000, "pattern": "^[^\\x00-\\x1f\\x7f]+$"},
        "exact": {"type": "boolean"},
        "nodes": {"type": "integer", "minimum": 1, "maximum": MAX_NODES},
        "n_tokens": {"type": ["integer", "null"], "minimum": 1, "maximum": MAX_NODES},
        "repeat": {"type": "integer", "minimum": 0, "maximum": MAX_REPEATS - 1},
        "status": {"enum": ["ok", "error", "oom", "timeout", "invalid"]},
        "error": _TEXT,
        "wall_s": {"type": ["number", "null"], "exclusiveMinimum": 0, "maximum": 1e9},
        "phases_s": {"type": "object", "additionalProperties": {"type": "number", "minimum": -1e9, "maximum": 1e9}},
        "peak_host_bytes": _BYTES,
        "peak_gpu_bytes": _BYTES,
        "peak_gpu_torch_bytes": _BYTES,
        "n_selected": _COUNT,
        "n_active": _COUNT,
        "n_logits": _COUNT,
        "info": {"type": "object"},
        "parity": {
            "type": ["object", "null"],
            "properties": {"against": {"type": "string"}},
            "additionalProperties": _FIGURE,
        },
        "parity_note": _TEXT,
        "truth_parity": {
            "type": ["object", "null"],
            "properties": {"against": {"type": "string"}},
            "additionalProperties": _FIGURE,
        },
        "verdict": {"type": ["string", "null"], "maxLength": 1000},
        "verdict_note": _TEXT,
        "error_traceback": _TEXT,
    },
    # an ok cell was measured: its wall time is a positive, finite number
    "if": {"properties": {"status": {"const": "ok"}}},
    "then": {"required": ["wall_s"], "properties": {"wall_s": {"type": "number"}}},
}

_EXPONENT = {"type": ["number", "null"], "minimum": -1e6, "maximum": 1e6}
#: one backend and node count of a run over several prompt lengths (:mod:`attrbench.bench.growth`)
GROWTH_SCHEMA: dict[str, Any] = {
    "type": "object",
    "required": ["backend", "nodes", "time_exponent", "memory_exponent"],
    "properties": {
        "backend": {"type": "string", "maxLength": 1000},
        "nodes": {"type": "integer", "minimum": 0, "maximum": MAX_NODES},
        "time_exponent": _EXPONENT,
        "memory_exponent": _EXPONENT,
        "fitted_n_tokens": {"type": "array", "items": {"type": "integer", "minimum": 1}},
        "failed": {"type": "object", "additionalProperties": {"type": "string", "maxLength": 100}},
        "points": {"type": "array", "items": {"type": "object"}},
    },
}

RESULTS_SCHEMA: dict[str, Any] = {
    "$schema": "https://json-schema.org/draft/2020-12/schema",
    "type": "object",
    "required": ["schema_version", "workload", "settings", "cells"],
    "properties": {
        "schema_version": {"const": 1},
        "attrbench_version": {"type": "string"},
        "created": {"type": ["string", "null"]},
        "resumed_from": {"type": ["string", "null"]},
        "environment": {"type": "object"},
        "workload": {
            "type": "object",
            "properties": {
                "name": {"type": ["string", "null"]},
                "hash": {"type": ["string", "null"]},
                "config": {"type": ["object", "null"]},
                "n_active": _COUNT,
                "n_tokens": {"type": "array", "items": {"type": "integer", "minimum": 1, "maximum": MAX_NODES}},
                "hashes": {"type": "object", "additionalProperties": {"type": "string"}},
            },
        },
        "settings": {
            "type": "object",
            "properties": {
                "device": {"type": "string"},
                "dtype": {"type": "string"},
                "batch_size": {"type": "integer", "minimum": 1, "maximum": 2**31 - 1},
                "update_interval": {"type": "integer", "minimum": 1, "maximum": 2**31 - 1},
                "max_n_logits": {"type": "integer", "minimum": 1, "maximum": 2**31 - 1},
                "desired_logit_prob": {"type": "number", "exclusiveMinimum": 0, "maximum": 1},
                "repeats": {"type": "integer", "minimum": 1, "maximum": MAX_REPEATS},
                "timeout_s": {"anyOf": [{"type": "null"}, {**_SECONDS, "exclusiveMinimum": 0}]},
                "warmup": {"type": "boolean"},
                "backend_options": {"type": "object"},
                "memory_limit_bytes": _BYTES,
                "strict": {"type": "boolean"},
                "retries": {"type": "integer", "minimum": 0, "maximum": 1000},
            },
        },
        "yardstick_note": _TEXT,
        "growth": {"type": "array", "maxItems": MAX_PLAN_CELLS, "items": GROWTH_SCHEMA},
        "cells": {"type": "array", "maxItems": MAX_PLAN_CELLS, "items": CELL_SCHEMA},
    },
}

_VALIDATOR = jsonschema.Draft202012Validator(RESULTS_SCHEMA)


class NonFinite(str):
    """``NaN``, ``Infinity`` or an overflowing float (``1e400``) as read from a file, kept as a marker so
    the schema can refuse it where a finite number is required."""


def _parse_float(text: str) -> float | NonFinite:
    value = float(text)
    return value if math.isfinite(value) else NonFinite("Infinity" if value > 0 else "-Infinity")


def _parse_constant(text: str) -> NonFinite:
    return NonFinite(text)


def parse_json(text: str, where: str) -> Any:
    """JSON text -> Python, with non-finite numbers as :class:`NonFinite`; one UsageError line on failure."""
    try:
        return json.loads(text, parse_float=_parse_float, parse_constant=_parse_constant)
    except json.JSONDecodeError as exc:
        raise UsageError(f"{where} is not valid JSON (line {exc.lineno}: {exc.msg})") from None
    except RecursionError:
        raise UsageError(f"{where} is nested too deeply (more than {MAX_DEPTH} levels)") from None
    except ValueError as exc:  # Python's limit on the digits of an integer
        raise UsageError(f"{where} has a number that cannot be read ({str(exc).splitlines()[0][:80]})") from None


def _depth(data: Any) -> int:
    """Nesting depth, without recursion."""
    deepest, stack = 0, [(data, 1)]
    while stack:
        obj, level = stack.pop()
        if isinstance(obj, (dict, list)):
            deepest = max(deepest, level)
            if deepest > MAX_DEPTH:
                return deepest
            stack.extend((v, level + 1) for v in (obj.values() if isinstance(obj, dict) else obj))
    return deepest


def _json_path(error: jsonschema.ValidationError) -> str:
    out = ""
    for part in error.absolute_path:
        out += f"[{part}]" if isinstance(part, int) else f".{part}"
    return out.lstrip(".") or "the top level"


def restore_non_finite(data: Any) -> Any:
    """The document with :class:`NonFinite` markers turned back into floats (where the schema allows them)."""
    if isinstance(data, NonFinite):
        return float({"NaN": "nan", "Infinity": "inf", "-Infinity": "-inf"}.get(str(data), "nan"))
    if isinstance(data, dict):
        return {k: restore_non_finite(v) for k, v in data.items()}
    if isinstance(data, list):
        return [restore_non_finite(v) for v in data]
    return data


def check_results_schema(data: Any, where: str) -> dict[str, Any]:
    """Raise one UsageError line when ``data`` does not satisfy :data:`RESULTS_SCHEMA`; returns the document
    with allowed non-finite parity figures as floats."""
    if _depth(data) > MAX_DEPTH:
        raise UsageError(f"{where} is nested too deeply (more than {MAX_DEPTH} levels)")
    error = jsonschema.exceptions.best_match(_VALIDATOR.iter_errors(data))
    if error is not None:
        value = error.instance
        if isinstance(value, NonFinite):
            what = f"is {value}, not a finite number"
        elif isinstance(value, (dict, list)):
            what = error.message.split(" is not ", 1)[-1] if " is not " in error.message else error.message
            what = f"is not {what}" if " is not " in error.message else what
        else:
            shown = repr(value)
            what = error.message.replace(shown, "", 1).strip() if len(shown) > 60 else error.message
        raise UsageError(f"{where}: {_json_path(error)}: {what[:200]}")
    return restore_non_finite(data)
