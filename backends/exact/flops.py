"""The FLOP floor of an attribution graph: the multiply-adds its rows need at the least.

Each row is one VJP from its target at (layer l_t, position p_t) down to the embeddings. Nothing above
l_t and nothing after p_t can be reached, so the floor counts, for every layer below l_t and the
P = p_t + 1 positions it can reach: the skip connection (d x d per position), the attention output
projection (d x H*d_head), the frozen-pattern product over the causal triangle (H * d_head * P(P+1)/2),
one V projection per KV group (KV*d_head x d), and one dot product of length d with every node there
(features, errors), plus the token nodes. A feature target reads the residual after its own layer's
attention, so that attention is on its path too, from its one query position: the output projection
once, the pattern over P keys and the V projection at P positions. Below layer 0's attention only the
token nodes read the gradient, so its V projection is one dot product of length KV*d_head per position
with that token's projected vector instead. A backend's achieved fraction is this floor over what its wall
time at the machine's measured GEMM rate could have done.
"""

from __future__ import annotations

import torch

from attrbench.backends.exact.linearised import LinearisedModel


def row_flop_floor(model: LinearisedModel, layers: torch.Tensor, positions: torch.Tensor) -> float:
    """FLOPs (2 per multiply-add) of the rows with targets at ``layers``/``positions`` (``n_layers`` = logit)."""
    w = model.weights
    d, H, KV, dh = w.d_model, w.n_heads, w.n_kv_heads, w.d_head
    L, n = model.n_layers, model.n_pos
    # features at (layer, position) counted cumulatively over positions: reach[l, p] = nodes at pos <= p
    counts = torch.zeros(L, n, dtype=torch.float64)
    counts.index_put_(
        (model.active_features[:, 0], model.active_features[:, 1]),
        torch.ones(model.n_active, dtype=torch.float64),
        accumulate=True,
    )
    if model.cross_decoders:  # cross-layer: layer l's MLP output is contracted with every feature read at <= l
        counts = counts.cumsum(0)
    nodes_reached = (counts + 1).cumsum(1)  # + the error node at each position
    values = KV * dh * d  # the V projection, per position
    per_pos_layer = (d * d if w.W_skip is not None else 0) + d * H * dh + values
    layers = layers.to(torch.long).cpu()
    P = positions.to(torch.long).cpu() + 1
    total = torch.zeros((), dtype=torch.float64)
    for layer in range(L):
        below = layers > layer
        if not below.any():
            continue
        p = P[below].double()
        # layer 0: the token vectors, projected once per prompt, take the V projection's place
        per_pos = per_pos_layer - values + KV * dh if layer == 0 else per_pos_layer
        total += (p * per_pos + H * dh * p * (p + 1) / 2).sum()
        total += nodes_reached[layer, P[below] - 1].sum() * d
    own = layers < L  # feature targets: their own layer's attention, from the one query position
    p_own = P[own].double()
    own_values = torch.where(layers[own] == 0, KV * dh, KV * dh * d).double()
    total += (d * H * dh + H * dh * p_own + own_values * p_own).sum()
    total += P.double().sum() * d  # token nodes
    return float(2 * total)
