"""Build a workload's weights locally and deterministically: HF model, tokenizer, transcoders, prompt.

Nothing here touches a model hub. The model is a seeded Hugging Face ``Qwen3ForCausalLM`` or
``LlamaForCausalLM``; the tokenizer is a word-level one (``t0`` .. ``t{V-1}``) saved to and reloaded from a
local folder (TransformerLens needs ``name_or_path``); transcoders are seeded JumpReLU transcoders whose
per-layer threshold is calibrated on the prompt to give about ``target_l0`` active features per position.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import torch

from attrbench.workload import WorkloadSpec

BOS_ID, EOS_ID, UNK_ID, PAD_ID = 1, 2, 0, 3
#: first token id a seeded prompt draws from (0-3 are special)
FIRST_ORDINARY_ID = 4


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


@dataclass
class BuiltWorkload:
    """Everything a backend needs, on CPU in float32."""

    spec: WorkloadSpec
    hf_model: torch.nn.Module
    tokenizer: object
    tokenizer_dir: str
    transcoders: list[TranscoderWeights]
    token_ids: torch.Tensor  # [n_pos], int64, starts with BOS
    #: the circuit-tracer TranscoderSet / CrossLayerTranscoder the transcoders were read from (its loaders)
    ct_transcoders: object = None
    #: "plt" (per-layer, reads mlp.hook_in) or "clt" (cross-layer, reads hook_resid_mid)
    transcoder_kind: str = "plt"

    @property
    def n_layers(self) -> int:
        return len(self.transcoders)


def cache_dir() -> Path:
    base = os.environ.get("ATTRBENCH_CACHE") or os.path.join(
        os.environ.get("XDG_CACHE_HOME", os.path.expanduser("~/.cache")), "attrbench"
    )
    path = Path(base)
    path.mkdir(parents=True, exist_ok=True)
    return path


def build_tokenizer(vocab_size: int):
    """A word-level tokenizer saved to a local folder and loaded back from it."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    folder = cache_dir() / f"tokenizer-wordlevel-{vocab_size}"
    if not (folder / "tokenizer.json").exists():
        vocab = {f"t{i}": i for i in range(vocab_size)}
        tk = Tokenizer(models.WordLevel(vocab=vocab, unk_token=f"t{UNK_ID}"))
        tk.pre_tokenizer = pre_tokenizers.Whitespace()
        tmp = folder.with_name(folder.name + f".tmp{os.getpid()}")
        PreTrainedTokenizerFast(
            tokenizer_object=tk, bos_token=f"t{BOS_ID}", eos_token=f"t{EOS_ID}",
            unk_token=f"t{UNK_ID}", pad_token=f"t{PAD_ID}",
        ).save_pretrained(str(tmp))
        try:
            tmp.rename(folder)
        except OSError:  # another process got there first
            pass
    return PreTrainedTokenizerFast.from_pretrained(str(folder)), str(folder)


def hf_config(spec: WorkloadSpec):
    """The transformers config of the workload's model (eager attention, so patterns can be read)."""
    from transformers import LlamaConfig, Qwen3Config

    m = spec.model
    common = dict(
        vocab_size=m.vocab_size, hidden_size=m.hidden_size, intermediate_size=m.intermediate_size,
        num_hidden_layers=m.num_hidden_layers, num_attention_heads=m.num_attention_heads,
        num_key_value_heads=m.num_key_value_heads, head_dim=m.head_dim,
        max_position_embeddings=max(256, spec.prompt.length), rms_norm_eps=m.rms_norm_eps,
        rope_theta=m.rope_theta, tie_word_embeddings=False, bos_token_id=BOS_ID, eos_token_id=EOS_ID,
        attn_implementation="eager",
    )
    if m.model_type == "qwen3":
        return Qwen3Config(**common)
    return LlamaConfig(attention_bias=False, mlp_bias=False, **common)


def build_hf_model(spec: WorkloadSpec) -> torch.nn.Module:
    from transformers import AutoModelForCausalLM

    cfg = hf_config(spec)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(spec.seed)
        model = AutoModelForCausalLM.from_config(cfg, dtype=torch.float32)
    return model.eval().requires_grad_(False)


def build_prompt(spec: WorkloadSpec) -> torch.Tensor:
    if spec.prompt.token_ids is not None:
        return torch.tensor(spec.prompt.token_ids, dtype=torch.long)
    g = torch.Generator().manual_seed(spec.seed * 1_000_003 + 7)
    tokens = torch.randint(FIRST_ORDINARY_ID, spec.model.vocab_size, (spec.prompt.n_tokens,), generator=g)
    tokens[0] = BOS_ID
    return tokens


@torch.no_grad()
def mlp_inputs(hf_model: torch.nn.Module, token_ids: torch.Tensor) -> list[torch.Tensor]:
    """Each layer's MLP input (the post-attention RMSNorm output) for the prompt, ``[n_pos, d_model]``."""
    captured: list[torch.Tensor] = []
    handles = [
        layer.mlp.register_forward_pre_hook(lambda _m, args: captured.append(args[0][0].float()))
        for layer in hf_model.model.layers
    ]
    try:
        hf_model(token_ids[None])
    finally:
        for h in handles:
            h.remove()
    return captured


#: no pre-activation of the prompt lies closer than this to its feature's threshold (pre-activations are
#: about unit scale). bf16 forward passes of HF and TransformerLens differ by about 0.01 there.
THRESHOLD_MARGIN = 0.05


def calibrated_thresholds(pre_acts: torch.Tensor, target_l0: float, margin: float = THRESHOLD_MARGIN) -> torch.Tensor:
    """Per-feature JumpReLU thresholds leaving about ``target_l0`` active features per position.

    ``pre_acts`` is ``[n_pos, F]``. A layer-wide threshold is set at the quantile that gives ``target_l0``;
    a feature whose pre-activations come within ``margin`` of it gets the nearest threshold that keeps that
    margin instead. So rounding differences between implementations and dtypes (HF vs TransformerLens,
    float32 vs bfloat16) cannot switch a feature on or off, and the active set is the same for all of them.
    """
    flat = pre_acts.flatten().sort(descending=True).values
    k = max(1, min(flat.numel() - 1, int(round(target_l0 * pre_acts.shape[0]))))
    layer_threshold = (flat[k - 1] + flat[k]) / 2
    values = pre_acts.T  # [F, n_pos]
    step = margin * 1.001
    candidates = torch.cat([layer_threshold.expand(values.shape[0], 1), values - step, values + step], dim=1)
    clear = ((values[:, None, :] - candidates[:, :, None]).abs() >= margin).all(-1)  # [F, candidates]
    distance = (candidates - layer_threshold).abs().masked_fill(~clear, float("inf"))
    return candidates.gather(1, distance.argmin(1, keepdim=True))[:, 0]


def build_transcoders(spec: WorkloadSpec, inputs: list[torch.Tensor]) -> list[TranscoderWeights]:
    d, F = spec.model.hidden_size, spec.transcoders.d_transcoder
    out = []
    for layer, x in enumerate(inputs):
        g = torch.Generator().manual_seed(spec.seed * 1_000_003 + 100 + layer)
        W_enc = torch.randn(F, d, generator=g) / d**0.5
        W_dec = torch.randn(F, d, generator=g) * (0.5 / F**0.5)
        b_enc = torch.zeros(F)
        b_dec = torch.zeros(d)
        W_skip = torch.randn(d, d, generator=g) * (0.1 / d**0.5) if spec.transcoders.skip_connection else None
        pre = (x[1:] @ W_enc.T + b_enc)  # position 0 (BOS) never has active features
        thresholds = calibrated_thresholds(pre, spec.transcoders.target_l0)
        out.append(TranscoderWeights(W_enc, W_dec, b_enc, b_dec, thresholds, W_skip))
    return out


#: workloads with more parameters than this are cached on disk after their first build
CACHE_MIN_PARAMS = 50_000_000


def parameter_count(spec: WorkloadSpec) -> int:
    """Parameters of the model plus its transcoders (what building and caching cost)."""
    m, t = spec.model, spec.transcoders
    attn = m.hidden_size * m.head_dim * (2 * m.num_attention_heads + 2 * m.num_key_value_heads)
    mlp = 3 * m.hidden_size * m.intermediate_size
    tc = 2 * t.d_transcoder * m.hidden_size + (m.hidden_size**2 if t.skip_connection else 0)
    if t.kind == "clt":  # layer l's features decode into the L - l layers from l on: (L + 1) / 2 on average
        tc += t.d_transcoder * m.hidden_size * (m.num_hidden_layers - 1) / 2
    return int(m.num_hidden_layers * (attn + mlp + tc) + 2 * m.vocab_size * m.hidden_size)


def save_workload(built: BuiltWorkload, folder: Path) -> None:
    """A local folder with ``model/`` (HF model + tokenizer), ``transcoders/`` and ``prompt.json``."""
    import json

    tmp = folder.with_name(folder.name + f".tmp{os.getpid()}")
    built.hf_model.save_pretrained(str(tmp / "model"), safe_serialization=True)
    built.tokenizer.save_pretrained(str(tmp / "model"))
    from attrbench import transcoder_files

    # circuit-tracer's own layout and a config.yaml, so that circuit-tracer can load the cache too
    transcoder_files.write_transcoders(built.transcoders, built.transcoder_kind, built.spec.model.hidden_size,
                                       tmp / "transcoders", scan=f"attrbench-{built.spec.content_hash()}")
    (tmp / "prompt.json").write_text(json.dumps({"token_ids": built.token_ids.tolist()}))
    try:
        tmp.rename(folder)
    except OSError:  # another process cached it first
        import shutil

        shutil.rmtree(tmp, ignore_errors=True)


def load_hf_model(folder: Path) -> torch.nn.Module:
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(str(folder), dtype=torch.float32, attn_implementation="eager",
                                                 local_files_only=True)
    return model.eval().requires_grad_(False)


def _load_cached(spec: WorkloadSpec, folder: Path) -> BuiltWorkload:
    import json
    from transformers import PreTrainedTokenizerFast

    token_ids = torch.tensor(json.loads((folder / "prompt.json").read_text())["token_ids"], dtype=torch.long)
    tokenizer = PreTrainedTokenizerFast.from_pretrained(str(folder / "model"))
    from attrbench.seeded_transcoders import check_read_back, load_folder

    ct, transcoders = load_folder(folder / "transcoders", spec.model.num_hidden_layers, spec.model.hidden_size)
    check_read_back(spec, transcoders)
    return BuiltWorkload(spec, load_hf_model(folder / "model"), tokenizer, str(folder / "model"), transcoders, token_ids,
                         ct, spec.transcoders.kind)


def build_local(spec: WorkloadSpec) -> BuiltWorkload:
    """Load a workload of real weights from its local folders (``spec.source``); never contacts a hub."""
    from transformers import AutoTokenizer

    from attrbench import transcoder_files

    src = spec.source
    os.environ["HF_HUB_OFFLINE"] = "1"
    model_dir = Path(src.model_dir)
    tokenizer = AutoTokenizer.from_pretrained(str(model_dir), local_files_only=True)
    # read by circuit-tracer's own loaders; the engine's weights come from the object they return
    tsrc = transcoder_files.resolve(src.transcoders_dir)
    ct = transcoder_files.load(tsrc, lazy=True)
    transcoder_files.check_against_model(ct, tsrc, spec.model.num_hidden_layers, spec.model.hidden_size)
    transcoders = transcoder_files.engine_weights(ct, spec.model.num_hidden_layers)
    token_ids = torch.tensor(spec.prompt.token_ids, dtype=torch.long)
    return BuiltWorkload(spec, load_hf_model(model_dir), tokenizer, str(model_dir), transcoders, token_ids,
                         ct, tsrc.kind)


def build_workload(spec: WorkloadSpec, use_cache: bool | None = None) -> BuiltWorkload:
    """Build the workload on CPU in float32; identical bytes for the same spec on every machine.

    Large workloads (more than :data:`CACHE_MIN_PARAMS` parameters) are saved under the cache folder after
    the first build and loaded from there afterwards, so each benchmark cell does not rebuild them.
    """
    if spec.source is not None:
        return build_local(spec)
    if use_cache is None:
        use_cache = parameter_count(spec) > CACHE_MIN_PARAMS
    from attrbench.seeded_transcoders import build_seeded, check_read_back, through_files

    # "workloads-ct": caches in circuit-tracer's transcoder layout (older caches under "workloads" stored the
    # JumpReLU threshold under a key circuit-tracer does not read)
    folder = cache_dir() / "workloads-ct" / spec.content_hash()
    if use_cache and folder.exists():
        return _load_cached(spec, folder)
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
        transcoders, spec.transcoders.kind, spec.model.hidden_size,
        cache_dir() / "transcoders-ct" / spec.content_hash(), scan=f"attrbench-{spec.content_hash()}")
    check_read_back(spec, built.transcoders)
    return built
