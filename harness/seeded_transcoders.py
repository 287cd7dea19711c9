"""Seeded transcoders of every kind a workload can ask for, read back through circuit-tracer's loaders.

``transcoders.kind`` "plt" (per-layer) or "clt" (cross-layer), ``activation`` "jumprelu", "relu" or "topk"
(``k``). JumpReLU thresholds (and, for ReLU, the encoder bias) are calibrated on the prompt as for the
per-layer JumpReLU workloads (:func:`attrbench.build.calibrated_thresholds`), so each (layer, position)
has about ``target_l0`` active features and no pre-activation sits near the cut. A per-layer JumpReLU
workload gets exactly the bytes it always had (:func:`attrbench.build.build_transcoders`).

:func:`through_files` writes the weights with circuit-tracer's own ``to_safetensors`` (plus config.yaml)
and loads them with its own loaders: the reference and the exact backends then both use what circuit-tracer
read from the files.
"""

from __future__ import annotations

from pathlib import Path

import torch

from attrbench.workload import WorkloadSpec


@torch.no_grad()
def resid_mids(hf_model: torch.nn.Module, token_ids: torch.Tensor) -> list[torch.Tensor]:
    """Each layer's residual stream after attention (``hook_resid_mid``, the input of the second norm)."""
    captured: list[torch.Tensor] = []
    handles = [
        layer.post_attention_layernorm.register_forward_pre_hook(lambda _m, args: captured.append(args[0][0].float()))
        for layer in hf_model.model.layers
    ]
    try:
        hf_model(token_ids[None])
    finally:
        for h in handles:
            h.remove()
    return captured


def build_seeded(spec: WorkloadSpec, hf_model: torch.nn.Module, token_ids: torch.Tensor) -> list:
    """The workload's transcoders in the engine's layout (:class:`attrbench.build.TranscoderWeights`)."""
    from attrbench.build import TranscoderWeights, build_transcoders, calibrated_thresholds, mlp_inputs

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
        threshold = calibrated_thresholds(m[1:] @ W_enc.T, t.target_l0)
        if t.activation == "relu":
            b_enc, threshold = -threshold, torch.zeros(F)
        out.append(TranscoderWeights(W_enc, W_dec, b_enc, b_dec, threshold, W_skip, t.activation, t.k))
    return out


def through_files(weights: list, kind: str, d_model: int, folder: Path, scan: str):
    """Write ``weights`` in circuit-tracer's layout under ``folder`` (once) and read them back with its
    loaders; returns (circuit-tracer object, engine weights taken from it)."""
    from attrbench import transcoder_files as tf

    if not (folder / "config.yaml").exists():
        folder.parent.mkdir(parents=True, exist_ok=True)
        tf.write_transcoders(weights, kind, d_model, folder, scan=scan)
    return load_folder(folder, len(weights), d_model)


def load_folder(folder: Path, n_layers: int, d_model: int):
    from attrbench import transcoder_files as tf

    src = tf.resolve(folder)
    obj = tf.load(src, lazy=True)
    tf.check_against_model(obj, src, n_layers, d_model)
    return obj, tf.engine_weights(obj, n_layers)


def check_read_back(spec: WorkloadSpec, weights: list) -> None:
    """What circuit-tracer read must be what the workload asked for (never a silent change of kind)."""
    t, w = spec.transcoders, weights[0]
    got = (w.activation, w.k, w.W_skip is not None, w.W_dec.dim() == 3)
    want = (t.activation, t.k if t.activation == "topk" else None, t.skip_connection, t.kind == "clt")
    if got != want:
        raise RuntimeError(f"transcoders read back as (activation, k, skip, cross-layer) {got}, written as {want}")
