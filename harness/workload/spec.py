"""Workload specifications: presets, JSON workload files, validation and a stable hash.

A workload is a model shape (Hugging Face config field names), a transcoder shape, a prompt and a seed.
:mod:`attrbench.workload.build` turns it into weights; the same spec always gives bit-identical weights and prompt.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import Any

from attrbench.errors import UsageError
from attrbench.workload.families import OPTIONAL_FIELDS, check_config_fields, validate_model

MODEL_TYPES = ("qwen3", "llama", "gemma2", "gemma3")
TRANSCODER_KINDS = ("plt", "clt")
ACTIVATIONS = ("jumprelu", "relu", "topk")


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
    # Optional, family-specific fields (see attrbench.workload.families): None = the family's default. They are left
    # out of the content hash while None, so workloads that do not set them keep their hashes.
    tie_word_embeddings: bool | None = None
    rope_scaling: dict | None = None
    attn_logit_softcapping: float | None = None
    final_logit_softcapping: float | None = None
    query_pre_attn_scalar: float | None = None
    sliding_window: int | None = None
    rope_local_base_freq: float | None = None
    sliding_window_pattern: int | None = None


@dataclass(frozen=True)
class TranscoderSpec:
    """Per-layer JumpReLU transcoders; thresholds are calibrated so each (layer, position) of the prompt
    has about ``target_l0`` active features."""

    d_transcoder: int = 1024
    skip_connection: bool = True
    target_l0: float = 20.0
    #: "plt" (per-layer) or "clt" (cross-layer: reads hook_resid_mid, writes every MLP output from its layer on)
    kind: str = "plt"
    #: "jumprelu" | "relu" | "topk"; TopK keeps the ``k`` largest pre-activations per position
    activation: str = "jumprelu"
    k: int | None = None
    #: no pre-activation of the calibration prompt lies closer than this to its feature's threshold; None =
    #: the kind's default (0.05 per-layer, 0.1 cross-layer, safe for bf16). Long prompts need a smaller one:
    #: a feature has thousands of pre-activations there, and gaps of twice the default margin near the cut
    #: are rare, so the default pushes thresholds up and the active count grows far slower than the prompt.
    threshold_margin: float | None = None

    @property
    def per_position_l0(self) -> float:
        """Active features per (layer, position) the build aims at (``k`` for TopK)."""
        return float(self.k) if self.activation == "topk" and self.k else self.target_l0


@dataclass(frozen=True)
class PromptSpec:
    """``n_tokens`` seeded token ids starting with BOS, or explicit ``token_ids``."""

    n_tokens: int = 16
    token_ids: tuple[int, ...] | None = None

    @property
    def length(self) -> int:
        return len(self.token_ids) if self.token_ids is not None else self.n_tokens


@dataclass(frozen=True)
class LocalSource:
    """Real weights from local folders: a Hugging Face model folder (config.json, *.safetensors, tokenizer
    files), a folder of per-layer transcoders (``layer_{i}.safetensors``) and the prompt text."""

    model_dir: str
    transcoders_dir: str
    prompt: str

    def fingerprint(self) -> list[list[Any]]:
        """(relative path, size, mtime_ns) of every file in both folders: part of the content hash."""
        from attrbench.workload import transcoder_files

        out = []
        root = Path(self.model_dir)
        for f in sorted(root.rglob("*")) if root.is_dir() else ():
            if f.is_file():
                st = f.stat()
                out.append([f"model/{f.relative_to(root)}", st.st_size, st.st_mtime_ns])
        try:
            files = transcoder_files.resolve(self.transcoders_dir).files()
        except UsageError:
            files = []
        for f in files:
            if f.is_file():
                st = f.stat()
                out.append([f"transcoders/{f.name}", st.st_size, st.st_mtime_ns])
        return out


@dataclass(frozen=True)
class WorkloadSpec:
    name: str = "custom"
    model: ModelSpec = field(default_factory=ModelSpec)
    transcoders: TranscoderSpec = field(default_factory=TranscoderSpec)
    prompt: PromptSpec = field(default_factory=PromptSpec)
    seed: int = 0
    #: real weights from local folders instead of seeded ones (see :func:`local_spec`)
    source: LocalSource | None = None

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        if d["source"] is None:
            del d["source"]  # seeded workloads keep the hashes they always had
        for key in OPTIONAL_FIELDS:
            if d["model"][key] is None:
                del d["model"][key]
        for key, default in (("kind", "plt"), ("activation", "jumprelu"), ("k", None), ("threshold_margin", None)):
            if d["transcoders"].get(key) == default:
                del d["transcoders"][key]  # so do per-layer JumpReLU workloads
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
        if self.source is not None:
            d["source_files"] = self.source.fingerprint()
        return hashlib.sha256(json.dumps(d, sort_keys=True).encode()).hexdigest()[:16]

    @property
    def estimated_active_features(self) -> int:
        """Active features the calibration aims at (position 0, BOS, never has any, as in circuit-tracer)."""
        return int(round(self.model.num_hidden_layers * (self.prompt.length - 1) * self.transcoders.per_position_l0))


def _preset(name: str, model: ModelSpec, transcoders: TranscoderSpec, n_tokens: int, note: str) -> tuple:
    return name, (WorkloadSpec(name, model, transcoders, PromptSpec(n_tokens=n_tokens)), note)


PRESETS: dict[str, tuple[WorkloadSpec, str]] = dict(
    [
        _preset(
            "tiny",
            ModelSpec(
                num_hidden_layers=4,
                hidden_size=128,
                num_attention_heads=8,
                num_key_value_heads=2,
                head_dim=16,
                intermediate_size=256,
                vocab_size=512,
            ),
            TranscoderSpec(d_transcoder=1024, target_l0=20),
            16,
            "default; the whole ladder in minutes on 2 CPU cores",
        ),
        _preset(
            "small",
            ModelSpec(
                num_hidden_layers=8,
                hidden_size=256,
                num_attention_heads=8,
                num_key_value_heads=2,
                head_dim=32,
                intermediate_size=768,
                vocab_size=2048,
            ),
            TranscoderSpec(d_transcoder=4096, target_l0=176),
            32,
            ">= 40,000 active features; circuit-tracer at 4,000 nodes in about 3 minutes on 2 cores",
        ),
        _preset(
            "large",
            ModelSpec(
                num_hidden_layers=8,
                hidden_size=256,
                num_attention_heads=8,
                num_key_value_heads=2,
                head_dim=32,
                intermediate_size=768,
                vocab_size=2048,
            ),
            TranscoderSpec(d_transcoder=8192, target_l0=265),
            48,
            ">= 90,000 active features, for 70,000-node runs",
        ),
        _preset(
            "small-clt",
            ModelSpec(
                num_hidden_layers=8,
                hidden_size=256,
                num_attention_heads=8,
                num_key_value_heads=2,
                head_dim=32,
                intermediate_size=768,
                vocab_size=2048,
            ),
            TranscoderSpec(d_transcoder=4096, target_l0=200, kind="clt"),
            32,
            "small with a cross-layer JumpReLU transcoder (>= 40,000 active features, decoders 4.5x larger)",
        ),
        _preset(
            "long",
            ModelSpec(
                num_hidden_layers=4,
                hidden_size=128,
                num_attention_heads=8,
                num_key_value_heads=2,
                head_dim=16,
                intermediate_size=256,
                vocab_size=2048,
            ),
            TranscoderSpec(d_transcoder=4096, target_l0=20, threshold_margin=0.002),
            256,
            "prompt-length sweeps on CPU (--n-tokens 64,256,1024,2048: about 5,000 to 164,000 active "
            "features); float32 only (threshold margin 0.002)",
        ),
        _preset(
            "qwen3-4b",
            ModelSpec(
                num_hidden_layers=36,
                hidden_size=2560,
                num_attention_heads=32,
                num_key_value_heads=8,
                head_dim=128,
                intermediate_size=9728,
                vocab_size=151936,
                rope_theta=1000000.0,
            ),
            TranscoderSpec(d_transcoder=8192, target_l0=80),
            32,
            "real Qwen3-4B shapes (36 layers, d 2560, 32/8 heads); for GPU runs",
        ),
        _preset(
            "llama-3.2-1b",
            ModelSpec(
                model_type="llama",
                num_hidden_layers=16,
                hidden_size=2048,
                num_attention_heads=32,
                num_key_value_heads=8,
                head_dim=64,
                intermediate_size=8192,
                vocab_size=128256,
                rms_norm_eps=1e-5,
                rope_theta=500000.0,
                tie_word_embeddings=True,
                rope_scaling={
                    "rope_type": "llama3",
                    "factor": 32.0,
                    "low_freq_factor": 1.0,
                    "high_freq_factor": 4.0,
                    "original_max_position_embeddings": 8192,
                },
            ),
            TranscoderSpec(d_transcoder=16384, target_l0=80),
            32,
            "real Llama-3.2-1B shapes (16 layers, d 2048, 32/8 heads, llama3 RoPE scaling, tied); for GPU runs",
        ),
        _preset(
            "gemma-2-2b",
            ModelSpec(
                model_type="gemma2",
                num_hidden_layers=26,
                hidden_size=2304,
                num_attention_heads=8,
                num_key_value_heads=4,
                head_dim=256,
                intermediate_size=9216,
                vocab_size=256000,
                rms_norm_eps=1e-6,
                rope_theta=10000.0,
                tie_word_embeddings=True,
                query_pre_attn_scalar=256,
                attn_logit_softcapping=50.0,
                final_logit_softcapping=30.0,
                sliding_window=4096,
            ),
            TranscoderSpec(d_transcoder=16384, target_l0=80),
            32,
            "real Gemma-2-2B shapes (26 layers, d 2304, 8/4 heads of 256, softcaps 50/30); for GPU runs",
        ),
        _preset(
            "gemma-3-1b",
            ModelSpec(
                model_type="gemma3",
                num_hidden_layers=26,
                hidden_size=1152,
                num_attention_heads=4,
                num_key_value_heads=1,
                head_dim=256,
                intermediate_size=6912,
                vocab_size=262144,
                rms_norm_eps=1e-6,
                rope_theta=1000000.0,
                tie_word_embeddings=True,
                query_pre_attn_scalar=256,
                sliding_window=512,
                rope_local_base_freq=10000.0,
                sliding_window_pattern=6,
            ),
            TranscoderSpec(d_transcoder=16384, target_l0=80),
            32,
            "real Gemma-3-1B shapes (26 layers, d 1152, 4/1 heads of 256, local/global RoPE); for GPU runs",
        ),
    ]
)
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
        raise UsageError(
            f"workload: model.model_type {m.model_type!r} is not supported; use one of {', '.join(MODEL_TYPES)}"
        )
    for f in fields(ModelSpec):
        if f.name in ("model_type",) or f.name in OPTIONAL_FIELDS:
            continue
        value = getattr(m, f.name)
        (_positive_float if f.type == "float" else _positive_int)("model", f.name, value)
    if m.num_attention_heads % m.num_key_value_heads:
        raise UsageError(
            f"workload: model.num_attention_heads ({m.num_attention_heads}) must be divisible by "
            f"model.num_key_value_heads ({m.num_key_value_heads})"
        )
    validate_model(m)
    t = spec.transcoders
    _positive_int("transcoders", "d_transcoder", t.d_transcoder)
    _positive_float("transcoders", "target_l0", t.target_l0)
    if t.target_l0 > t.d_transcoder:
        raise UsageError(f"workload: transcoders.target_l0 ({t.target_l0}) exceeds d_transcoder ({t.d_transcoder})")
    if not isinstance(t.skip_connection, bool):
        raise UsageError(f"workload: transcoders.skip_connection must be true or false, got {t.skip_connection!r}")
    if t.kind not in TRANSCODER_KINDS:
        raise UsageError(f"workload: transcoders.kind must be one of {', '.join(TRANSCODER_KINDS)}, got {t.kind!r}")
    if t.activation not in ACTIVATIONS:
        raise UsageError(
            f"workload: transcoders.activation must be one of {', '.join(ACTIVATIONS)}, got {t.activation!r}"
        )
    if t.threshold_margin is not None:
        _positive_float("transcoders", "threshold_margin", t.threshold_margin)
    if t.activation == "topk":
        k = _positive_int("transcoders", "k", t.k)
        if k > t.d_transcoder:
            raise UsageError(f"workload: transcoders.k ({t.k}) exceeds d_transcoder ({t.d_transcoder})")
        if t.kind == "clt":
            raise UsageError(
                "workload: TopK cross-layer transcoders are not supported (circuit-tracer's "
                "CrossLayerTranscoder has relu and jump_relu only)"
            )
    elif t.k is not None:
        raise UsageError('workload: transcoders.k goes with activation "topk" only')
    p = spec.prompt
    if p.token_ids is not None:
        if len(p.token_ids) < 2:
            raise UsageError("workload: prompt.token_ids needs at least 2 tokens")
        bad = [t for t in p.token_ids if isinstance(t, bool) or not isinstance(t, int) or not 0 <= t < m.vocab_size]
        if bad:
            raise UsageError(
                f"workload: prompt.token_ids must be integers in [0, vocab_size={m.vocab_size}); got {bad[:3]}"
            )
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
    if cls is ModelSpec:
        # A pasted Hugging Face config.json has many more fields: a field that changes the computation and
        # is not modelled is refused; fields that cannot change it (token ids, dtype, ...) are not read.
        raw = check_config_fields(raw, f"workload file {path}: model")
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
    unknown = set(data) - {"name", "model", "transcoders", "prompt", "seed", "source"}
    if unknown:
        raise UsageError(
            f"workload file {path}: unknown top-level keys {sorted(unknown)}; expected model, transcoders, prompt, seed"
        )
    if "model" not in data:
        raise UsageError(f"workload file {path}: missing the 'model' section")
    spec = WorkloadSpec(
        name=str(data.get("name", Path(path).stem)),
        model=_section(data, "model", ModelSpec, path),
        transcoders=_section(data, "transcoders", TranscoderSpec, path),
        prompt=_section(data, "prompt", PromptSpec, path),
        seed=data.get("seed", 0),
    )
    source = data.get("source")
    if source is not None:
        if not isinstance(source, dict) or set(source) != {"model_dir", "transcoders_dir", "prompt"}:
            raise UsageError(
                f"workload file {path}: 'source' must be an object with model_dir, transcoders_dir, prompt"
            )
        spec = replace(spec, source=LocalSource(**{k: str(v) for k, v in source.items()}))
    return validate(spec)


def load_workload_file(path: str | Path) -> WorkloadSpec:
    from attrbench.guard import read_text_bounded

    p = Path(path)
    text = read_text_bounded(p, "workload file")
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise UsageError(f"workload file {p} is not valid JSON (line {exc.lineno}: {exc.msg})") from None
    except (ValueError, RecursionError):  # a 5,000-digit integer, or nesting deeper than the parser goes
        raise UsageError(f"workload file {p} has an integer too long or nesting too deep to read") from None
    return spec_from_dict(data, str(p))


def with_overrides(spec: WorkloadSpec, d_transcoder: int | None = None, n_tokens: int | None = None) -> WorkloadSpec:
    """The spec with a different transcoder width or prompt length (CLI conveniences)."""
    if d_transcoder is not None:
        spec = replace(spec, transcoders=replace(spec.transcoders, d_transcoder=d_transcoder))
    if n_tokens is not None:
        spec = replace(spec, prompt=PromptSpec(n_tokens=n_tokens))
    return validate(spec)


def _read_json(path: Path, what: str) -> dict[str, Any]:
    from attrbench.guard import read_text_bounded

    try:
        data = json.loads(read_text_bounded(path, what))
    except json.JSONDecodeError as exc:
        raise UsageError(f"{what} {path} is not valid JSON (line {exc.lineno}: {exc.msg})") from None
    except (ValueError, RecursionError):
        raise UsageError(f"{what} {path} has an integer too long or nesting too deep to read") from None
    if not isinstance(data, dict):
        raise UsageError(f"{what} {path} must hold a JSON object")
    return data


def _transcoder_shapes(path: Path, what: str = "transcoder file") -> dict[str, tuple[int, ...]]:
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt") as f:
            return {k: tuple(f.get_slice(k).get_shape()) for k in f.keys()}
    except Exception as exc:
        raise UsageError(f"{what} {path} cannot be read as safetensors: {exc}") from None


def model_spec_from_config(folder: Path) -> ModelSpec:
    """The model section of a local Hugging Face model folder's ``config.json``."""
    config = folder / "config.json"
    if not config.exists():
        raise UsageError(f"--model {folder} has no config.json (a local Hugging Face model folder is needed)")
    data = _read_json(config, "model config")
    data = check_config_fields(data, f"--model {folder}: config.json")
    mt = data.get("model_type")
    if mt not in MODEL_TYPES:
        raise UsageError(f"--model {folder}: model_type {mt!r} is not supported; use one of {', '.join(MODEL_TYPES)}")
    known = {f.name for f in fields(ModelSpec)}
    kwargs = {k: v for k, v in data.items() if k in known}
    if "head_dim" not in kwargs and "hidden_size" in data and "num_attention_heads" in data:
        kwargs["head_dim"] = data["hidden_size"] // data["num_attention_heads"]
    kwargs.setdefault("num_key_value_heads", data.get("num_attention_heads", ModelSpec.num_key_value_heads))
    return ModelSpec(**kwargs)


def tokenize_prompt(model_dir: Path, text: str) -> tuple[int, ...]:
    """``text`` tokenized with the folder's tokenizer, BOS prepended when it has one and it is not there."""
    from transformers import AutoTokenizer

    try:
        tok = AutoTokenizer.from_pretrained(str(model_dir), local_files_only=True)
    except Exception as exc:
        raise UsageError(
            f"--model {model_dir}: its tokenizer cannot be loaded ({type(exc).__name__}: "
            f"{str(exc).splitlines()[0] if str(exc) else ''})"
        ) from None
    ids = list(tok(text, add_special_tokens=False)["input_ids"])
    bos = tok.bos_token_id
    if bos is not None and (not ids or ids[0] != bos):
        ids.insert(0, bos)
    return tuple(int(i) for i in ids)


def local_spec(model_dir: str | Path, transcoders_dir: str | Path, prompt: str) -> WorkloadSpec:
    """A workload of real local weights: model section from config.json, transcoder shape checked from the
    files, prompt tokenized now (no hub is ever contacted). Any problem is one :class:`UsageError` line."""
    from attrbench.workload import transcoder_files

    mdir = transcoder_files.resolve_model_dir(model_dir).resolve()
    if not mdir.is_dir():
        raise UsageError(f"--model {model_dir} is neither a preset nor an existing folder")
    if not any(mdir.glob("*.safetensors")):
        raise UsageError(f"--model {mdir} has no *.safetensors weights")
    model = model_spec_from_config(mdir)
    for weights in sorted(mdir.glob("*.safetensors")):  # a truncated file is refused here, by name
        _transcoder_shapes(weights, "model weights file")
    src = transcoder_files.resolve(transcoders_dir)
    found = transcoder_files.check_against_model(
        transcoder_files.load(src, lazy=True), src, model.num_hidden_layers, model.hidden_size, model.model_type
    )
    transcoders = TranscoderSpec(
        d_transcoder=found["d_transcoder"],
        skip_connection=found["skip_connection"],
        kind=found["kind"],
        activation=found["activation"],
        k=found["k"],
    )
    tdir = Path(src.config_file or src.root)
    if not prompt or not prompt.strip():
        raise UsageError("--prompt must be a non-empty text")
    token_ids = tokenize_prompt(mdir, prompt)
    spec = WorkloadSpec(
        name=mdir.name,
        model=model,
        transcoders=transcoders,
        prompt=PromptSpec(token_ids=token_ids),
        source=LocalSource(str(mdir), str(tdir), prompt),
    )
    return validate(spec)
