"""Every command-line option, defined once, and the checks that turn them into settings.

Commands compose these decorators; :func:`bench_settings` validates the attribution and measurement
options of every command in one place and returns the :class:`attrbench.bench.settings.BenchSettings`
that travels from here to the plan, the workers and the results file.
"""

from __future__ import annotations

import json
import math
import os
import signal
import tempfile
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import click
import torch

from attrbench.api import Backend
from attrbench.bench.schema import MAX_NODES, MAX_PLAN_CELLS, MAX_REPEATS
from attrbench.bench.settings import BenchSettings, resolve_memory_limit
from attrbench.errors import UsageError
from attrbench.workload import spec as wl

DEFAULT_NODES = (200, 800)
#: at most this many re-runs of a cell whose worker was lost
MAX_RETRIES = 1000
DTYPES = ("float32", "bfloat16")


def err(message: str) -> None:
    """One line on stderr, prefixed ``attrbench:``."""
    click.echo(f"attrbench: {message}", err=True)


def stack(*decorators: Callable) -> Callable:
    """Apply several click decorators as one (options shared by several commands)."""

    def apply(f: Callable) -> Callable:
        for decorator in reversed(decorators):
            f = decorator(f)
        return f

    return apply


# ------------------------------------------------------------------------------------------------ options

workload_options = stack(
    click.option(
        "--model",
        "model",
        default=None,
        help="Workload preset name (tiny, small, large, long, qwen3-4b, ...) or a local Hugging Face model folder "
        "(with --transcoders and --prompt). Default: the smallest preset with enough active "
        "features for the largest --nodes.",
    ),
    click.option(
        "--workload",
        "workload_file",
        default=None,
        type=click.Path(dir_okay=False),
        help="Workload JSON file (model/transcoders/prompt/seed); excludes --model.",
    ),
    click.option(
        "--transcoders",
        "transcoders_dir",
        default=None,
        help="circuit-tracer transcoders: a config.yaml, a folder holding one, a folder of layer_{i}.safetensors "
        "/ layer_{i}.npz / W_enc_{i}+W_dec_{i}.safetensors (cross-layer), or a repo id in the local "
        "Hugging Face cache; with --model DIR|REPO_ID.",
    ),
    click.option("--prompt", "prompt_text", default=None, help="Prompt text; with --model DIR --transcoders DIR."),
)

attribution_options = stack(
    click.option("--dtype", default="float32", show_default=True, help="Model dtype: float32 or bfloat16."),
    click.option(
        "--batch-size",
        type=int,
        default=512,
        show_default=True,
        help="Attribution batch size (circuit-tracer's default is 512).",
    ),
    click.option(
        "--update-interval",
        type=int,
        default=4,
        show_default=True,
        help="Re-rank features every this many batches (circuit-tracer's update_interval; "
        "Neuronpedia's graph server uses 1000).",
    ),
    click.option("--max-logits", type=int, default=10, show_default=True, help="Maximum number of logit targets."),
    click.option(
        "--logit-prob",
        type=float,
        default=0.95,
        show_default=True,
        help="Cumulative probability the logit targets must cover.",
    ),
    click.option(
        "--option",
        "options",
        multiple=True,
        metavar="KEY=VALUE",
        help="Backend option, passed in settings.options to the backends that declare KEY (repeatable; "
        "VALUE parsed as JSON when it can be), e.g. approx_threshold=0.003 or edge_storage=lean. "
        "A backend named NAME@KEY=VALUE in --backends fixes options for that one column instead.",
    ),
)

workload_size_options = stack(
    click.option("--d-transcoder", type=int, default=None, help="Override the workload's transcoder width."),
    click.option(
        "--n-tokens",
        "n_tokens_opt",
        default=None,
        metavar="N[,N...]",
        help="Override the workload's prompt length; several (comma-separated) sweep prompt lengths, each its "
        "own workload (the same model and transcoders, the prompt extended).",
    ),
)

backends_option = click.option(
    "--backends",
    "backends_opt",
    default="all",
    show_default=True,
    help="Backends: 'all' or a comma-separated list of names (see list-backends).",
)


def nodes_list_option(required: bool) -> Callable:
    return click.option(
        "--nodes",
        "nodes_opt",
        required=required,
        default=None,
        help="Feature node counts (max_feature_nodes), comma-separated." + ("" if required else " [default: 200,800]"),
    )


def device_option(choices: tuple[str, ...], default: str, help_text: str) -> Callable:
    return click.option(
        "--device", type=click.Choice(list(choices)), default=default, show_default=True, help=help_text
    )


def memory_limit_option(help_text: str) -> Callable:
    return click.option("--memory-limit", "memory_limit", type=float, default=None, metavar="GIB", help=help_text)


def output_option(required: bool, help_text: str) -> Callable:
    return click.option(
        "--output", "-o", "output", required=required, default=None, type=click.Path(dir_okay=False), help=help_text
    )


# ------------------------------------------------------------------------------------------------ signals


def interrupt_on_signals() -> None:
    """Ctrl-C (SIGINT), SIGTERM and SIGHUP (the terminal closed) stop a run cleanly (children killed,
    scratch files removed, finished cells kept, exit 130).

    SIGINT is set explicitly: Python leaves it ignored when the process inherited it ignored, as every
    command started in the background by a non-interactive shell does.
    """

    def interrupt(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.signal(signal.SIGTERM, interrupt)
    if hasattr(signal, "SIGHUP"):
        signal.signal(signal.SIGHUP, interrupt)


# ------------------------------------------------------------------------------------------------ parsing


def parse_int_list(value: str, flag: str) -> list[int]:
    """``200,800`` -> ``[200, 800]``: positive integers, duplicates dropped."""
    out = []
    for part in value.split(","):
        part = part.strip()
        try:
            n = int(part)
        except ValueError:
            raise UsageError(f"{flag} takes positive integers separated by commas, got {part!r}") from None
        if not 0 < n <= MAX_NODES:
            raise UsageError(f"{flag} takes positive integers of at most {MAX_NODES:,}, got {_short(n)}")
        out.append(n)
    if not out:
        raise UsageError(f"{flag} needs at least one value")
    return list(dict.fromkeys(out))


def parse_options(values: tuple[str, ...]) -> dict[str, Any]:
    """``--option KEY=VALUE`` pairs; VALUE parsed as JSON when it can be."""
    options: dict[str, Any] = {}
    for item in values:
        key, sep, raw = item.partition("=")
        key = key.strip()
        if not sep or not key:
            raise UsageError(f"--option takes KEY=VALUE, got {item!r}")
        try:
            options[key] = json.loads(raw)
        except json.JSONDecodeError:
            options[key] = raw
    return options


def check_writable(path: Path, flag: str) -> None:
    if path.exists() and path.is_dir():
        raise UsageError(f"{flag} {path} is a directory; give a file name")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=path.parent, prefix=f".{path.name}.", suffix=".check"):
            pass
    except OSError as exc:
        raise UsageError(f"{flag} {path} is not writable: {exc.strerror or exc}") from None


def cuda_available() -> bool:
    try:
        return torch.cuda.is_available()
    except Exception:
        return False


def resolve_device(device: str) -> str:
    if device == "auto":
        return "cuda" if cuda_available() else "cpu"
    if device == "cuda" and not cuda_available():
        raise UsageError("--device cuda: no CUDA GPU is available here; use --device cpu or auto")
    return device


def check_supports(backend: Backend, device: str, dtype: str) -> None:
    """A backend asked for a device or dtype it does not declare is a usage error."""
    device_kind = device.split(":")[0]
    if device_kind not in backend.devices:
        raise UsageError(
            f"backend {backend.name!r} does not support device {device_kind!r} (it supports "
            f"{', '.join(backend.devices)}); choose other --backends or --device"
        )
    if dtype not in backend.dtypes:
        raise UsageError(
            f"backend {backend.name!r} does not support dtype {dtype!r} (it supports "
            f"{', '.join(backend.dtypes)}); choose other --backends or --dtype"
        )


def backend_names(backends_opt: str, known: Mapping[str, Backend]) -> list[str]:
    """``--backends``: ``all`` or a comma-separated list of registered names (or ``NAME@KEY=VALUE`` variants)."""
    if backends_opt.strip() == "all":
        names = list(known)
    else:
        names = list(dict.fromkeys(n.strip() for n in backends_opt.split(",") if n.strip()))
        unknown = [n for n in names if n not in known]
        if unknown or not names:
            raise UsageError(
                f"unknown backend {', '.join(map(repr, unknown)) or '(none given)'}; known backends: {', '.join(known)}"
            )
    if not names:
        raise UsageError("no backends are registered")
    return names


def check_options(options: dict[str, Any], backends: list[Backend]) -> None:
    """Every ``--option`` key must be declared by at least one of ``backends``."""
    declared = {k for b in backends for k in b.option_defaults}
    stray = sorted(set(options) - declared)
    if stray:
        raise UsageError(
            f"--option {stray[0]} is not an option of any selected backend "
            f"(declared: {', '.join(sorted(declared)) or 'none'})"
        )


#: the largest value any integer option takes (a C int: batch sizes, intervals, logits)
MAX_INT_OPTION = 2**31 - 1
#: --timeout at most 30 days
MAX_TIMEOUT_S = 30 * 86_400.0
#: --memory-limit at most 1 PiB
MAX_MEMORY_LIMIT_GIB = 2.0**20


def _positive(flag: str, value: int | None, high: int = MAX_INT_OPTION) -> None:
    if value is not None and not 0 < value <= high:
        raise UsageError(f"{flag} must be a positive integer of at most {high:,}, got {_short(value)}")


def _short(value: object) -> str:
    text = str(value)
    return text if len(text) <= 24 else text[:20] + "..."


def check_plan_size(n_backends: int, n_nodes: int, repeats: int, n_lengths: int = 1) -> None:
    """A run of more than :data:`MAX_PLAN_CELLS` cells is refused before anything is planned."""
    cells = n_backends * n_nodes * repeats * n_lengths
    if cells > MAX_PLAN_CELLS:
        lengths = f" x {n_lengths} prompt lengths" if n_lengths > 1 else ""
        raise UsageError(
            f"the run would have {cells:,} cells ({n_backends} backends x {n_nodes} node counts{lengths} x "
            f"{repeats} repeats); at most {MAX_PLAN_CELLS:,} per run: split it into several runs"
        )


def parse_lengths(value: str | None) -> list[int] | None:
    """``--n-tokens 64,256`` -> ``[64, 256]`` (ascending, duplicates dropped); None when not given."""
    if value is None:
        return None
    lengths = sorted(parse_int_list(value, "--n-tokens"))
    if lengths[0] < 2:
        raise UsageError(f"--n-tokens takes prompt lengths of at least 2, got {lengths[0]}")
    return lengths


def bench_settings(
    *,
    device: str,
    dtype: str,
    batch_size: int,
    update_interval: int,
    max_logits: int,
    logit_prob: float = 0.95,
    repeats: int = 1,
    timeout_s: float | None = None,
    warmup: bool = True,
    options: dict[str, Any] | None = None,
    memory_limit: float | None = None,
    strict: bool = False,
    retries: int = 0,
) -> BenchSettings:
    """Check the attribution and measurement options of any command; one line per problem."""
    if dtype not in DTYPES:
        raise UsageError(f"--dtype {dtype!r} is not supported; use float32 or bfloat16")
    for flag, value in (
        ("--batch-size", batch_size),
        ("--update-interval", update_interval),
        ("--max-logits", max_logits),
    ):
        _positive(flag, value)
    _positive("--repeats", repeats, MAX_REPEATS)
    if not 0 <= retries <= MAX_RETRIES:
        raise UsageError(f"--retries must be an integer in [0, {MAX_RETRIES}], got {retries}")
    if not (0 < logit_prob <= 1 and math.isfinite(logit_prob)):
        raise UsageError(f"--logit-prob must be in (0, 1], got {logit_prob}")
    if timeout_s is not None and not (0 < timeout_s <= MAX_TIMEOUT_S and math.isfinite(timeout_s)):
        raise UsageError(
            f"--timeout must be a positive, finite number of seconds of at most {MAX_TIMEOUT_S:g}, got {timeout_s:g}"
        )
    if memory_limit is not None and not (0 <= memory_limit <= MAX_MEMORY_LIMIT_GIB and math.isfinite(memory_limit)):
        raise UsageError(
            f"--memory-limit must be a finite number of GiB in [0, {MAX_MEMORY_LIMIT_GIB:g}] "
            f"(0 = no limit), got {memory_limit:g}"
        )
    return BenchSettings(
        device=device,
        dtype=dtype,
        batch_size=batch_size,
        update_interval=update_interval,
        max_n_logits=max_logits,
        desired_logit_prob=logit_prob,
        repeats=repeats,
        timeout_s=timeout_s,
        warmup=warmup,
        backend_options=dict(options or {}),
        memory_limit_bytes=resolve_memory_limit(device, memory_limit),
        strict=strict,
        retries=retries,
    )


def resolve_spec(
    model: str | None,
    workload_file: str | None,
    transcoders_dir: str | None,
    prompt_text: str | None,
    nodes: list[int],
    d_transcoder: int | None = None,
    n_tokens: int | None = None,
) -> tuple[wl.WorkloadSpec, str | None]:
    """The workload of --model PRESET|DIR (+ --transcoders DIR --prompt TEXT) or --workload FILE, checked
    against the node counts; returns (spec, note about an automatically chosen preset or None). A sweep over
    prompt lengths passes its longest here: the node counts are checked against that workload."""
    if model is not None and workload_file is not None:
        raise UsageError("--model and --workload are mutually exclusive; give one")
    _positive("--d-transcoder", d_transcoder)
    _positive("--n-tokens", n_tokens)
    local = model is not None and model not in wl.PRESETS and (os.path.isdir(model) or transcoders_dir is not None)
    if (transcoders_dir is not None or prompt_text is not None) and not local:
        raise UsageError("--transcoders and --prompt go with --model DIR (a local Hugging Face model folder)")
    if local:
        assert model is not None
        if transcoders_dir is None or prompt_text is None:
            raise UsageError("--model DIR needs --transcoders DIR and --prompt TEXT")
        if d_transcoder is not None or n_tokens is not None:
            raise UsageError("--d-transcoder and --n-tokens do not apply to a local model folder")
        return wl.local_spec(model, transcoders_dir, prompt_text), None
    preset_note = None
    if workload_file is not None:
        spec = wl.load_workload_file(workload_file)
    elif model is not None:
        spec = wl.preset(model)
    else:
        name = wl.smallest_preset_for(max(nodes))
        spec = wl.preset(name)
        preset_note = f"--model not given: using preset {name!r} (smallest with >= {max(nodes)} active features)"
    spec = wl.with_overrides(spec, d_transcoder=d_transcoder, n_tokens=n_tokens)
    active = spec.estimated_active_features
    if spec.source is None and max(nodes) > active:
        try:
            hint = f"; preset {wl.smallest_preset_for(max(nodes))!r} has enough"
        except UsageError as exc:
            hint = f"; {exc}"
        raise UsageError(
            f"--nodes {max(nodes)} is more than workload {spec.name!r} has active features (about {active}){hint}"
        )
    return spec, preset_note
