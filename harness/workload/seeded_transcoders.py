"""Seeded transcoders of every kind a workload can ask for, read back through circuit-tracer's loaders.

``transcoders.kind`` "plt" (per-layer) or "clt" (cross-layer), ``activation`` "jumprelu", "relu" or "topk"
(``k``). JumpReLU thresholds (and, for ReLU, the encoder bias) are calibrated on the prompt as for the
per-layer JumpReLU workloads (:func:`calibrated_thresholds`), so each (layer, position)
has about ``target_l0`` active features and no pre-activation sits near the cut. A per-layer JumpReLU
workload gets exactly the bytes it always had (:func:`build_transcoders`).

:func:`through_files` writes the weights with circuit-tracer's own ``to_safetensors`` (plus config.yaml)
and loads them with its own loaders: the reference and the exact backends then both use what circuit-tracer
read from the files.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from attrbench.workload import transcoder_files as tf
from attrbench.workload.spec import WorkloadSpec
from attrbench.workload.transcoder_files import TranscoderWeights


@torch.no_grad()
def mlp_inputs(hf_model: Any, token_ids: torch.Tensor) -> list[torch.Tensor]:
    """Each layer's transcoder input for the prompt, ``[n_pos, d_model]``: the MLP input (the post-attention
    RMSNorm output) for Qwen3/Llama, ``ln2.hook_normalized`` (the pre-feedforward norm before its gain) for
    Gemma (see :mod:`attrbench.workload.families`)."""
    captured: list[torch.Tensor] = []
    if getattr(hf_model.config, "model_type", "") in ("gemma2", "gemma3_text"):
        eps = hf_model.config.rms_norm_eps

        def normalised(_m, args):
            x = args[0][0].float()
            captured.append(x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps))

        handles = [
            layer.pre_feedforward_layernorm.register_forward_pre_hook(normalised) for layer in hf_model.model.layers
        ]
    else:
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
#: the same for cross-layer transcoders, whose encoders read the un-normalised ``hook_resid_mid``: there the
#: bf16 forward pass moves pre-activations near the cut (about 2) by up to 0.07 by the last layer (gemma3-clt),
#: and 0.05 let one of its 953 features switch off in bf16
CLT_THRESHOLD_MARGIN = 0.1


def calibrated_thresholds(pre_acts: torch.Tensor, target_l0: float, margin: float = THRESHOLD_MARGIN) -> torch.Tensor:
    """Per-feature JumpReLU thresholds leaving about ``target_l0`` active features per position.

    ``pre_acts`` is ``[n_pos, F]``. A layer-wide threshold is set at the quantile that gives ``target_l0``;
    a feature whose pre-activations come within ``margin`` of it gets the nearest threshold that keeps that
    margin instead. So rounding differences between implementations and dtypes (HF vs TransformerLens,
    float32 vs bfloat16) cannot switch a feature on or off, and the active set is the same for all of them.

    The candidates are the layer threshold and each pre-activation +- ``margin``; a candidate is clear when
    its nearest pre-activation (found by binary search in the feature's sorted values) is at least ``margin``
    away. Memory is ``O(F x n_pos)``, so long prompts (thousands of positions) calibrate as quickly as short
    ones; the thresholds are bit-identical to comparing every candidate with every pre-activation.
    """
    flat = pre_acts.flatten().sort(descending=True).values
    k = max(1, min(flat.numel() - 1, int(round(target_l0 * pre_acts.shape[0]))))
    layer_threshold = (flat[k - 1] + flat[k]) / 2
    values = pre_acts.T.contiguous()  # [F, n_pos]
    step = margin * 1.001
    candidates = torch.cat([layer_threshold.expand(values.shape[0], 1), values - step, values + step], dim=1)
    clear = _nearest_distance(values, candidates) >= margin  # [F, candidates]
    distance = (candidates - layer_threshold).abs().masked_fill(~clear, float("inf"))
    return candidates.gather(1, distance.argmin(1, keepdim=True))[:, 0]


def _nearest_distance(values: torch.Tensor, candidates: torch.Tensor) -> torch.Tensor:
    """``min_j |values[f, j] - candidates[f, c]|`` for every (f, c), from the two sorted neighbours of each
    candidate (rounding of ``v - c`` is monotone in ``v``, so the minimum over all values is at one of them)."""
    ordered = values.sort(dim=1).values
    n = ordered.shape[1]
    right = torch.searchsorted(ordered, candidates).clamp(max=n - 1)
    left = (right - 1).clamp(min=0)
    near = torch.minimum((ordered.gather(1, left) - candidates).abs(), (ordered.gather(1, right) - candidates).abs())
    return near


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
        pre = x[1:] @ W_enc.T + b_enc  # position 0 (BOS) never has active features
        margin = spec.transcoders.threshold_margin or THRESHOLD_MARGIN
        thresholds = calibrated_thresholds(pre, spec.transcoders.target_l0, margin)
        out.append(TranscoderWeights(W_enc, W_dec, b_enc, b_dec, thresholds, W_skip))
    return out


@torch.no_grad()
def resid_mids(hf_model: Any, token_ids: torch.Tensor) -> list[torch.Tensor]:
    """Each layer's residual stream after attention (``hook_resid_mid``, the input of the norm before the MLP):
    ``post_attention_layernorm``'s input for Qwen3/Llama, ``pre_feedforward_layernorm``'s for Gemma (whose
    ``post_attention_layernorm`` normalises the attention output *before* the residual add)."""
    captured: list[torch.Tensor] = []
    gemma = getattr(hf_model.config, "model_type", "") in ("gemma2", "gemma3_text")
    norm = "pre_feedforward_layernorm" if gemma else "post_attention_layernorm"
    handles = [
        getattr(layer, norm).register_forward_pre_hook(lambda _m, args: captured.append(args[0][0].float()))
        for layer in hf_model.model.layers
    ]
    try:
        hf_model(token_ids[None])
    finally:
        for h in handles:
            h.remove()
    return captured


def builder_revision(spec: WorkloadSpec) -> int:
    """Revision of what :func:`build_seeded` writes for ``spec`` (1 unless a fix changed its bytes).

    2: cross-layer transcoders, calibrated with :data:`CLT_THRESHOLD_MARGIN` (revision 1: 0.05) and, for
    Gemma, on ``pre_feedforward_layernorm``'s input (revision 1 used ``post_attention_layernorm``'s, which
    there is the attention output, not ``hook_resid_mid``)."""
    return 2 if spec.transcoders.kind == "clt" else 1


def cache_key(spec: WorkloadSpec) -> str:
    """The cache folder name of a seeded workload: its content hash, plus ``-r{revision}`` where the builder's
    bytes for it changed, so that files written by an older builder are never read back."""
    revision = builder_revision(spec)
    return spec.content_hash() + (f"-r{revision}" if revision > 1 else "")


def build_seeded(spec: WorkloadSpec, hf_model: Any, token_ids: torch.Tensor) -> list:
    """The workload's transcoders in the engine's layout
    (:class:`attrbench.workload.transcoder_files.TranscoderWeights`)."""

    t = spec.transcoders
    if t.kind == "plt":
        out = build_transcoders(spec, mlp_inputs(hf_model, token_ids))
        if t.activation == "jumprelu":
            return out
        for w in out:
            if t.activation == "relu":  # the calibrated cut moves into the encoder bias
                w.b_enc = -w.threshold
            w.threshold = torch.zeros_like(w.threshold)
            w.activation, w.k = t.activation, t.k
        return out
    # cross-layer: encoders read hook_resid_mid (not normalised: scale the encoder to unit pre-activations)
    L, d, F = spec.model.num_hidden_layers, spec.model.hidden_size, t.d_transcoder
    out = []
    for layer, m in enumerate(resid_mids(hf_model, token_ids)):
        g = torch.Generator().manual_seed(spec.seed * 1_000_003 + 500 + layer)
        rms = m[1:].pow(2).mean(-1).sqrt().mean().clamp(min=1e-6)
        W_enc = torch.randn(F, d, generator=g) / d**0.5 / rms
        W_dec = torch.randn(F, L - layer, d, generator=g) * (0.5 / (F * (L - layer)) ** 0.5)
        b_enc, b_dec = torch.zeros(F), torch.zeros(d)
        W_skip = torch.randn(d, d, generator=g) * (0.1 / d**0.5) if t.skip_connection else None
        threshold = calibrated_thresholds(m[1:] @ W_enc.T, t.target_l0, t.threshold_margin or CLT_THRESHOLD_MARGIN)
        if t.activation == "relu":
            b_enc, threshold = -threshold, torch.zeros(F)
        out.append(TranscoderWeights(W_enc, W_dec, b_enc, b_dec, threshold, W_skip, t.activation, t.k))
    return out


def through_files(
    weights: list,
    kind: str,
    d_model: int,
    folder: Path,
    scan: str,
    hooks: tuple[str, str] = ("mlp.hook_in", "mlp.hook_out"),
    model_type: str | None = None,
):
    """Write ``weights`` in circuit-tracer's layout under ``folder`` (once) and read them back with its
    loaders; returns (circuit-tracer object, engine weights taken from it)."""
    if not (folder / "config.yaml").exists():
        folder.parent.mkdir(parents=True, exist_ok=True)
        tf.write_transcoders(weights, kind, d_model, folder, scan=scan, hooks=hooks)
    return load_folder(folder, len(weights), d_model, model_type)


def load_folder(folder: Path, n_layers: int, d_model: int, model_type: str | None = None):
    src = tf.resolve(folder)
    obj = tf.load(src, lazy=True)
    tf.check_against_model(obj, src, n_layers, d_model, model_type)
    return obj, tf.engine_weights(obj, n_layers)


def check_read_back(spec: WorkloadSpec, weights: list) -> None:
    """What circuit-tracer read must be what the workload asked for (never a silent change of kind)."""
    t, w = spec.transcoders, weights[0]
    got = (w.activation, w.k, w.W_skip is not None, w.W_dec.dim() == 3)
    want = (t.activation, t.k if t.activation == "topk" else None, t.skip_connection, t.kind == "clt")
    if got != want:
        raise RuntimeError(f"transcoders read back as (activation, k, skip, cross-layer) {got}, written as {want}")
