"""Workload specifications: presets, JSON workload files, validation and a stable hash.

A workload is a model shape (Hugging Face config field names), a transcoder shape, a prompt and a seed.
:mod:`attrbench.build` turns it into weights; the same spec always gives bit-identical weights and prompt.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import Any

from attrbench.errors import UsageError

MODEL_TYPES = ("qwen3", "llama")


@dataclass(frozen=True)
class ModelSpec:
    """A decoder-only transformer in Hugging Face ``config.json`` field names."""

    model_type: str = "qwen3"
    num_hidden_layers: int = 4
    hidden_size: int = 128
    num_attention_heads: int = 8
    num_key_value_heads: int = 2
    head_dim: int = 16
    intermediate_size: int = 256
    vocab_size: int = 512
    rms_norm_eps: float = 1e-6
    rope_theta: float = 10000.0

    @property
    def heads_per_kv(self) -> int:
        return self.num_attention_heads // self.num_key_value_heads


@dataclass(frozen=True)
class TranscoderSpec:
    """Per-layer JumpReLU transcoders; thresholds are calibrated so each (layer, position) of the prompt
    has about ``target_l0`` active features."""

    d_transcoder: int = 1024
    skip_connection: bool = True
    target_l0: float = 20.0


@dataclass(frozen=True)
class PromptSpec:
    """``n_tokens`` seeded token ids starting with BOS, or explicit ``token_ids``."""

    n_tokens: int = 16
    token_ids: tuple[int, ...] | None = None

    @property
    def length(self) -> int:
        return len(self.token_ids) if self.token_ids is not None else self.n_tokens


@dataclass(frozen=True)
class WorkloadSpec:
    name: str = "custom"
    model: ModelSpec = field(default_factory=ModelSpec)
    transcoders: TranscoderSpec = field(default_factory=TranscoderSpec)
    prompt: PromptSpec = field(default_factory=PromptSpec)
    seed: int = 0

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        if d["prompt"]["token_ids"] is None:
            del d["prompt"]["token_ids"]
        else:
            d["prompt"]["token_ids"] = list(d["prompt"]["token_ids"])
            del d["prompt"]["n_tokens"]
        return d

    def content_hash(self) -> str:
        """sha256 of everything that determines the weights and prompt (the name is not part of it)."""
        d = self.to_dict()
        d.pop("name")
        return hashlib.sha256(json.dumps(d, sort_keys=True).encode()).hexdigest()[:16]

    @property
    def estimated_active_features(self) -> int:
        """Active features the calibration aims at (position 0, BOS, never has any, as in circuit-tracer)."""
        return int(round(self.model.num_hidden_layers * (self.prompt.length - 1) * self.transcoders.target_l0))


def _preset(name: str, model: ModelSpec, transcoders: TranscoderSpec, n_tokens: int, note: str) -> tuple:
    return name, (WorkloadSpec(name, model, transcoders, PromptSpec(n_tokens=n_tokens)), note)


PRESETS: dict[str, tuple[WorkloadSpec, str]] = dict(
    [
        _preset(
            "tiny",
            ModelSpec(num_hidden_layers=4, hidden_size=128, num_attention_heads=8, num_key_value_heads=2,
                      head_dim=16, intermediate_size=256, vocab_size=512),
            TranscoderSpec(d_transcoder=1024, target_l0=20), 16,
            "default; the whole ladder in minutes on 2 CPU cores",
        ),
        _preset(
            "small",
            ModelSpec(num_hidden_layers=8, hidden_size=256, num_attention_heads=8, num_key_value_heads=2,
                      head_dim=32, intermediate_size=768, vocab_size=2048),
            TranscoderSpec(d_transcoder=4096, target_l0=176), 32,
            ">= 40,000 active features; circuit-tracer at 4,000 nodes in about a minute on 2 cores",
        ),
        _preset(
            "large",
            ModelSpec(num_hidden_layers=8, hidden_size=256, num_attention_heads=8, num_key_value_heads=2,
                      head_dim=32, intermediate_size=768, vocab_size=2048),
            TranscoderSpec(d_transcoder=8192, target_l0=240), 48,
            ">= 90,000 active features, for 70,000-node runs",
        ),
        _preset(
            "qwen3-4b",
            ModelSpec(num_hidden_layers=36, hidden_size=2560, num_attention_heads=32, num_key_value_heads=8,
                      head_dim=128, intermediate_size=9728, vocab_size=151936, rope_theta=1000000.0),
            TranscoderSpec(d_transcoder=8192, target_l0=80), 32,
            "real Qwen3-4B shapes (36 layers, d 2560, 32/8 heads); for GPU runs",
        ),
    ]
)
DEFAULT_PRESET = "tiny"
#: presets considered when --model is not given, smallest first
AUTO_PRESETS = ("tiny", "small", "large")


def preset(name: str) -> WorkloadSpec:
    try:
        return PRESETS[name][0]
    except KeyError:
        raise UsageError(
            f"unknown preset {name!r}; choose one of {', '.join(PRESETS)} or pass a local model folder"
        ) from None


def smallest_preset_for(nodes: int) -> str:
    """The smallest automatic preset whose prompt has at least ``nodes`` active features."""
    for name in AUTO_PRESETS:
        if PRESETS[name][0].estimated_active_features >= nodes:
            return name
    raise UsageError(
        f"--nodes {nodes} is more than any preset has active features "
        f"(largest: {AUTO_PRESETS[-1]}, about {PRESETS[AUTO_PRESETS[-1]][0].estimated_active_features}); "
        "use a workload file with a larger target_l0, more layers or more tokens"
    )


def _positive_int(section: str, key: str, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise UsageError(f"workload: {section}.{key} must be a positive integer, got {value!r}")
    return value


def _positive_float(section: str, key: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value <= 0:
        raise UsageError(f"workload: {section}.{key} must be a positive number, got {value!r}")
    return float(value)


def validate(spec: WorkloadSpec) -> WorkloadSpec:
    """Raise :class:`UsageError` naming the first invalid field."""
    m = spec.model
    if m.model_type not in MODEL_TYPES:
        raise UsageError(f"workload: model.model_type {m.model_type!r} is not supported; use one of {', '.join(MODEL_TYPES)}")
    for f in fields(ModelSpec):
        if f.name in ("model_type",):
            continue
        value = getattr(m, f.name)
        (_positive_float if f.type == "float" else _positive_int)("model", f.name, value)
    if m.num_attention_heads % m.num_key_value_heads:
        raise UsageError(
            f"workload: model.num_attention_heads ({m.num_attention_heads}) must be divisible by "
            f"model.num_key_value_heads ({m.num_key_value_heads})"
        )
    t = spec.transcoders
    _positive_int("transcoders", "d_transcoder", t.d_transcoder)
    _positive_float("transcoders", "target_l0", t.target_l0)
    if t.target_l0 > t.d_transcoder:
        raise UsageError(f"workload: transcoders.target_l0 ({t.target_l0}) exceeds d_transcoder ({t.d_transcoder})")
    if not isinstance(t.skip_connection, bool):
        raise UsageError(f"workload: transcoders.skip_connection must be true or false, got {t.skip_connection!r}")
    p = spec.prompt
    if p.token_ids is not None:
        if len(p.token_ids) < 2:
            raise UsageError("workload: prompt.token_ids needs at least 2 tokens")
        bad = [t for t in p.token_ids if isinstance(t, bool) or not isinstance(t, int) or not 0 <= t < m.vocab_size]
        if bad:
            raise UsageError(f"workload: prompt.token_ids must be integers in [0, vocab_size={m.vocab_size}); got {bad[:3]}")
    else:
        _positive_int("prompt", "n_tokens", p.n_tokens)
        if p.n_tokens < 2:
            raise UsageError("workload: prompt.n_tokens must be at least 2")
    if isinstance(spec.seed, bool) or not isinstance(spec.seed, int) or spec.seed < 0:
        raise UsageError(f"workload: seed must be a non-negative integer, got {spec.seed!r}")
    return spec


def _section(data: dict, key: str, cls: type, path: str) -> Any:
    raw = data.get(key, {})
    if not isinstance(raw, dict):
        raise UsageError(f"workload file {path}: {key!r} must be an object")
    known = {f.name for f in fields(cls)}
    # A pasted Hugging Face config.json has many more fields; only the ones we model are read.
    kwargs = {k: v for k, v in raw.items() if k in known}
    if cls is PromptSpec and "token_ids" in kwargs:
        if not isinstance(kwargs["token_ids"], list):
            raise UsageError(f"workload file {path}: prompt.token_ids must be a list of integers")
        kwargs["token_ids"] = tuple(kwargs["token_ids"])
    return cls(**kwargs)


def spec_from_dict(data: Any, path: str = "<dict>") -> WorkloadSpec:
    """Build and validate a spec from the JSON shape documented in the README."""
    if not isinstance(data, dict):
        raise UsageError(f"workload file {path}: top level must be a JSON object with model/transcoders/prompt/seed")
    unknown = set(data) - {"name", "model", "transcoders", "prompt", "seed"}
    if unknown:
        raise UsageError(f"workload file {path}: unknown top-level keys {sorted(unknown)}; expected model, transcoders, prompt, seed")
    if "model" not in data:
        raise UsageError(f"workload file {path}: missing the 'model' section")
    spec = WorkloadSpec(
        name=str(data.get("name", Path(path).stem)),
        model=_section(data, "model", ModelSpec, path),
        transcoders=_section(data, "transcoders", TranscoderSpec, path),
        prompt=_section(data, "prompt", PromptSpec, path),
        seed=data.get("seed", 0),
    )
    return validate(spec)


def load_workload_file(path: str | Path) -> WorkloadSpec:
    p = Path(path)
    if not p.exists():
        raise UsageError(f"workload file {p} does not exist")
    try:
        text = p.read_text()
    except OSError as exc:
        raise UsageError(f"workload file {p} cannot be read: {exc.strerror}") from None
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise UsageError(f"workload file {p} is not valid JSON (line {exc.lineno}: {exc.msg})") from None
    return spec_from_dict(data, str(p))


def with_overrides(spec: WorkloadSpec, d_transcoder: int | None = None, n_tokens: int | None = None) -> WorkloadSpec:
    """The spec with a different transcoder width or prompt length (CLI conveniences)."""
    if d_transcoder is not None:
        spec = replace(spec, transcoders=replace(spec.transcoders, d_transcoder=d_transcoder))
    if n_tokens is not None:
        spec = replace(spec, prompt=PromptSpec(n_tokens=n_tokens))
    return validate(spec)
