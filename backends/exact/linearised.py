"""The frozen, linearised replacement model that every exact backend differentiates by hand.

circuit-tracer freezes attention patterns, every RMSNorm scale (QK-norm included) and replaces each MLP by
its transcoder's reconstruction + skip connection + a detached error. What is left between the residual
stream and every node's output vector is linear, so one attribution row is a vector-Jacobian product
(VJP) through a fixed chain of matrices. This module

* runs the prompt's forward pass once and caches what the chain needs (:func:`linearise`),
* finds the active features with their encoder vectors and activation-scaled decoder vectors, the error
  and token-embedding vectors and the logit targets exactly as circuit-tracer does,
* provides the VJP primitives (:class:`LinearisedModel` methods) the backends compose.

Notation: ``r_l`` is the residual stream entering layer ``l`` (``r_0`` = token embeddings), ``m_l`` the
residual after attention, ``x_l = RMSNorm2(m_l)`` the MLP (transcoder) input, and
``r_{l+1} = m_l + mlp_out_l``. Gradients flow back through the residual identity, the skip connection
(``mlp_out = x W_skip^T + const``), the two frozen RMSNorms and the value/output path of attention.

Per family (:mod:`attrbench.workload.families` has the full table): Gemma-2/3 add a frozen post-attention RMSNorm
between attention and ``m_l`` (``post_attn_gain``), read ``x_l`` before the pre-feedforward norm's
``(1 + w)`` gain (so ``ln2_gain`` is the frozen ``1/rms`` alone), write the transcoder output after the
post-feedforward norm (which is inside the replaced, frozen MLP), scale token embeddings by
``sqrt(d_model)``, and softcap attention scores and final logits on the forward pass only (the softcapped
patterns are frozen; logit targets are injected before the final softcap).
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field, replace
from functools import cached_property
from typing import Any

import torch

from attrbench.workload.build import BuiltWorkload
from attrbench.workload.families import LinearisationLayout, linearisation_layout


@dataclass
class ModelWeights:
    """The weights the backward pass needs, on the device and in the dtype of the run.

    ``W_V`` is ``[L, KV, d_head, d_model]`` (HF ``v_proj.weight`` split by KV head), ``W_O`` is
    ``[L, d_model, H * d_head]`` (HF ``o_proj.weight``), ``W_skip`` is ``[L, d_model, d_model]`` or None.
    """

    hf_model: Any
    W_V: torch.Tensor
    W_O: torch.Tensor
    W_skip: torch.Tensor | None
    ln1_w: torch.Tensor  # [L, d]
    ln2_w: torch.Tensor  # [L, d]
    final_w: torch.Tensor  # [d]
    W_enc: list[torch.Tensor]  # per layer [F, d]
    encoders: torch.Tensor  # [L, F, d]: W_enc stacked, for gathering the encoder vectors of a batch
    W_dec: list[torch.Tensor]  # per layer [F, d]
    b_enc: list[torch.Tensor]
    b_dec: list[torch.Tensor]
    threshold: list[torch.Tensor]
    W_U: torch.Tensor  # [V, d]
    W_E: torch.Tensor  # [V, d]
    n_heads: int
    n_kv_heads: int
    d_head: int
    eps: float
    device: torch.device
    dtype: torch.dtype
    #: [L, d] gain of the post-attention norm (Gemma), None where attention writes to the residual directly
    post_attn_w: torch.Tensor | None = None
    layout: LinearisationLayout | None = None
    #: per layer ("jumprelu" | "relu" | "topk", k) (see :mod:`attrbench.backends.transcoder_kinds`)
    activations: list = field(default_factory=list)
    #: cross-layer transcoder: features read hook_resid_mid and W_dec[l] is [F, L - l, d]
    cross_layer: bool = False

    @property
    def n_layers(self) -> int:
        return self.W_V.shape[0]

    @property
    def d_model(self) -> int:
        return self.W_V.shape[-1]


def prepare_weights(workload: BuiltWorkload, device: str, dtype: torch.dtype) -> ModelWeights:
    """Move the workload's HF model and transcoders to ``device``/``dtype`` in the layouts used here."""
    spec = workload.spec.model
    hf = workload.hf_model
    if next(hf.parameters()).dtype != dtype or str(device) != "cpu":
        hf = copy.deepcopy(hf)  # the workload's own model stays on CPU in float32 for other backends
    hf = hf.to(device=device, dtype=dtype)
    layers = hf.model.layers
    H, KV, dh = spec.num_attention_heads, spec.num_key_value_heads, spec.head_dim

    def stack(get) -> torch.Tensor:
        return torch.stack([get(layer).detach() for layer in layers])

    def tc(name: str) -> list[torch.Tensor]:
        return [getattr(t, name).to(device=device, dtype=dtype) for t in workload.transcoders]

    has_skip = workload.transcoders[0].W_skip is not None
    encoders = torch.stack(tc("W_enc"))
    layout = linearisation_layout(spec)
    off = layout.norm_offset  # Gemma's RMSNorms multiply by (1 + w), computed in float32 as HF does

    def gain(norm: Any) -> torch.Tensor:
        return norm.weight.detach().float() + off if off else norm.weight.detach()

    ln2_w = (
        torch.stack([gain(getattr(m, layout.pre_mlp_norm)) for m in layers])
        if layout.input_has_gain
        else torch.ones(len(layers), spec.hidden_size, device=device)
    )  # transcoder reads before the gain
    W_E = hf.model.embed_tokens.weight.detach()
    if layout.embed_scale != 1.0:  # Gemma scales embeddings by sqrt(d_model) in the hidden dtype
        W_E = W_E * torch.tensor(layout.embed_scale, dtype=dtype)
    return ModelWeights(
        hf_model=hf,
        W_V=stack(lambda m: m.self_attn.v_proj.weight.view(KV, dh, -1)),
        W_O=stack(lambda m: m.self_attn.o_proj.weight),
        W_skip=torch.stack(tc("W_skip")) if has_skip else None,
        ln1_w=torch.stack([gain(m.input_layernorm) for m in layers]),
        ln2_w=ln2_w,
        final_w=gain(hf.model.norm),
        W_enc=list(encoders.unbind(0)),  # views: the encoders are held once
        encoders=encoders,
        W_dec=tc("W_dec"),
        b_enc=tc("b_enc"),
        b_dec=tc("b_dec"),
        threshold=tc("threshold"),
        W_U=hf.lm_head.weight.detach(),
        W_E=W_E,
        n_heads=H,
        n_kv_heads=KV,
        d_head=dh,
        eps=spec.rms_norm_eps,
        device=torch.device(device),
        dtype=dtype,
        post_attn_w=(
            torch.stack([gain(getattr(m, layout.post_attn_norm)) for m in layers]) if layout.post_attn_norm else None
        ),
        layout=layout,
        activations=[(t.activation, t.k) for t in workload.transcoders],
        cross_layer=workload.transcoder_kind == "clt",
    )


def _rms_inverse_scale(x: torch.Tensor, eps: float) -> torch.Tensor:
    """``1 / rms(x)`` per position, computed in float32 as HF's RMSNorm does."""
    return torch.rsqrt(x.float().pow(2).mean(-1) + eps)


@dataclass
class LinearisedModel:
    """The prompt's frozen linearisation plus its nodes, in circuit-tracer's node order.

    Node columns of an edge row: ``n_active`` features (layer, position, feature order), then
    ``n_layers * n_pos`` error nodes (layer-major), then ``n_pos`` token nodes.
    """

    weights: ModelWeights
    token_ids: torch.Tensor
    ln1_gain: torch.Tensor  # [L, n, d]: ln1 weight * frozen 1/rms, the RMSNorm's Jacobian (diagonal)
    ln2_gain: torch.Tensor  # [L, n, d]
    final_gain: torch.Tensor  # [n, d]
    patterns: torch.Tensor  # [L, H, n, n] (query, key)
    logits: torch.Tensor  # [V] last position
    active_features: torch.Tensor  # [n_active, 3] int64 (layer, pos, feature)
    activation_values: torch.Tensor  # [n_active]
    decoder_vecs: torch.Tensor  # [n_active, d], scaled by activation
    error_vecs: torch.Tensor  # [L, n, d]
    token_vecs: torch.Tensor  # [n, d]
    layer_offsets: list[int]  # first feature index of each layer, plus n_active at the end
    #: [L, n, d] post-attention norm's frozen Jacobian (Gemma), None where the family has no such norm
    post_attn_gain: torch.Tensor | None = None
    #: cross-layer transcoders: (source layer s, output layer l > s) -> scaled decoders [n_s, d] of the
    #: features read at s into MLP output l (``decoder_vecs`` holds each feature's own-layer decoder)
    cross_decoders: dict = field(default_factory=dict)
    #: features read the residual stream after attention (hook_resid_mid), not the MLP input
    reads_resid_mid: bool = False

    @property
    def n_layers(self) -> int:
        return self.patterns.shape[0]

    @cached_property
    def position_bounds(self) -> list[list[int]]:
        """Feature index ranges per (layer, position): layer l's features at position p are
        ``position_bounds[l][p]:position_bounds[l][p + 1]`` (features are sorted by layer, then position)."""
        bounds = []
        for layer in range(self.n_layers):
            start, stop = self.layer_offsets[layer], self.layer_offsets[layer + 1]
            counts = torch.bincount(self.active_features[start:stop, 1], minlength=self.n_pos)
            bounds.append([start] + (start + counts.cumsum(0)).tolist())
        return bounds

    @property
    def n_pos(self) -> int:
        return self.patterns.shape[-1]

    @property
    def n_active(self) -> int:
        return self.active_features.shape[0]

    def encoder_vectors(self, features: torch.Tensor) -> torch.Tensor:
        """``[len(features), d]``: the encoder vectors of active features ``features`` (indices, on the CPU),
        gathered from the transcoders when a batch needs them (never all at once)."""
        layer, feature = self.active_features[features, 0], self.active_features[features, 2]
        device = self.weights.device
        return self.weights.encoders[layer.to(device), feature.to(device)]

    @property
    def row_size(self) -> int:
        """Source columns of an edge row (features, errors, tokens; logits have no outgoing edges)."""
        return self.n_active + (self.n_layers + 1) * self.n_pos

    @property
    def error_offset(self) -> int:
        return self.n_active

    @property
    def token_offset(self) -> int:
        return self.n_active + self.n_layers * self.n_pos


@torch.no_grad()
def _forward_cache(
    weights: ModelWeights, token_ids: torch.Tensor, layout: LinearisationLayout
) -> tuple[dict[str, list[torch.Tensor]], torch.Tensor]:
    """One forward pass of the prompt, keeping what the frozen linearisation needs; (cache, last logits)."""
    hf = weights.hf_model
    cache: dict[str, list[torch.Tensor]] = {
        k: [] for k in ("r", "m", "x", "mlp_out", "pattern", "final_in", "attn_out")
    }

    def keep(key: str, index: int = 0):
        def hook(_module, args, output=None):
            source = args[0] if output is None else (output[index] if isinstance(output, tuple) else output)
            cache[key].append(source[0])

        return hook

    handles = []
    for layer in hf.model.layers:
        handles.append(layer.input_layernorm.register_forward_pre_hook(keep("r")))
        handles.append(getattr(layer, layout.pre_mlp_norm).register_forward_pre_hook(keep("m")))
        if layout.input_has_gain:
            handles.append(layer.mlp.register_forward_pre_hook(keep("x")))
        handles.append(getattr(layer, layout.mlp_out_module).register_forward_hook(keep("mlp_out")))
        if layout.post_attn_norm:
            handles.append(getattr(layer, layout.post_attn_norm).register_forward_pre_hook(keep("attn_out")))
        handles.append(layer.self_attn.register_forward_hook(keep("pattern", index=1)))
    handles.append(hf.model.norm.register_forward_pre_hook(keep("final_in")))
    try:
        logits = hf(token_ids[None].to(weights.device)).logits[0, -1]
    finally:
        for h in handles:
            h.remove()
    if any(p is None for p in cache["pattern"]):
        raise RuntimeError("attention weights were not returned; the HF model must use eager attention")
    if not layout.input_has_gain:  # ln2.hook_normalized: the pre-feedforward norm before its (1 + w) gain
        cache["x"] = [(m.float() * _rms_inverse_scale(m, weights.eps)[:, None]).to(weights.dtype) for m in cache["m"]]
    return cache, logits


def _frozen_gains(weights: ModelWeights, cache: dict[str, list[torch.Tensor]], layout: LinearisationLayout) -> dict:
    """The frozen RMSNorm Jacobians (gain x 1/rms of the prompt's own activations), per layer and position."""

    def frozen(w: torch.Tensor, xs: list[torch.Tensor]) -> torch.Tensor:
        return torch.stack(
            [(w[i] * _rms_inverse_scale(x, weights.eps)[:, None]).to(weights.dtype) for i, x in enumerate(xs)]
        )

    final_in = cache["final_in"][0]
    return {
        "ln1_gain": frozen(weights.ln1_w, cache["r"]),
        "ln2_gain": frozen(weights.ln2_w, cache["m"]),
        "final_gain": (weights.final_w * _rms_inverse_scale(final_in, weights.eps)[:, None]).to(weights.dtype),
        "post_attn_gain": (
            frozen(weights.post_attn_w, cache["attn_out"])
            if layout.post_attn_norm and weights.post_attn_w is not None
            else None
        ),
    }


def _feature_nodes(
    weights: ModelWeights, inputs: list[torch.Tensor], decoded: list[torch.Tensor], dtype: torch.dtype
) -> dict:
    """Active features per layer (row-major: position, then feature), their scaled decoder vectors (written
    once into one matrix, in ``dtype``) and, for cross-layer transcoders, the decoders into every later layer;
    adds every decoder into ``decoded`` (the reconstruction of each MLP output, in the run's dtype)."""
    active = []
    for layer, x in enumerate(inputs):
        pre = torch.nn.functional.linear(x, weights.W_enc[layer], weights.b_enc[layer])
        kind = weights.activations[layer] if weights.activations else ("jumprelu", None)
        acts = activate(pre, weights.threshold[layer], *kind)
        acts[0] = 0  # circuit-tracer zeroes the BOS position
        pos, feat = acts.nonzero(as_tuple=True)  # row-major: position, then feature
        active.append((pos, feat, acts[pos, feat]))
    offsets = [0]
    for pos, _, _ in active:
        offsets.append(offsets[-1] + pos.numel())
    # in the VJPs' dtype from the start: a bfloat16 copy of float32 decoders would first fault in both
    decoders = torch.empty(offsets[-1], weights.d_model, dtype=dtype, device=weights.device)
    cross: dict = {}
    for layer, (pos, feat, act) in enumerate(active):
        W_dec, scaled_dec = weights.W_dec[layer], decoders[offsets[layer] : offsets[layer + 1]]
        if weights.cross_layer:  # W_dec [F, L - layer, d]: one decoder per MLP output from this layer on
            scaled_all = W_dec[feat] * act[:, None, None]
            scaled_dec.copy_(scaled_all[:, 0])
            for j in range(1, scaled_all.shape[1]):
                cross[(layer, layer + j)] = scaled_all[:, j].contiguous()
                decoded[layer + j].index_add_(0, pos, cross[(layer, layer + j)])
            decoded[layer].index_add_(0, pos, scaled_all[:, 0])
        elif dtype == weights.dtype:
            decoded[layer].index_add_(0, pos, torch.index_select(W_dec, 0, feat, out=scaled_dec).mul_(act[:, None]))
        else:
            scaled = W_dec[feat].mul_(act[:, None])  # one layer's: a temporary the allocator reuses
            decoded[layer].index_add_(0, pos, scaled)
            scaled_dec.copy_(scaled)
    return {
        "active_features": torch.cat(
            [torch.stack([torch.full_like(p, layer), p, f], dim=1) for layer, (p, f, _) in enumerate(active)]
        ).cpu(),
        "activation_values": torch.cat([act for _, _, act in active]),
        "decoder_vecs": decoders,
        "layer_offsets": offsets,
        "cross_decoders": cross,
    }


def linearise(weights: ModelWeights, token_ids: torch.Tensor, dtype: torch.dtype | None = None) -> LinearisedModel:
    """Run the prompt forward once, freeze what circuit-tracer freezes and collect every node's vectors.

    The forward pass, the activations and the logits are computed in the weights' dtype; the tensors the
    VJPs read are in ``dtype`` (default: the same; see :func:`with_compute_dtype`)."""
    dtype = dtype or weights.dtype
    layout = weights.layout or linearisation_layout(None)
    cache, logits = _forward_cache(weights, token_ids, layout)
    inputs = cache["m"] if weights.cross_layer else cache["x"]  # hook_resid_mid or mlp.hook_in
    decoded = [torch.zeros_like(out) for out in cache["mlp_out"]]  # sum of decoders into each MLP output
    nodes = _feature_nodes(weights, inputs, decoded, dtype)
    errors = []
    for layer, (x, mlp_out) in enumerate(zip(inputs, cache["mlp_out"], strict=True)):
        reconstruction = decoded[layer] + weights.b_dec[layer]
        if weights.W_skip is not None:
            reconstruction = reconstruction + x @ weights.W_skip[layer].T
        error = mlp_out - reconstruction
        error[0] = 0
        errors.append(error)
    model = LinearisedModel(
        weights=weights,
        token_ids=token_ids,
        **_frozen_gains(weights, cache, layout),
        patterns=torch.stack(cache["pattern"]).to(weights.dtype),
        logits=logits,
        error_vecs=torch.stack(errors),
        token_vecs=weights.W_E[token_ids.to(weights.device)],
        **nodes,
        reads_resid_mid=weights.cross_layer,
    )
    return with_compute_dtype(model, dtype)


def activate(pre: torch.Tensor, threshold: torch.Tensor, kind: str, k: int | None) -> torch.Tensor:
    """circuit-tracer's activation functions: JumpReLU ``x * (x > threshold)``, ReLU, TopK(k) (the k largest
    pre-activations of each position kept, whatever their sign, as its ``TopK`` does)."""
    if kind == "relu":
        return torch.relu(pre)
    if kind == "topk":
        assert k is not None, "TopK transcoders carry k"
        _, idx = torch.topk(pre, k=k, dim=-1)
        gate = torch.zeros_like(pre).scatter_(-1, idx, 1)
        return pre * gate
    return pre * (pre > threshold)


@dataclass
class LogitTargets:
    """circuit-tracer's salient-logit rule: the top logits until their probability reaches the target."""

    token_ids: torch.Tensor
    probabilities: torch.Tensor
    vectors: torch.Tensor  # demeaned unembedding rows [k, d]


def salient_logits(model: LinearisedModel, max_n_logits: int, desired_logit_prob: float) -> LogitTargets:
    probs = torch.softmax(model.logits, dim=-1)
    top_p, top_idx = torch.topk(probs, max_n_logits)
    cutoff = int(torch.searchsorted(torch.cumsum(top_p, 0), desired_logit_prob)) + 1
    idx = top_idx[:cutoff]
    W_U = model.weights.W_U
    return LogitTargets(idx.cpu(), probs[idx], W_U[idx] - W_U.mean(dim=0, keepdim=True))


def with_compute_dtype(model: LinearisedModel, dtype: torch.dtype) -> LinearisedModel:
    """The linearisation with the VJP chain's tensors in ``dtype`` (the forward pass, activations and logit
    probabilities stay as computed): for backends that trade precision for GEMM speed. Tensors already in
    ``dtype`` (the decoders, gathered so by :func:`linearise`) are kept as they are."""
    w = model.weights
    if w.dtype == dtype:
        return model

    def cast(t: torch.Tensor | None) -> torch.Tensor | None:
        return None if t is None else t.to(dtype)

    weights = replace(w, W_V=w.W_V.to(dtype), W_O=w.W_O.to(dtype), W_skip=cast(w.W_skip), dtype=dtype)
    return replace(
        model,
        weights=weights,
        ln1_gain=model.ln1_gain.to(dtype),
        ln2_gain=model.ln2_gain.to(dtype),
        final_gain=model.final_gain.to(dtype),
        patterns=model.patterns.to(dtype),
        decoder_vecs=model.decoder_vecs.to(dtype),
        error_vecs=model.error_vecs.to(dtype),
        token_vecs=model.token_vecs.to(dtype),
        post_attn_gain=cast(model.post_attn_gain),
        cross_decoders={k: v.to(dtype) for k, v in model.cross_decoders.items()},
    )
