"""Transcoder files read with circuit-tracer's own loaders, and written in circuit-tracer's layouts.

``--transcoders`` accepts what circuit-tracer accepts:

* a transcoder config (``config.yaml``: ``model_kind: transcoder_set | cross_layer_transcoder``,
  ``feature_input_hook``, ``feature_output_hook``, optional ``transcoders:`` list of files; relative paths
  resolve against the config's folder), or a folder holding one;
* a folder of files in a layout circuit-tracer writes: per-layer ``layer_{i}.safetensors``
  (``TranscoderSet.to_safetensors``), Gemma Scope ``layer_{i}.npz``, or a cross-layer transcoder's
  ``W_enc_{i}.safetensors`` + ``W_dec_{i}.safetensors`` (``CrossLayerTranscoder.to_safetensors``);
* a Hugging Face repo id (``org/name``, optionally ``org/name/subfolder``) found in the *local* Hugging
  Face cache (``HF_HUB_CACHE``); nothing is ever downloaded.

The files are then read by ``load_transcoder_set`` (``load_relu_transcoder`` / ``load_gemma_scope_transcoder``)
or ``load_clt``. The reference backend hands the very object they return to circuit-tracer's replacement
model; the exact backends take their weights from the same object (:func:`engine_weights`).

circuit-tracer 0.5.0 has a ``TopK`` activation class but no file format for it: ``to_safetensors`` writes
no activation key for it and ``load_relu_transcoder`` reads such files as plain ReLU. attrbench's config.yaml
therefore may carry ``activation_function: topk`` and ``k: K``; the transcoders are loaded with circuit-tracer's
loader and then given ``TopK(k)`` (circuit-tracer's own class), which is all circuit-tracer itself could do.
Anything we cannot read exactly is a :class:`UsageError`, never a silent fallback.
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast

import torch

from attrbench.errors import UsageError


@dataclass
class TranscoderWeights:
    """One layer's transcoder, in circuit-tracer's layout: ``W_enc``/``W_dec`` are ``[F, d_model]``."""

    W_enc: torch.Tensor
    W_dec: torch.Tensor
    b_enc: torch.Tensor
    b_dec: torch.Tensor
    threshold: torch.Tensor
    W_skip: torch.Tensor | None
    #: "jumprelu" | "relu" | "topk" (with ``k``); a cross-layer transcoder's ``W_dec`` is ``[F, L - layer, d]``
    activation: str = "jumprelu"
    k: int | None = None


#: (feature_input_hook, feature_output_hook) pairs the exact engine implements, per model kind. Per-layer:
#: Qwen3/Llama read the MLP input and write its output; Gemma reads the pre-feedforward norm before its gain
#: and writes the post-feedforward norm's output, as circuit-tracer's configs for them say
PLT_HOOKS = {("mlp.hook_in", "mlp.hook_out"), ("mlp.hook_in", "hook_mlp_out"), ("ln2.hook_normalized", "hook_mlp_out")}
CLT_HOOKS = {("hook_resid_mid", "hook_mlp_out"), ("hook_resid_mid", "mlp.hook_out")}
#: Gemma-2/3 (the pre/post-norm families): the hooks the engine's Gemma layout implements. Its ``mlp.hook_in``
#: is after the pre-feedforward norm's (1 + w) gain and its ``mlp.hook_out`` before the post-feedforward norm,
#: so only ln2.hook_normalized / hook_resid_mid -> hook_mlp_out (circuit-tracer's Gemma configs) are taken;
#: Qwen3/Llama take the others (their ``ln2.hook_normalized`` is before the gain the engine's layout includes)
GEMMA_HOOKS = {
    "transcoder_set": {("ln2.hook_normalized", "hook_mlp_out")},
    "cross_layer_transcoder": {("hook_resid_mid", "hook_mlp_out")},
}
CONFIG_NAMES = ("config.yaml", "config.yml")
_REPO_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*/[A-Za-z0-9][A-Za-z0-9_.-]*(/[^/].*)?$")


@dataclass
class TranscoderSource:
    """Where a transcoder set lives and how circuit-tracer reads it."""

    model_kind: str  # "transcoder_set" | "cross_layer_transcoder"
    feature_input_hook: str
    feature_output_hook: str
    root: str  # the folder everything is relative to
    paths: dict[int, str] = field(default_factory=dict)  # transcoder_set: layer -> file
    special_load_fn: str | None = None  # "gemma-scope" for .npz files
    activation: str | None = None  # "topk" override (circuit-tracer files carry no TopK)
    k: int | None = None
    scan: str | None = None
    config_file: str | None = None

    @property
    def kind(self) -> str:
        return "clt" if self.model_kind == "cross_layer_transcoder" else "plt"

    def files(self) -> list[Path]:
        """Every file the set is read from (for the workload's content hash)."""
        out = [Path(self.config_file)] if self.config_file else []
        if self.model_kind == "transcoder_set":
            out += [Path(p) for _, p in sorted(self.paths.items())]
        else:
            out += sorted(
                p
                for pattern in ("W_enc_*.safetensors", "W_dec_*.safetensors", "W_skip_*.safetensors")
                for p in Path(self.root).glob(pattern)
            )
        return out


def _layer_files(folder: Path, pattern: str) -> dict[int, Path]:
    rx = re.compile(pattern)
    out = {}
    for p in folder.iterdir():
        m = rx.fullmatch(p.name)
        if m:
            out[int(m.group(1))] = p
    return out


def _check_contiguous(found: dict[int, Path], what: str, where: Path) -> None:
    if not found:
        return
    expected = list(range(max(found) + 1))
    missing = sorted(set(expected) - set(found))
    if missing:
        raise UsageError(
            f"--transcoders {where}: {what} for layer(s) {', '.join(map(str, missing[:5]))} "
            f"{'is' if len(missing) == 1 else 'are'} missing"
        )


def hf_cache_snapshot(repo: str, what: str) -> Path:
    """The local snapshot folder of ``org/name[/subfolder]`` in the Hugging Face cache; never downloads."""
    from huggingface_hub import snapshot_download

    parts = repo.split("/")
    repo_id, sub = "/".join(parts[:2]), "/".join(parts[2:])
    revision = None
    if "@" in repo_id:
        repo_id, revision = repo_id.split("@", 1)
    try:
        folder = Path(snapshot_download(repo_id, revision=revision, local_files_only=True))
    except Exception as exc:  # LocalEntryNotFoundError, or an offline error
        raise UsageError(
            f"{what} {repo}: neither a local path nor a repo id in the local Hugging Face cache "
            f"({os.environ.get('HF_HUB_CACHE') or 'default cache'}); nothing is downloaded "
            f"({type(exc).__name__})"
        ) from None
    folder = folder / sub if sub else folder
    if not folder.exists():
        raise UsageError(f"{what} {repo}: {sub} is not in the cached snapshot {folder.parent}")
    return folder


def looks_like_repo_id(text: str) -> bool:
    return bool(_REPO_ID.match(text)) and not text.startswith((".", "/", "~"))


def _read_config(path: Path) -> dict[str, Any]:
    import yaml

    try:
        data = yaml.safe_load(path.read_text())
    except OSError as exc:
        raise UsageError(f"--transcoders {path} cannot be read: {exc.strerror or exc}") from None
    except yaml.YAMLError as exc:
        raise UsageError(f"--transcoders {path} is not valid YAML ({str(exc).splitlines()[0]})") from None
    if not isinstance(data, dict):
        raise UsageError(f"--transcoders {path} must hold a YAML mapping (model_kind, feature_input_hook, ...)")
    return data


def _from_config(path: Path) -> TranscoderSource:
    cfg = _read_config(path)
    root = path.parent
    kind = cfg.get("model_kind")
    if kind not in ("transcoder_set", "cross_layer_transcoder"):
        raise UsageError(f"--transcoders {path}: model_kind {kind!r} is not transcoder_set or cross_layer_transcoder")
    for key in ("feature_input_hook", "feature_output_hook"):
        if not isinstance(cfg.get(key), str):
            raise UsageError(f"--transcoders {path}: {key} is missing")
    act = cfg.get("activation_function")
    k = cfg.get("k")
    if act is not None and act != "topk":
        raise UsageError(
            f"--transcoders {path}: activation_function {act!r}: only 'topk' (with k) may be given; "
            "JumpReLU and ReLU come from the files themselves"
        )
    if act == "topk" and (isinstance(k, bool) or not isinstance(k, int) or k <= 0):
        raise UsageError(f"--transcoders {path}: activation_function topk needs a positive integer k, got {k!r}")
    src = TranscoderSource(
        kind,
        cfg["feature_input_hook"],
        cfg["feature_output_hook"],
        str(root),
        activation=act,
        k=k if act == "topk" else None,
        scan=cfg.get("scan"),
        config_file=str(path),
    )
    files = cfg.get("transcoders")
    if kind == "transcoder_set":
        if files is not None:
            if not isinstance(files, list) or not all(isinstance(f, str) for f in files) or not files:
                raise UsageError(f"--transcoders {path}: transcoders must be a list of file paths")
            for i, f in enumerate(files):
                if f.startswith("hf://"):
                    raise UsageError(
                        f"--transcoders {path}: {f} is an hf:// URI; attrbench never downloads: "
                        "download the files first and list local paths"
                    )
                p = Path(f) if os.path.isabs(f) else root / f
                if not p.exists():
                    raise UsageError(f"--transcoders {path}: layer {i} file {p} does not exist")
                src.paths[i] = str(p)
            if any(Path(p).suffix == ".npz" for p in src.paths.values()):
                src.special_load_fn = "gemma-scope"
        else:
            src.paths = _plt_folder(root)[0]
            src.special_load_fn = _plt_folder(root)[1]
    else:
        if files is not None:
            raise UsageError(
                f"--transcoders {path}: a cross_layer_transcoder config with a transcoders: list "
                "(Gemma Scope 2 CLTs) is not supported; give the folder of W_enc_{i}/W_dec_{i} files"
            )
        _check_clt_folder(root)
    return src


def _plt_folder(folder: Path) -> tuple[dict[int, str], str | None]:
    st = _layer_files(folder, r"layer_(\d+)\.safetensors")
    npz = _layer_files(folder, r"layer_(\d+)\.npz")
    if st and npz:
        raise UsageError(f"--transcoders {folder} holds both layer_{{i}}.safetensors and layer_{{i}}.npz files")
    found = st or npz
    if not found:
        raise UsageError(f"--transcoders {folder}: no layer_{{i}}.safetensors (or Gemma Scope layer_{{i}}.npz) files")
    _check_contiguous(found, "the transcoder file", folder)
    return {i: str(p) for i, p in sorted(found.items())}, ("gemma-scope" if npz else None)


def _check_clt_folder(folder: Path) -> None:
    enc = _layer_files(folder, r"W_enc_(\d+)\.safetensors")
    dec = _layer_files(folder, r"W_dec_(\d+)\.safetensors")
    if not enc:
        raise UsageError(f"--transcoders {folder}: no W_enc_{{i}}.safetensors files (cross-layer transcoder)")
    _check_contiguous(enc, "W_enc_{i}.safetensors", folder)
    if sorted(dec) != sorted(enc):
        missing = sorted(set(enc) - set(dec))
        raise UsageError(
            f"--transcoders {folder}: W_dec_{{i}}.safetensors missing for layer(s) "
            f"{', '.join(map(str, missing[:5])) or '(extra files)'}"
        )


def resolve(arg: str | os.PathLike) -> TranscoderSource:
    """Where ``--transcoders ARG`` points, checked for a layout circuit-tracer reads (UsageError if not)."""
    text = str(arg)
    p = Path(text).expanduser()
    if not p.exists():
        if looks_like_repo_id(text):
            p = hf_cache_snapshot(text, "--transcoders")
        else:
            raise UsageError(f"--transcoders {text} does not exist")
    p = p.resolve()
    if p.is_file():
        if p.suffix not in (".yaml", ".yml"):
            raise UsageError(f"--transcoders {p}: a file must be a circuit-tracer config.yaml")
        return _from_config(p)
    for name in CONFIG_NAMES:
        if (p / name).is_file():
            return _from_config(p / name)
    if any(p.glob("W_enc_*.safetensors")):
        _check_clt_folder(p)
        return TranscoderSource("cross_layer_transcoder", "hook_resid_mid", "hook_mlp_out", str(p))
    if any(p.glob("layer_*.safetensors")) or any(p.glob("layer_*.npz")):
        paths, special = _plt_folder(p)
        return TranscoderSource("transcoder_set", "mlp.hook_in", "mlp.hook_out", str(p), paths, special)
    raise UsageError(
        f"--transcoders {p}: unknown layout: expected a config.yaml, layer_{{i}}.safetensors, "
        "layer_{i}.npz or W_enc_{i}/W_dec_{i}.safetensors files"
    )


def resolve_model_dir(arg: str | os.PathLike) -> Path:
    """``--model``: a local folder, or a repo id in the local Hugging Face cache."""
    text = str(arg)
    p = Path(text).expanduser()
    if p.exists():
        return p
    if looks_like_repo_id(text):
        return hf_cache_snapshot(text, "--model")
    return p


# ---------------------------------------------------------------------------------------------- loading
def load(
    src: TranscoderSource, device: str | torch.device = "cpu", dtype: torch.dtype = torch.float32, lazy: bool = True
):
    """The transcoders as circuit-tracer's own loaders return them (TranscoderSet or CrossLayerTranscoder)."""
    device = torch.device(device)
    scan = src.scan or src.root
    for path in src.paths.values():
        if path.endswith(".safetensors"):
            _check_threshold_key(Path(path))
    try:
        if src.model_kind == "transcoder_set":
            from circuit_tracer.transcoder.single_layer_transcoder import load_transcoder_set

            lazy_ok = lazy and src.special_load_fn is None
            obj: Any = load_transcoder_set(
                dict(src.paths),
                scan=scan,
                feature_input_hook=src.feature_input_hook,
                feature_output_hook=src.feature_output_hook,
                device=device,
                dtype=dtype,
                special_load_fn=cast(Any, src.special_load_fn),  # "gemma-scope" or None, checked on reading
                lazy_encoder=False,
                lazy_decoder=lazy_ok,
            )
            if src.activation == "topk":
                from circuit_tracer.transcoder.activation_functions import TopK

                for tc in obj:
                    if not _is_relu(tc.activation_function):
                        raise UsageError(
                            f"--transcoders {src.config_file}: activation_function topk, but layer "
                            f"{tc.layer_idx}'s file has a JumpReLU threshold"
                        )
                    tc.activation_function = TopK(int(cast(int, src.k)))
        else:
            from circuit_tracer.transcoder.cross_layer_transcoder import load_clt

            if src.activation == "topk":
                raise UsageError(
                    "--transcoders: TopK cross-layer transcoders are not supported "
                    "(circuit-tracer's CrossLayerTranscoder has only relu and jump_relu)"
                )
            obj = load_clt(
                src.root,
                feature_input_hook=src.feature_input_hook,
                feature_output_hook=src.feature_output_hook,
                scan=scan,
                device=device,
                dtype=dtype,
                lazy_decoder=lazy,
                lazy_encoder=False,
            )
            _attach_clt_skip(obj, Path(src.root), device, dtype)
    except UsageError:
        raise
    except Exception as exc:
        first = str(exc).splitlines()[0] if str(exc) else ""
        raise UsageError(
            f"--transcoders {src.config_file or src.root}: circuit-tracer cannot load it "
            f"({type(exc).__name__}: {first[:200]})"
        ) from None
    return obj


def _attach_clt_skip(obj, folder: Path, device, dtype) -> None:
    """circuit-tracer 0.5.0's ``CrossLayerTranscoder.to_safetensors`` does not write ``W_skip`` and ``load_clt``
    never reads one, although the class computes ``inputs @ W_skip[l]``. attrbench writes a CLT's skip
    weights beside its files as ``W_skip_{i}.safetensors`` (key ``W_skip_{i}``, circuit-tracer's in-memory
    layout) and puts them on the loaded object, where circuit-tracer's replacement model uses them."""
    files = _layer_files(folder, r"W_skip_(\d+)\.safetensors")
    if not files:
        return
    if sorted(files) != list(range(obj.n_layers)):
        raise UsageError(
            f"--transcoders {folder}: W_skip_{{i}}.safetensors files for layers {sorted(files)}, "
            f"expected 0 .. {obj.n_layers - 1}"
        )
    from safetensors.torch import load_file

    skips = []
    for i in range(obj.n_layers):
        t = load_file(str(files[i])).get(f"W_skip_{i}")
        if t is None or tuple(t.shape) != (obj.d_model, obj.d_model):
            raise UsageError(f"--transcoders {files[i]}: W_skip_{i} missing or not [{obj.d_model}, {obj.d_model}]")
        skips.append(t)
    obj.W_skip = torch.nn.Parameter(torch.stack(skips).to(device=device, dtype=dtype), requires_grad=False)
    obj.skip_connection = True


def _is_relu(fn) -> bool:
    import torch.nn.functional as F

    return fn is F.relu or fn is torch.relu


def activation_of(fn) -> tuple[str, int | None]:
    """("jumprelu" | "relu" | "topk", k) of a circuit-tracer activation function."""
    from circuit_tracer.transcoder.activation_functions import JumpReLU, TopK

    if isinstance(fn, JumpReLU):
        return "jumprelu", None
    if isinstance(fn, TopK):
        return "topk", int(fn.k)
    if _is_relu(fn) or isinstance(fn, torch.nn.ReLU):
        return "relu", None
    raise UsageError(f"transcoder activation {fn!r} is not supported (JumpReLU, ReLU or TopK)")


def check_hooks_for_family(src: TranscoderSource, model_type: str) -> None:
    """One UsageError line when the transcoders' hooks are not where the engine reads and writes for the
    model family (see :data:`GEMMA_HOOKS`)."""
    from attrbench.workload.families import family

    where = src.config_file or src.root
    hooks = (src.feature_input_hook, src.feature_output_hook)
    f = family(model_type)
    if f.is_gemma:
        allowed = GEMMA_HOOKS[src.model_kind]
    elif src.model_kind == "transcoder_set":
        allowed = PLT_HOOKS - GEMMA_HOOKS["transcoder_set"]
    else:
        allowed = CLT_HOOKS
    if hooks not in allowed:
        want = sorted(allowed)[0]
        what = "per-layer" if src.model_kind == "transcoder_set" else "cross-layer"
        raise UsageError(
            f"--transcoders {where}: hooks {hooks[0]!r} -> {hooks[1]!r} are not supported for "
            f"{what} transcoders on {f.model_type} (give a config.yaml with feature_input_hook: "
            f"{want[0]}, feature_output_hook: {want[1]})"
        )


def check_against_model(
    obj, src: TranscoderSource, n_layers: int, d_model: int, model_type: str | None = None
) -> dict[str, Any]:
    """Layer count, widths, hooks against the model (and its family, when ``model_type`` is given); the
    transcoder section of the workload (a dict)."""
    where = src.config_file or src.root
    hooks = (src.feature_input_hook, src.feature_output_hook)
    if model_type is not None:
        check_hooks_for_family(src, model_type)
    if src.model_kind == "transcoder_set":
        if hooks not in PLT_HOOKS:
            raise UsageError(
                f"--transcoders {where}: hooks {hooks[0]!r} -> {hooks[1]!r} are not supported for "
                f"per-layer transcoders (use {sorted(PLT_HOOKS)[0]})"
            )
        L, F, skip = len(obj), obj.d_transcoder, obj.skip_connection
        for tc in obj:
            if tc.d_model != d_model:
                raise UsageError(
                    f"--transcoders {where}: layer {tc.layer_idx} has d_model {tc.d_model}, "
                    f"the model has hidden_size {d_model}"
                )
            if (tc.W_skip is not None) != skip:
                raise UsageError(f"--transcoders {where}: layers differ in having W_skip")
        for _, path in sorted(src.paths.items()):
            if path.endswith(".safetensors"):
                _check_plt_file(Path(path), F, d_model)
        acts = {activation_of(tc.activation_function) for tc in obj}
        if len(acts) > 1:
            raise UsageError(f"--transcoders {where}: layers have different activation functions {sorted(acts)}")
        activation, k = acts.pop()
    else:
        if hooks not in CLT_HOOKS:
            raise UsageError(
                f"--transcoders {where}: hooks {hooks[0]!r} -> {hooks[1]!r} are not supported for "
                f"cross-layer transcoders (use {sorted(CLT_HOOKS)[0]})"
            )
        L, F, skip = obj.n_layers, obj.d_transcoder, obj.W_skip is not None
        if obj.d_model != d_model:
            raise UsageError(f"--transcoders {where}: d_model {obj.d_model}, the model has hidden_size {d_model}")
        from safetensors import safe_open

        for i in range(L):
            dec_path = Path(src.root) / f"W_dec_{i}.safetensors"
            with safe_open(str(dec_path), framework="pt") as f:
                key = f"W_dec_{i}"
                if key not in f.keys():
                    raise UsageError(f"--transcoders {dec_path} lacks {key}")
                shape = tuple(f.get_slice(key).get_shape())
            if shape != (F, L - i, d_model):
                raise UsageError(
                    f"--transcoders {dec_path}: {key} has shape {list(shape)}, expected "
                    f"{[F, L - i, d_model]} (d_transcoder, n_layers - {i}, d_model)"
                )
        activation, k = activation_of(obj.activation_function)
    if L != n_layers:
        raise UsageError(f"--transcoders {where} has {L} layers; the model has num_hidden_layers={n_layers}")
    return {"kind": src.kind, "activation": activation, "k": k, "d_transcoder": int(F), "skip_connection": bool(skip)}


def _check_plt_file(path: Path, F: int, d: int) -> None:
    """Shapes in a per-layer file's header (lazy loading would otherwise meet them only mid-run)."""
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as f:
        shapes = {k: tuple(f.get_slice(k).get_shape()) for k in f.keys()}
    expected = {
        "W_enc": (F, d),
        "W_dec": (F, d),
        "b_enc": (F,),
        "b_dec": (d,),
        "activation_function.threshold": (F,),
        "W_skip": (d, d),
    }
    missing = [k for k in ("W_enc", "W_dec", "b_enc", "b_dec") if k not in shapes]
    if missing:
        raise UsageError(f"transcoder file {path} lacks {', '.join(missing)}")
    for key, shape in expected.items():
        if key in shapes and shapes[key] != shape:
            raise UsageError(
                f"transcoder file {path}: {key} has shape {list(shapes[key])}, expected {list(shape)} "
                f"(d_model={d}, d_transcoder={F})"
            )


def _safetensors_size(path: Path) -> int:
    """The byte size a safetensors file's own header says it has (8-byte length, JSON header, tensor data)."""
    with open(path, "rb") as f:
        n = int.from_bytes(f.read(8), "little")
        header = json.loads(f.read(min(n, 100 << 20)))
    return 8 + n + max((v["data_offsets"][1] for k, v in header.items() if k != "__metadata__"), default=0)


def _check_threshold_key(path: Path) -> None:
    """A readable, complete safetensors file whose JumpReLU threshold is where circuit-tracer reads it."""
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt") as f:
            keys = set(f.keys())
        complete = _safetensors_size(path) <= path.stat().st_size
    except Exception as exc:
        raise UsageError(f"transcoder file {path} cannot be read as safetensors: {exc}") from None
    if not complete:
        raise UsageError(
            f"transcoder file {path} is truncated ({path.stat().st_size} bytes, its header describes "
            f"{_safetensors_size(path)})"
        )
    if "threshold" in keys and "activation_function.threshold" not in keys:
        raise UsageError(
            f"transcoder file {path} has a 'threshold' key, which circuit-tracer's load_relu_transcoder "
            "does not read (it wants 'activation_function.threshold', as to_safetensors writes)"
        )


# ------------------------------------------------------------------------------------- to engine weights
def engine_weights(obj, n_layers: int) -> list:
    """Per-layer weights for the exact engine, read from circuit-tracer's transcoder object.

    Per-layer: ``W_enc``/``W_dec`` ``[F, d]``, ``W_skip`` with ``mlp_out = x @ W_skip.T``. Cross-layer:
    ``W_dec`` of layer ``l`` is ``[F, L - l, d]`` (its decoders into layers ``l .. L-1``) and ``W_skip`` is
    stored transposed from circuit-tracer's ``inputs @ W_skip[l]``, so the same ``x @ W_skip.T`` holds.
    """

    def f32(t):
        return None if t is None else t.detach().to(torch.float32).cpu()

    out = []
    with torch.no_grad():
        if hasattr(obj, "transcoders"):  # TranscoderSet
            for tc in obj:
                act, k = activation_of(tc.activation_function)
                F = tc.d_transcoder
                thr = f32(tc.activation_function.threshold) if act == "jumprelu" else torch.zeros(F)
                out.append(
                    TranscoderWeights(
                        f32(tc.W_enc),
                        f32(tc._get_decoder_vectors()),
                        f32(tc.b_enc),
                        f32(tc.b_dec),
                        thr.expand(F).clone(),
                        f32(tc.W_skip),
                        act,
                        k,
                    )
                )
        else:  # CrossLayerTranscoder
            act, k = activation_of(obj.activation_function)
            for layer in range(obj.n_layers):
                thr = (
                    f32(obj.activation_function.threshold[layer]).reshape(-1)
                    if act == "jumprelu"
                    else torch.zeros(obj.d_transcoder)
                )
                skip = None if obj.W_skip is None else f32(obj.W_skip[layer]).T.contiguous()
                out.append(
                    TranscoderWeights(
                        f32(obj._get_encoder_weights(layer)),
                        f32(obj._get_decoder_vectors(layer)),
                        f32(obj.b_enc[layer]),
                        f32(obj.b_dec[layer]),
                        thr,
                        skip,
                        act,
                        k,
                    )
                )
    return out


# ---------------------------------------------------------------------------------------------- writing
def _atomic_folder(folder: Path):
    tmp = folder.with_name(folder.name + f".tmp{os.getpid()}")
    tmp.mkdir(parents=True, exist_ok=True)
    return tmp


def write_config(
    folder: Path,
    model_kind: str,
    input_hook: str,
    output_hook: str,
    n_layers: int | None = None,
    activation: str | None = None,
    k: int | None = None,
    scan: str | None = None,
) -> Path:
    import yaml

    cfg: dict[str, Any] = {
        "model_kind": model_kind,
        "feature_input_hook": input_hook,
        "feature_output_hook": output_hook,
    }
    if scan:
        cfg["scan"] = scan
    if model_kind == "transcoder_set" and n_layers is not None:
        cfg["transcoders"] = [f"layer_{i}.safetensors" for i in range(n_layers)]
    if activation == "topk":
        cfg["activation_function"] = "topk"
        cfg["k"] = int(cast(int, k))
    path = folder / "config.yaml"
    path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    return path


def circuit_tracer_object(weights: list, kind: str, d_model: int):
    """A circuit-tracer TranscoderSet / CrossLayerTranscoder (float32, CPU) holding ``weights``."""
    from circuit_tracer.transcoder.activation_functions import JumpReLU, TopK
    from circuit_tracer.transcoder.cross_layer_transcoder import CrossLayerTranscoder
    from circuit_tracer.transcoder.single_layer_transcoder import SingleLayerTranscoder, TranscoderSet

    cpu = torch.device("cpu")
    act, k = weights[0].activation, weights[0].k
    skip = weights[0].W_skip is not None
    F = weights[0].W_enc.shape[0]
    with torch.no_grad():
        if kind == "plt":
            layers = {}
            for i, w in enumerate(weights):
                fn = (
                    JumpReLU(w.threshold.clone(), 0.1)
                    if act == "jumprelu"
                    else TopK(k)
                    if act == "topk"
                    else torch.nn.functional.relu
                )
                tc = SingleLayerTranscoder(d_model, F, fn, i, skip_connection=skip, device=cpu, dtype=torch.float32)
                for name in ("W_enc", "W_dec", "b_enc", "b_dec", "W_skip"):
                    if getattr(w, name) is not None:
                        getattr(tc, name).copy_(getattr(w, name))
                layers[i] = tc
            return TranscoderSet(layers, feature_input_hook="mlp.hook_in", feature_output_hook="mlp.hook_out")
        L = len(weights)
        clt = CrossLayerTranscoder(
            L,
            F,
            d_model,
            activation_function="jump_relu" if act == "jumprelu" else "relu",
            skip_connection=skip,
            lazy_decoder=False,
            device=cpu,
            dtype=torch.float32,
        )
        for i, w in enumerate(weights):
            clt.W_enc[i].copy_(w.W_enc)
            clt.b_enc[i].copy_(w.b_enc)
            clt.b_dec[i].copy_(w.b_dec)
            clt.W_dec[i].copy_(w.W_dec)
            if skip:
                clt.W_skip[i].copy_(w.W_skip.T)
            if act == "jumprelu":
                clt.activation_function.threshold[i, 0].copy_(w.threshold)
        return clt


def write_transcoders(
    weights: list,
    kind: str,
    d_model: int,
    folder: Path,
    scan: str | None = None,
    hooks: tuple[str, str] = ("mlp.hook_in", "mlp.hook_out"),
) -> Path:
    """Write ``weights`` with circuit-tracer's own ``to_safetensors`` plus a config.yaml; returns the config.

    ``hooks``: where per-layer transcoders read and write (the model family's, as circuit-tracer's configs
    for it say); cross-layer transcoders always read ``hook_resid_mid`` and write ``hook_mlp_out``."""
    obj = circuit_tracer_object(weights, kind, d_model)
    tmp = _atomic_folder(folder)
    obj.to_safetensors(str(tmp))
    if kind == "clt" and obj.W_skip is not None:  # not written by circuit-tracer 0.5.0 (see _attach_clt_skip)
        from safetensors.torch import save_file

        for i in range(len(weights)):
            save_file({f"W_skip_{i}": obj.W_skip[i].detach().contiguous()}, str(tmp / f"W_skip_{i}.safetensors"))
    if kind == "plt":
        write_config(tmp, "transcoder_set", hooks[0], hooks[1], len(weights), weights[0].activation, weights[0].k, scan)
    else:
        write_config(tmp, "cross_layer_transcoder", "hook_resid_mid", "hook_mlp_out", scan=scan)
    try:
        tmp.rename(folder)
    except OSError:  # another process wrote it first
        import shutil

        shutil.rmtree(tmp, ignore_errors=True)
    return folder / "config.yaml"
