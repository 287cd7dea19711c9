"""Build a workload's weights locally and deterministically: HF model, tokenizer, transcoders, prompt.

Nothing here touches a model hub. The model is a seeded Hugging Face ``Qwen3ForCausalLM`` or
``LlamaForCausalLM``; the tokenizer is a word-level one (``t0`` .. ``t{V-1}``) saved to and reloaded from a
local folder (TransformerLens needs ``name_or_path``); transcoders are seeded JumpReLU transcoders whose
per-layer threshold is calibrated on the prompt to give about ``target_l0`` active features per position.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from attrbench.guard import CACHE_ENV, env_folder
from attrbench.workload import families, transcoder_files
from attrbench.workload.seeded_transcoders import (
    build_seeded,
    cache_key,
    check_read_back,
    load_folder,
    through_files,
)
from attrbench.workload.spec import WorkloadSpec
from attrbench.workload.transcoder_files import TranscoderWeights

BOS_ID, EOS_ID, UNK_ID, PAD_ID = 1, 2, 0, 3
#: first token id a seeded prompt draws from (0-3 are special)
FIRST_ORDINARY_ID = 4


@dataclass
class BuiltWorkload:
    """Everything a backend needs, on CPU in float32."""

    spec: WorkloadSpec
    #: a transformers ``PreTrainedModel`` (typed Any: its submodules are reached by attribute)
    hf_model: Any
    #: a transformers ``PreTrainedTokenizerFast``
    tokenizer: Any
    tokenizer_dir: str
    transcoders: list[TranscoderWeights]
    token_ids: torch.Tensor  # [n_pos], int64, starts with BOS
    #: the circuit-tracer TranscoderSet / CrossLayerTranscoder the transcoders were read from (its loaders)
    ct_transcoders: Any = None
    #: "plt" (per-layer, reads mlp.hook_in) or "clt" (cross-layer, reads hook_resid_mid)
    transcoder_kind: str = "plt"

    @property
    def n_layers(self) -> int:
        return len(self.transcoders)


def cache_dir() -> Path:
    """``$ATTRBENCH_CACHE`` (checked: a writable folder, or one UsageError line naming the variable) or
    ``$XDG_CACHE_HOME/attrbench``."""
    path = env_folder(CACHE_ENV)
    if path is None:
        path = Path(os.environ.get("XDG_CACHE_HOME", os.path.expanduser("~/.cache"))) / "attrbench"
        path.mkdir(parents=True, exist_ok=True)
    return path


# ------------------------------------------------------------------------------------- cache integrity

#: written last into every cache entry: the spec it was built from and a sha256 per file
MANIFEST = "attrbench-manifest.json"
MANIFEST_FORMAT = 1


def _say(text: str) -> None:
    print(f"attrbench: {text}", file=sys.stderr, flush=True)


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 22):
            h.update(chunk)
    return h.hexdigest()


def _entry_files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*") if p.is_file() and p.name != MANIFEST)


def write_manifest(folder: Path, spec: dict[str, Any]) -> None:
    """Record ``spec`` and (size, sha256) of every file under ``folder``; written last, atomically."""
    files = {str(p.relative_to(folder)): {"size": p.stat().st_size, "sha256": _sha256(p)} for p in _entry_files(folder)}
    text = json.dumps({"format": MANIFEST_FORMAT, "spec": spec, "files": files}, indent=1, sort_keys=True)
    tmp = folder / (MANIFEST + ".tmp")
    with open(tmp, "w") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, folder / MANIFEST)


def verify_manifest(folder: Path, spec: dict[str, Any]) -> str | None:
    """None when ``folder`` holds exactly what its manifest records for ``spec``; else what is wrong, by path."""
    manifest = folder / MANIFEST
    try:
        data = json.loads(manifest.read_text())
        files = data["files"]
        assert isinstance(files, dict) and data.get("format") == MANIFEST_FORMAT
    except FileNotFoundError:
        return f"{manifest} is missing (an unfinished or pre-manifest cache entry)"
    except Exception:
        return f"{manifest} is unreadable"
    if data.get("spec") != spec:
        return f"{manifest} records another spec than the one asked for"
    present = {str(p.relative_to(folder)) for p in _entry_files(folder)}
    for rel in sorted(present - set(files)):
        return f"{folder / rel} is not in the manifest"
    for rel, want in sorted(files.items()):
        path = folder / rel
        if not path.is_file():
            return f"{path} is missing"
        size = path.stat().st_size
        if size != want.get("size"):
            return f"{path} has {size:,} bytes, the manifest records {want.get('size'):,} (truncated or changed)"
        if _sha256(path) != want.get("sha256"):
            return f"{path} does not match its sha256 in the manifest (changed or corrupted)"
    return None


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def clean_stale_temporaries(folder: Path) -> None:
    """Remove ``*.tmp<pid>`` folders under ``folder`` whose writing process is gone."""
    import re
    import shutil

    if not folder.is_dir():
        return
    for p in folder.iterdir():
        m = re.fullmatch(r".+\.tmp(\d+)", p.name)
        if m and int(m.group(1)) != os.getpid() and not _pid_alive(int(m.group(1))):
            _say(f"removing {p}, the temporary folder of a build that did not finish")
            shutil.rmtree(p, ignore_errors=True)


def build_tokenizer(vocab_size: int):
    """A word-level tokenizer saved to a local folder and loaded back from it."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    base = cache_dir()
    clean_stale_temporaries(base)
    folder = base / f"tokenizer-wordlevel-{vocab_size}"
    key = {"tokenizer": "wordlevel", "vocab_size": vocab_size}
    if folder.exists() and (problem := verify_manifest(folder, key)) is not None:
        _say(f"cached tokenizer: {problem}; rebuilding it")
        shutil.rmtree(folder, ignore_errors=True)
    if not folder.exists():
        vocab = {f"t{i}": i for i in range(vocab_size)}
        tk = Tokenizer(models.WordLevel(vocab=vocab, unk_token=f"t{UNK_ID}"))
        tk.pre_tokenizer = pre_tokenizers.Whitespace()
        tmp = folder.with_name(folder.name + f".tmp{os.getpid()}")
        PreTrainedTokenizerFast(
            tokenizer_object=tk,
            bos_token=f"t{BOS_ID}",
            eos_token=f"t{EOS_ID}",
            unk_token=f"t{UNK_ID}",
            pad_token=f"t{PAD_ID}",
        ).save_pretrained(str(tmp))
        write_manifest(tmp, key)
        try:
            tmp.rename(folder)
        except OSError:  # another process got there first
            shutil.rmtree(tmp, ignore_errors=True)
    return PreTrainedTokenizerFast.from_pretrained(str(folder)), str(folder)


def hf_config(spec: WorkloadSpec):
    """The transformers config of the workload's model (eager attention, so patterns can be read)."""
    m = spec.model
    common = dict(
        vocab_size=m.vocab_size,
        hidden_size=m.hidden_size,
        intermediate_size=m.intermediate_size,
        num_hidden_layers=m.num_hidden_layers,
        num_attention_heads=m.num_attention_heads,
        num_key_value_heads=m.num_key_value_heads,
        head_dim=m.head_dim,
        max_position_embeddings=max(256, spec.prompt.length),
        rms_norm_eps=m.rms_norm_eps,
        rope_theta=m.rope_theta,
        bos_token_id=BOS_ID,
        eos_token_id=EOS_ID,
        attn_implementation="eager",
    )
    # tie_word_embeddings, rope_scaling and the Gemma fields come from the family (attrbench.workload.families)
    return families.hf_config(m, common)


def build_hf_model(spec: WorkloadSpec) -> Any:
    from transformers import AutoModelForCausalLM

    cfg = hf_config(spec)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(spec.seed)
        model = AutoModelForCausalLM.from_config(cfg, dtype=torch.float32)
    families.seeded_model_fixups(spec.model, model, spec.seed)
    return model.eval().requires_grad_(False)


def build_prompt(spec: WorkloadSpec) -> torch.Tensor:
    if spec.prompt.token_ids is not None:
        return torch.tensor(spec.prompt.token_ids, dtype=torch.long)
    g = torch.Generator().manual_seed(spec.seed * 1_000_003 + 7)
    tokens = torch.randint(FIRST_ORDINARY_ID, spec.model.vocab_size, (spec.prompt.n_tokens,), generator=g)
    tokens[0] = BOS_ID
    return tokens


#: workloads with more parameters than this are cached on disk after their first build
CACHE_MIN_PARAMS = 50_000_000


def parameter_count(spec: WorkloadSpec) -> int:
    """Parameters of the model plus its transcoders (what building and caching cost)."""
    m, t = spec.model, spec.transcoders
    attn = m.hidden_size * m.head_dim * (2 * m.num_attention_heads + 2 * m.num_key_value_heads)
    mlp = 3 * m.hidden_size * m.intermediate_size
    tc: float = 2 * t.d_transcoder * m.hidden_size + (m.hidden_size**2 if t.skip_connection else 0)
    if t.kind == "clt":  # layer l's features decode into the L - l layers from l on: (L + 1) / 2 on average
        tc += t.d_transcoder * m.hidden_size * (m.num_hidden_layers - 1) / 2
    embeddings = (1 if families.value(m, "tie_word_embeddings") else 2) * m.vocab_size * m.hidden_size
    return int(m.num_hidden_layers * (attn + mlp + tc) + embeddings)


def save_workload(built: BuiltWorkload, folder: Path) -> None:
    """A local folder with ``model/`` (HF model + tokenizer), ``transcoders/``, ``prompt.json`` and, written
    last, the manifest (:data:`MANIFEST`: the spec and a sha256 per file); built under ``NAME.tmp<pid>`` and
    renamed into place, so a reader never sees a half-written entry."""
    tmp = folder.with_name(folder.name + f".tmp{os.getpid()}")
    try:
        built.hf_model.save_pretrained(str(tmp / "model"), safe_serialization=True)
        built.tokenizer.save_pretrained(str(tmp / "model"))
        # circuit-tracer's own layout and a config.yaml, so that circuit-tracer can load the cache too
        transcoder_files.write_transcoders(
            built.transcoders,
            built.transcoder_kind,
            built.spec.model.hidden_size,
            tmp / "transcoders",
            scan=f"attrbench-{built.spec.content_hash()}",
            hooks=family_hooks(built.spec),
        )
        (tmp / "prompt.json").write_text(json.dumps({"token_ids": built.token_ids.tolist()}))
        write_manifest(tmp, built.spec.to_dict())
        tmp.rename(folder)
    except OSError:  # another process cached it first, or the disk is full: the entry is simply not cached
        shutil.rmtree(tmp, ignore_errors=True)


def load_hf_model(folder: Path) -> Any:
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(
        str(folder), dtype=torch.float32, attn_implementation="eager", local_files_only=True
    )
    return model.eval().requires_grad_(False)


def _load_cached(spec: WorkloadSpec, folder: Path) -> BuiltWorkload:
    from transformers import PreTrainedTokenizerFast

    token_ids = torch.tensor(json.loads((folder / "prompt.json").read_text())["token_ids"], dtype=torch.long)
    tokenizer = PreTrainedTokenizerFast.from_pretrained(str(folder / "model"))
    ct, transcoders = load_folder(
        folder / "transcoders", spec.model.num_hidden_layers, spec.model.hidden_size, spec.model.model_type
    )
    check_read_back(spec, transcoders)
    return BuiltWorkload(
        spec,
        load_hf_model(folder / "model"),
        tokenizer,
        str(folder / "model"),
        transcoders,
        token_ids,
        ct,
        spec.transcoders.kind,
    )


def build_local(spec: WorkloadSpec) -> BuiltWorkload:
    """Load a workload of real weights from its local folders (``spec.source``); never contacts a hub."""
    from transformers import AutoTokenizer

    src = spec.source
    assert src is not None, "build_local needs a workload with local folders"
    os.environ["HF_HUB_OFFLINE"] = "1"
    model_dir = Path(src.model_dir)
    tokenizer = AutoTokenizer.from_pretrained(str(model_dir), local_files_only=True)
    # read by circuit-tracer's own loaders; the engine's weights come from the object they return
    tsrc = transcoder_files.resolve(src.transcoders_dir)
    ct = transcoder_files.load(tsrc, lazy=True)
    transcoder_files.check_against_model(
        ct, tsrc, spec.model.num_hidden_layers, spec.model.hidden_size, spec.model.model_type
    )
    transcoders = transcoder_files.engine_weights(ct, spec.model.num_hidden_layers)
    token_ids = torch.tensor(spec.prompt.token_ids, dtype=torch.long)
    return BuiltWorkload(
        spec, load_hf_model(model_dir), tokenizer, str(model_dir), transcoders, token_ids, ct, tsrc.kind
    )


def family_hooks(spec: WorkloadSpec) -> tuple[str, str]:
    """Where the model family's per-layer transcoders read and write (circuit-tracer's configs for it)."""
    f = families.family(spec.model.model_type)
    return f.feature_input_hook, f.feature_output_hook


def build_workload(spec: WorkloadSpec, use_cache: bool | None = None) -> BuiltWorkload:
    """Build the workload on CPU in float32; identical bytes for the same spec on every machine.

    Large workloads (more than :data:`CACHE_MIN_PARAMS` parameters) are saved under the cache folder after
    the first build and loaded from there afterwards, so each benchmark cell does not rebuild them.
    """
    if spec.source is not None:
        return build_local(spec)
    if use_cache is None:
        use_cache = parameter_count(spec) > CACHE_MIN_PARAMS
    # "workloads-ct": caches in circuit-tracer's transcoder layout (older caches under "workloads" stored the
    # JumpReLU threshold under a key circuit-tracer does not read)
    folder = cache_dir() / "workloads-ct" / cache_key(spec)
    if use_cache:
        clean_stale_temporaries(folder.parent)
    if use_cache and folder.exists():
        problem = verify_manifest(folder, spec.to_dict())
        if problem is None:
            try:
                return _load_cached(spec, folder)
            except Exception as exc:  # verified yet unloadable: treat like a corrupted entry
                problem = f"{folder} cannot be loaded ({type(exc).__name__}: {str(exc)[:200]})"
        _say(f"cached workload: {problem}; rebuilding the entry")
        shutil.rmtree(folder, ignore_errors=True)
    hf_model = build_hf_model(spec)
    tokenizer, tok_dir = build_tokenizer(spec.model.vocab_size)
    token_ids = build_prompt(spec)
    transcoders = build_seeded(spec, hf_model, token_ids)
    built = BuiltWorkload(spec, hf_model, tokenizer, tok_dir, transcoders, token_ids, None, spec.transcoders.kind)
    if use_cache:
        folder.parent.mkdir(parents=True, exist_ok=True)
        save_workload(built, folder)
        return _load_cached(spec, folder)
    # written with circuit-tracer's to_safetensors and read back with its loaders: the reference and the
    # exact backends both use what circuit-tracer read
    built.ct_transcoders, built.transcoders = through_files(
        transcoders,
        spec.transcoders.kind,
        spec.model.hidden_size,
        cache_dir() / "transcoders-ct" / cache_key(spec),
        scan=f"attrbench-{spec.content_hash()}",
        hooks=family_hooks(spec),
        model_type=spec.model.model_type,
    )
    check_read_back(spec, built.transcoders)
    return built
