"""Predicted peak host memory, peak GPU memory and rough time of a cell, from the workload's shape alone.

Nothing is built: the model is closed-form in the workload's shape (layers, widths, prompt length, the
calibrated number of active features) and the run settings. The big terms, per backend:

* ``reference`` (circuit-tracer): its dense float32 edge matrix ``[nodes + n_logits, total_nodes]`` on the
  host; a copy of it during every re-ranking (``compute_partial_influences`` copies before normalising);
  packaging reads the selected columns (a square-sized copy), sorts the rows (a second one) and fills the
  dense square adjacency ``[n_square, n_square]``; the weights twice (HF model + TransformerLens copy, the
  transcoders in the workload and in the replacement model); the forward pass with ``batch_size`` copies of
  the prompt (``batch x n_pos x d_model x ~12 L`` activations kept for the backward passes) and the
  backward's feature contraction (``batch x features_per_layer x d_model``).
* exact backends (``autodiff-free``, ``causal-trick``, ``gqa-shared``): the weights once (+ stacked V/O/skip
  and encoders, the active features' decoders), the edge rows in whichever store the backend would pick
  (:func:`attrbench.backends.exact.engine.make_edge_store` decides dense vs lean with
  :func:`attrbench.memory.dense_fits`, and so does this estimate), the ranking's temporaries (circuit-tracer's
  copy, or the streamed ``rows x rows`` block) and the square adjacency; per-batch gradient buffers. The dense
  store costs only the pages its rows are written over (:mod:`attrbench.backends.exact.zeroed`): all columns
  for autodiff-free, the reachable ones for the causal rungs, the selected ones in gqa-shared's last window.
* ``approximate-pruned``: like gqa-shared, with one ranking (``approx_ranking=once``, the default): every
  feature row is then a last-window row, over the selected columns only; where the exact backends would pick
  the lean store, that store (small entries zeroed).

Time is FLOP/byte based: multiply-adds of every row's VJP (circuit-tracer's backward over the whole prompt
and every layer below the target, with partial batches padded to ``batch_size``; the causal backends only
over positions <= the target's), at the GEMM rate measured on this machine once (:func:`gemm_rate`), plus
memory passes over the edge rows for ranking and packaging at :data:`HOST_BANDWIDTH`, times a per-backend
inefficiency factor calibrated from the measurements below.

Since issue 16 the dense store costs only its written pages; the exact backends' peaks on this engine
(alone, 2 cores): ``small`` 4,000 nodes: autodiff-free 1.43 GiB (estimate -7%), causal-trick 1.26 (-4%),
gqa-shared 0.75 (+4%); batch 64: gqa-shared 0.76 (+3%); ``long`` at 64 / 256 / 1,024 / 2,048 tokens, 10,000
nodes: every exact backend within -21% .. +15% (``reports/long-prompts.md``). approximate-pruned is off by
-50% at 64 tokens (its bfloat16 GEMMs hold about 0.35 GiB more than this model counts) and +65% at 2,048.
The older table below was measured on the engine before it.

Estimate vs measured (2 CPU cores, fp32, batch 512, update_interval 4; ``peak_host_bytes`` and ``wall_s`` of
``attrbench run``; relative error = estimate / measured - 1):

| workload   | backend            |   nodes |   batch |   measured GiB |   estimate GiB | err   |   measured s |   estimate s | err   |
|------------|--------------------|---------|---------|----------------|----------------|-------|--------------|--------------|-------|
| tiny       | reference          |     200 |     512 |           0.78 |           0.79 | +2%   |       2.28   |       2.25   | -1%   |
| tiny       | gqa-shared         |     200 |     512 |           0.37 |           0.4  | +7%   |       0.0389 |       0.0605 | +55%  |
| tiny       | approximate-pruned |     200 |     512 |           0.37 |           0.4  | +6%   |       0.0387 |       0.0616 | +59%  |
| tiny       | reference          |     800 |     512 |           0.79 |           0.8  | +1%   |       1.26   |       2.47   | +96%  |
| tiny       | approximate-pruned |     800 |     512 |           0.38 |           0.4  | +4%   |       0.108  |       0.137  | +27%  |
| tiny*      | reference          |     200 |     512 |           0.79 |           0.79 | -0%   |       6.23   |       2.25   | -64%  |
| tiny*      | gqa-shared         |     200 |     512 |           0.38 |           0.4  | +6%   |       1.97   |       0.0605 | -97%  |
| tiny*      | reference          |     800 |     512 |           0.76 |           0.8  | +4%   |       7.47   |       2.47   | -67%  |
| tiny*      | gqa-shared         |     800 |     512 |           0.4  |           0.41 | +2%   |       1.63   |       0.134  | -92%  |
| small*     | reference          |    1000 |     512 |           4.69 |           4.8  | +2%   |     288      |      59.4    | -79%  |
| small*     | gqa-shared         |    1000 |     512 |           1.09 |           1.05 | -3%   |      15.8    |       2.86   | -82%  |
| small*     | approximate-pruned |    1000 |     512 |           1.01 |           0.97 | -5%   |      12.2    |       3.09   | -75%  |
| small*     | reference          |    4000 |     512 |           5.53 |           5.78 | +5%   |     874      |      84.1    | -90%  |
| small*     | gqa-shared         |    4000 |     512 |           2.17 |           2.09 | -3%   |      19.2    |      11.3    | -41%  |
| small*     | approximate-pruned |    4000 |     512 |           1.29 |           1.7  | +32%  |      26.4    |      12.5    | -53%  |
| notes      | reference          |    4000 |     512 |           6.8  |           6.82 | +0%   |     114      |      86.2    | -24%  |
| notes      | reference          |    4000 |      64 |           2.51 |           2.95 | +17%  |      49      |      53.6    | +9%   |
| notes      | reference          |   20000 |      64 |           9.03 |           9.65 | +7%   |     440      |     527      | +20%  |
| large      | reference          |   70000 |     512 |   oom (25.8 GB)|          60.55 |       |      -       |    1249      |       |
| large      | autodiff-free      |   70000 |     512 |          14.79 |          15.67 | +6%   |     290      |     280      | -3%   |
| large      | causal-trick       |   70000 |     512 |          14.49 |          15.67 | +8%   |     192      |     273      | +42%  |
| large      | gqa-shared         |   70000 |     512 |          13.55 |          15.87 | +17%  |     170      |     256      | +50%  |
| large      | approximate-pruned |   70000 |     512 |          12.62 |          15.87 | +26%  |     206      |     256      | +24%  |

``tiny`` and ``large``: uncontended (``large``: ``reports/large-70k.json``, estimated with a measured GEMM rate
of 134 GFLOP/s; the reference's 25.8 GB edge matrix was refused by the memory limit, as predicted). ``*``: measured while another 2-core job (a 70,000-node run) and test suites shared
the machine: wall times there are inflated 2-30x (the small reference cells most), memory is not. ``notes``: the circuit-tracer notes'
reference measurements on a small-shaped workload with 55,905 active features (their "GB" read as 1e9
bytes). The GEMM rate of the estimates is 33 GFLOP/s (this machine measured 33 with one other job running;
``attrbench estimate`` measures it each time). Host memory is within about +-20% (approximate-pruned up to +32%); time within about 2x
on an idle machine, and says nothing about a busy one. approximate-pruned assumes 25% of the edges kept;
measured kept fractions at threshold 1e-3 were 14% (tiny, 800 nodes) and 17% (small, 1000 nodes), so its
estimate is on the high side. Where the exact backends would go lean (``large`` at 70,000 nodes),
approximate-pruned uses the same lean layered store (small entries zeroed) and is modelled as lean.

Long prompts (``reports/long-prompts.md``: the ``long`` preset at 64 to 2,048 tokens, 10,000 nodes): there the
terms that grow with the prompt dominate, and are counted: the reference's batched attention patterns
(``batch x H x n^2`` a layer: 16 GiB for one layer at 1,024 tokens, where circuit-tracer runs out of memory),
the exact engine's frozen patterns ``[L, H, n, n]`` (and gqa-shared's grouped copy), and the gradient buffers
``[batch, n, d]``, which never coexist with a re-ranking's or packaging's temporaries. The exact backends'
estimates are within 20% of the measured peaks at every length there (the table in that report);
approximate-pruned's 25% kept fraction is far too high at long prompts (it keeps a few percent), so its
estimate is up to twice its peak there.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field, replace
from typing import Any

import psutil
import torch
from tabulate import tabulate

from attrbench.api import Backend
from attrbench.bench.plan import Cell
from attrbench.bench.settings import BenchSettings
from attrbench.formatting import fmt_bytes
from attrbench.memory import dense_fits
from attrbench.workload.spec import WorkloadSpec

GIB = 2**30
#: RSS of a cell's child before any workload-sized memory: python + torch + transformers (+ circuit-tracer
#: and TransformerLens for the reference), calibrated on tiny
#: autodiff-free and causal-trick rank with circuit-tracer's own function, so their cells import it (and
#: TransformerLens) too, in the warm-up's first re-ranking
BASE_HOST = {"autograd": 0.54 * GIB, "vjp": 0.54 * GIB, "vjp-causal": 0.54 * GIB, "default": 0.36 * GIB}
#: average fraction of a layer's positions a causal rung's row is written over (its batch spans the
#: positions up to the batch's last target; fitted on small, 4,000 nodes, batch 64 and 512)
REACHED_POSITION_FRACTION = 0.6
#: the same for autodiff-free, which writes every row over every layer below its batch's top target and every
#: position; pages of columns nothing was written to stay untouched (fitted on long, 256 and 1,024 tokens)
PLAIN_REACHED_FRACTION = 0.45
#: activations of the replacement model's forward per (batch copy, position, d_model) and layer
REF_ACTIVATION_TENSORS_PER_LAYER = 12
#: fitted scale of the reference's activation + contraction terms (tiny and small, see the table above)
REF_ACTIVATION_SCALE = 0.9
#: the batch's attention patterns kept for the backward, per (batch copy, head, query, key) and layer (fitted on
#: the long preset at 64 and 256 tokens, where they are most of the reference's peak)
REF_PATTERN_SCALE = 0.8
#: effective host bandwidth of the memory-bound passes over the edge rows (bytes/s), fitted to the ranking
#: times of the circuit-tracer notes (small-shaped workload, 55,905 active features, batch 64)
HOST_BANDWIDTH = 12e9
GPU_BANDWIDTH = 1.5e12
#: GEMM rate used when none is measured (fp32 FLOP/s); a GPU's is taken as a constant
DEFAULT_CPU_RATE = 50e9
DEFAULT_GPU_RATE = 30e12
#: measured wall time / predicted compute time, per backend (calibrated on tiny and small, see above)
INEFFICIENCY = {
    "autograd": 2.0,
    "vjp": 3.0,
    "vjp-causal": 4.0,
    "vjp-causal-gqa": 4.0,
    "vjp-causal-gqa-pruned": 4.0,
}
#: gradient-sized buffers ``[batch, n_pos, d_model]`` alive at once in a backward pass, per rung (fitted on the
#: long preset at 2,048 tokens, where they are a third of the exact backends' peak): autodiff-free's einsum
#: attention VJP keeps the most; the causal rungs' late batches rarely reach the last position; gqa-shared's
#: grouped GEMMs keep the fewest temporaries
GRAD_BUFFERS = {"vjp": 4.0, "vjp-causal": 3.0, "default": 2.0}
#: seconds of fixed cost per cell (linearisation, salient logits, python overhead)
FIXED_S = {"autograd": 0.1, "default": 0.03}
#: the cost models a backend may declare (:meth:`attrbench.api.Backend.cost_model`): circuit-tracer's
#: autograd loop, and the exact engine's rungs (VJPs; + causal limit; + GQA-shared V/O; + pruned edges)
COST_MODELS = ("autograd", "vjp", "vjp-causal", "vjp-causal-gqa", "vjp-causal-gqa-pruned")
CAUSAL = ("vjp-causal", "vjp-causal-gqa", "vjp-causal-gqa-pruned")

_RATE_CACHE: dict[str, float] = {}


def gemm_rate(device: str = "cpu", measure: bool = True) -> float:
    """fp32 FLOP/s of a large matmul on ``device``, measured once per process (about 0.2 s on a CPU)."""
    kind = str(device).split(":")[0]
    if kind in _RATE_CACHE:
        return _RATE_CACHE[kind]
    rate = DEFAULT_GPU_RATE if kind == "cuda" else DEFAULT_CPU_RATE
    if measure:
        try:
            if kind == "cuda" and not torch.cuda.is_available():
                raise RuntimeError("no GPU")
            n = 1024 if kind == "cpu" else 4096
            a = torch.randn(n, n, device=kind)
            b = torch.randn(n, n, device=kind)
            (a @ b).sum().item()
            reps, t0 = 0, time.perf_counter()
            while reps < 3 or time.perf_counter() - t0 < 0.1:
                a @ b
                reps += 1
            if kind == "cuda":
                torch.cuda.synchronize()
            rate = 2 * n**3 * reps / (time.perf_counter() - t0)
        except Exception:
            pass
    _RATE_CACHE[kind] = rate
    return rate


@dataclass
class Shape:
    """The sizes the estimate needs, derived from a workload spec and the run settings."""

    L: int
    d: int
    H: int
    KV: int
    dh: int
    d_mlp: int
    vocab: int
    F: int
    skip: bool
    n_pos: int
    n_active: int
    n_logits: int
    nodes: int  # selected feature nodes = min(max_feature_nodes, n_active)
    #: cross-layer transcoder: layer l's features decode into the L - l layers from l on
    cross_layer: bool = False

    @property
    def decoder_factor(self) -> float:
        """Decoders per feature on average: 1 per-layer, (L + 1) / 2 cross-layer."""
        return (self.L + 1) / 2 if self.cross_layer else 1.0

    @classmethod
    def of(cls, spec: WorkloadSpec, nodes: int, max_n_logits: int = 10) -> Shape:
        m, t = spec.model, spec.transcoders
        n_active = max(int(spec.estimated_active_features), 1)
        return cls(
            m.num_hidden_layers,
            m.hidden_size,
            m.num_attention_heads,
            m.num_key_value_heads,
            m.head_dim,
            m.intermediate_size,
            m.vocab_size,
            t.d_transcoder,
            bool(t.skip_connection),
            spec.prompt.length,
            n_active,
            max_n_logits,
            min(nodes, n_active),
            getattr(t, "kind", "plt") == "clt",
        )

    @property
    def row_size(self) -> int:
        return self.n_active + (self.L + 1) * self.n_pos

    @property
    def total_nodes(self) -> int:
        return self.row_size + self.n_logits

    @property
    def n_rows(self) -> int:
        return self.nodes + self.n_logits

    @property
    def n_square(self) -> int:
        return self.nodes + (self.L + 1) * self.n_pos + self.n_logits

    def model_params(self) -> int:
        attn = self.d * self.dh * (2 * self.H + 2 * self.KV)
        return self.L * (attn + 3 * self.d * self.d_mlp) + 2 * self.vocab * self.d

    def transcoder_params(self) -> int:
        return int(self.L * ((1 + self.decoder_factor) * self.F * self.d + (self.d * self.d if self.skip else 0)))


@dataclass
class Estimate:
    backend: str
    nodes: int
    host_bytes: int
    gpu_bytes: int | None
    time_s: float
    edge_storage: str | None = None
    terms: dict[str, int] = field(default_factory=dict)
    #: the prompt length of the workload estimated
    n_tokens: int | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def cost_model_of(backend: Backend) -> str | None:
    """The cost model a registered backend declares (:meth:`attrbench.api.Backend.cost_model`), if known here."""
    model = backend.cost_model()
    return model if model in COST_MODELS else None


def estimate_backend(spec: WorkloadSpec, label: str, backend: Backend, nodes: int, **kw: Any) -> Estimate | None:
    """:func:`estimate_cell` with ``backend``'s own cost model, labelled ``label``; None when it has none."""
    model = cost_model_of(backend)
    if model is None:
        return None
    return replace(estimate_cell(spec, model, nodes, **kw), backend=label)


def estimate_run_cell(
    spec: WorkloadSpec, label: str, backend: Backend, nodes: int, settings: BenchSettings, rate: float | None
) -> Estimate | None:
    """:func:`estimate_backend` with a run's settings (device, dtype, batch, update interval, logits, options)."""
    return estimate_backend(
        spec,
        label,
        backend,
        nodes,
        device=settings.device,
        dtype=settings.dtype,
        batch_size=settings.batch_size,
        update_interval=settings.update_interval,
        max_n_logits=settings.max_n_logits,
        options=settings.backend_options,
        rate=rate,
    )


def _dtype_bytes(dtype: str) -> int:
    return 2 if dtype in ("bfloat16", "float16") else 4


def _windows(s: Shape, batch_size: int, update_interval: int) -> list[int]:
    """Sizes of the feature windows between re-rankings (one window of everything when all are kept)."""
    if s.nodes >= s.n_active:
        return [s.nodes]
    window = update_interval * batch_size
    return [min(window, s.nodes - i) for i in range(0, s.nodes, window)]


def _row_macs(s: Shape, backend: str) -> tuple[float, float]:
    """Multiply-adds of (one feature row on average, one logit row)."""
    causal = backend in CAUSAL
    v_heads = s.KV if backend in ("vjp-causal-gqa", "vjp-causal-gqa-pruned") else s.H
    per_pos = (s.d * s.d if s.skip else 0) + s.d * s.H * s.dh + v_heads * s.dh * s.d
    feats_per_layer = s.n_active / s.L

    def layer_cost(P: float, P2: float, reach: float) -> float:
        return P * per_pos + s.H * s.dh * P2 + (feats_per_layer * reach + P) * s.d

    if causal:  # positions up to the target's: mean P ~ n/2, mean P^2 ~ n^2/3
        feat = layer_cost(s.n_pos / 2, s.n_pos**2 / 6, 0.5)
    else:
        feat = layer_cost(s.n_pos, s.n_pos**2, 1.0)
    full = layer_cost(s.n_pos, s.n_pos**2, 1.0)
    layers_below = (s.L - 1) / 2
    if backend == "autograd":
        layers_below = s.L  # the whole model's backward runs for every batch
    return feat * layers_below + s.n_pos * s.d, full * s.L + s.n_pos * s.d


def _choose_store(model: str, s: Shape, device: str, options: dict[str, Any]) -> str:
    """What the exact engine would pick (the same rule, :func:`attrbench.memory.dense_fits`).
    approximate-pruned keeps the same dense rows, and the lean layered store (small entries zeroed) where the
    others go lean."""
    dense = "dense"
    choice = options.get("edge_storage", "auto")
    if choice in ("dense", "lean"):
        return dense if choice == "dense" else "lean"
    if str(device).startswith("cuda") and not torch.cuda.is_available():
        return dense
    return dense if dense_fits(s.n_rows, s.total_nodes, s.L, s.n_pos, torch.device(device)) else "lean"


@dataclass
class _Inputs:
    """The sizes every cost model reads (bytes, rows, passes), derived once per cell."""

    s: Shape
    cuda: bool
    wb: int  # bytes per weight in the run's dtype
    B: int  # batch size
    update_interval: int
    rate: float  # GEMM FLOP/s
    bw: float  # memory bandwidth, bytes/s

    @property
    def model_b(self) -> int:
        return 4 * self.s.model_params()

    @property
    def tc_b(self) -> int:
        return 4 * self.s.transcoder_params()

    @property
    def E(self) -> int:  # dense fp32 edge rows
        return 4 * self.s.n_rows * self.s.total_nodes

    @property
    def S(self) -> int:  # square adjacency
        return 4 * self.s.n_square**2

    @property
    def S_cols(self) -> int:  # the edge rows' selected columns
        return 4 * self.s.n_rows * self.s.n_square

    @property
    def ranks(self) -> int:
        s = self.s
        return len(_windows(s, self.B, self.update_interval)) if s.nodes < s.n_active else 0

    def ranking_passes(self, factor: float) -> float:
        """Bytes read by the re-rankings: ``factor`` passes over the rows there are at each."""
        s, B = self.s, self.B
        return sum(4 * factor * (s.n_logits + i * self.update_interval * B) * s.total_nodes for i in range(self.ranks))


def _autograd_cost(c: _Inputs, terms: dict[str, int]) -> tuple[float, float, float, float]:
    """circuit-tracer's loop: (host bytes, GPU bytes, compute s, memory s)."""
    s, B, E, S, S_cols = c.s, c.B, c.E, c.S, c.S_cols
    # HF model (workload, fp32 on host) + TL copy and transcoders in the replacement model (device dtype)
    device_w = (c.model_b + c.tc_b) * c.wb // 4
    terms["weights"] = c.model_b + c.tc_b + device_w
    acts = B * s.n_pos * s.d * s.L * REF_ACTIVATION_TENSORS_PER_LAYER * c.wb
    # the backward through attention keeps each layer's (frozen) pattern per batch copy: B x H x n^2 a layer,
    # the term that grows with the square of the prompt and runs circuit-tracer out of memory at long prompts
    acts += int(B * s.H * s.n_pos**2 * s.L * c.wb * REF_PATTERN_SCALE)
    contract = B * math.ceil(s.n_active / s.L) * s.d * c.wb
    acts, contract = int(acts * REF_ACTIVATION_SCALE), int(contract * REF_ACTIVATION_SCALE)
    terms["activations"] = acts + contract
    ranking, gpu = (2 * E if c.ranks else E), 0
    if c.cuda:  # the ranking copy goes to the GPU, the edge matrix stays on the host
        ranking = E
        gpu = device_w + acts + contract + (E if c.ranks else 0)
    packaging = max(E + S_cols, 2 * S_cols, S_cols + S) if s.nodes < s.n_active else max(2 * E, E + S)
    terms["edges"] = max(ranking, packaging)
    host = c.model_b + c.tc_b + terms["edges"] + (0 if c.cuda else device_w + acts + contract)
    feat_macs, _ = _row_macs(s, "autograd")
    windows = _windows(s, B, c.update_interval)
    padded_rows = B * (math.ceil(s.n_logits / B) + sum(math.ceil(w / B) for w in windows))
    forward = 2 * B * s.n_pos * (s.model_params() + s.L * 2 * s.F * s.d) / c.rate
    compute = 2 * feat_macs * padded_rows / c.rate + forward
    memory = (c.ranking_passes(s.L + 4) + 3 * E + 2 * S) / c.bw
    return host, gpu, compute, memory


@dataclass
class _EdgeBytes:
    """The exact engine's edge rows in one store: what stays resident while rows are computed, the largest
    temporaries of a re-ranking and of packaging (neither overlaps a batch's gradient buffers), bytes read."""

    resident: float
    ranking: float
    packaging: float
    passes: float


def _vjp_edges(c: _Inputs, kind: str, store: str) -> _EdgeBytes:
    """The exact engine's edge rows in ``store`` (``dense`` or ``lean``)."""
    s, E, S = c.s, c.E, c.S
    if store == "lean":
        # a row at layer l keeps the features and error nodes of the layers below l, and every token: on
        # average (L - 1) / 2L of the features and (L - 1) / 2 layers of error nodes; logit rows keep all
        below = (s.L - 1) / (2 * s.L)
        lean = 4 * (s.nodes * (s.n_active * below + (s.L - 1) * s.n_pos / 2 + s.n_pos) + s.n_logits * s.row_size)
        # ranking reads the rows in place; packaging joins one layer's rows (about 1/L of them) at a time and
        # writes the adjacency to a file in blocks
        return _EdgeBytes(lean, 0, lean / s.L + 4 * 512 * s.n_square, c.ranks * lean + 2 * lean + S)
    # The dense store is fresh anonymous memory: only the pages a row is written over become resident.
    # autodiff-free writes every row over every layer's columns; the causal rungs only over the layers below
    # the target and the positions up to the batch's last one; gqa-shared computes the last window (never
    # ranked) over the selected columns only (approximate-pruned: every feature row, after its one ranking).
    plain, narrow = kind == "vjp", kind in ("vjp-causal-gqa", "vjp-causal-gqa-pruned")
    item = 4
    last = min(s.nodes, c.update_interval * c.B) if (c.ranks and narrow) else 0
    reach = PLAIN_REACHED_FRACTION if plain else (s.L - 1) / (2 * s.L) * REACHED_POSITION_FRACTION
    wide_rows = s.n_rows - last - s.n_logits
    resident = item * (
        wide_rows * (s.n_active * reach + s.L * s.n_pos + s.n_pos)
        + last * (s.nodes + (s.L + 1) * s.n_pos)
        + s.n_logits * s.row_size
    )
    ranked_rows = max(0, s.n_rows - c.update_interval * c.B)  # rows at the last re-ranking
    if kind in ("vjp", "vjp-causal"):  # circuit-tracer's ranking copies the rows ranked so far, densely
        rank_tmp = 4 * ranked_rows * s.total_nodes
    else:  # the streamed ranking: the rows x rows block and a 64-row |block|
        rank_tmp = 4 * ranked_rows**2 + 4 * 64 * s.total_nodes
    packaging = S + 4 * 1024 * s.n_square
    plain_passes = (s.L + 4) if kind in ("vjp", "vjp-causal") else 3
    return _EdgeBytes(resident, rank_tmp if c.ranks else 0, packaging, c.ranking_passes(plain_passes) + E + 2 * S)


def _vjp_cost(c: _Inputs, kind: str, store: str, terms: dict[str, int]) -> tuple[float, float, float, float]:
    """The exact engine's rungs: (host bytes, GPU bytes, compute s, memory s)."""
    s, B = c.s, c.B
    weights = c.model_b + c.tc_b + 4 * s.L * (s.KV * s.dh * s.d + s.d * s.H * s.dh + (s.d * s.d if s.skip else 0))
    weights += 4 * s.L * s.F * s.d  # the encoders stacked once (a batch's encoder vectors are gathered from them)
    weights += int(4 * s.n_active * s.d * s.decoder_factor)  # the active features' scaled decoders
    # one batch's edge rows, and its gradients [B, P, d] through the layers (the attention VJP's temporaries
    # included); P is the whole prompt for the rows at the last positions, in every rung
    item = 2 if kind == "vjp-causal-gqa-pruned" else 4  # approximate-pruned's backward runs in bfloat16
    buffers = int(item * B * s.row_size + GRAD_BUFFERS.get(kind, GRAD_BUFFERS["default"]) * item * B * s.n_pos * s.d)
    # the frozen attention patterns [L, H, n, n] of the linearised model; gqa-shared keeps a grouped copy
    patterns = 4 * s.L * s.H * s.n_pos**2 * (2 if kind in ("vjp-causal-gqa", "vjp-causal-gqa-pruned") else 1)
    edges = _vjp_edges(c, kind, store)
    terms["weights"], terms["buffers"], terms["patterns"] = weights, buffers, patterns
    terms["edges"] = int(edges.resident + max(edges.ranking, edges.packaging))
    gpu: float = 0
    if c.cuda:
        gpu = (weights + patterns) * c.wb // 4 + edges.resident + max(buffers * c.wb // 4, edges.ranking)
        host: float = c.model_b + c.tc_b + (edges.packaging if store != "lean" else 0)
    else:
        host = weights + patterns + edges.resident + max(buffers, edges.ranking, edges.packaging)
    feat_macs, logit_macs = _row_macs(s, kind)
    compute = 2 * (feat_macs * s.nodes + logit_macs * s.n_logits) / c.rate
    return host, gpu, compute, edges.passes / c.bw


def estimate_cell(
    spec: WorkloadSpec,
    model: str,
    nodes: int,
    device: str = "cpu",
    dtype: str = "float32",
    batch_size: int = 512,
    update_interval: int = 4,
    max_n_logits: int = 10,
    options: dict[str, Any] | None = None,
    rate: float | None = None,
) -> Estimate:
    """Predicted peaks and time of one cell of cost model ``model`` (one of :data:`COST_MODELS`)."""
    if model not in COST_MODELS:
        raise ValueError(f"unknown cost model {model!r}; known: {', '.join(COST_MODELS)}")
    s = Shape.of(spec, nodes, max_n_logits)
    cuda = str(device).startswith("cuda")
    if model == "vjp-causal-gqa-pruned" and (options or {}).get("approx_ranking", "once") == "once":
        update_interval = max(1, math.ceil(s.nodes / batch_size))  # one window: ranked once, after the logits
    c = _Inputs(
        s,
        cuda,
        _dtype_bytes(dtype),
        batch_size,
        update_interval,
        rate if rate is not None else gemm_rate(device),
        GPU_BANDWIDTH if cuda else HOST_BANDWIDTH,
    )
    terms: dict[str, int] = {}
    store = None
    if model == "autograd":
        host, gpu, compute, memory = _autograd_cost(c, terms)
    else:
        store = _choose_store(model, s, device, dict(options or {}))
        host, gpu, compute, memory = _vjp_cost(c, model, store, terms)
    host += BASE_HOST.get(model, BASE_HOST["default"])
    fixed = FIXED_S.get(model, FIXED_S["default"])
    t = INEFFICIENCY.get(model, INEFFICIENCY["vjp-causal-gqa"]) * (compute + memory) + fixed
    return Estimate(model, nodes, int(host), int(gpu) if cuda else None, float(t), store, terms, s.n_pos)


def available_memory(device: str = "cpu", memory_limit_bytes: int | None = None) -> tuple[int, int | None]:
    """(host bytes, GPU bytes or None) a cell may use: physical memory (or the memory limit when lower),
    and the GPU's total memory on CUDA."""
    host = psutil.virtual_memory().total
    if memory_limit_bytes:
        host = min(host, memory_limit_bytes)
    gpu = None
    if str(device).startswith("cuda"):
        try:
            gpu = torch.cuda.get_device_properties(0).total_memory if torch.cuda.is_available() else None
        except Exception:
            gpu = None
    return int(host), gpu


def fits(est: Estimate, host_avail: int, gpu_avail: int | None) -> tuple[bool, str | None]:
    """Whether ``est`` fits; else the reason, as the runner records it."""
    if est.host_bytes > host_avail:
        return False, f"predicted peak {est.host_bytes / GIB:.1f} GiB exceeds {host_avail / GIB:.1f} GiB available"
    if est.gpu_bytes is not None and gpu_avail is not None and est.gpu_bytes > gpu_avail:
        return False, (
            f"predicted peak {est.gpu_bytes / GIB:.1f} GiB exceeds {gpu_avail / GIB:.1f} GiB available on the GPU"
        )
    return True, None


def estimate_table(estimates: list[Estimate], host_avail: int, gpu_avail: int | None, by_length: bool = False) -> str:
    """The estimates as a plain-text table; ``by_length`` adds a prompt-length column (``--n-tokens`` lists)."""
    rows = []
    for e in estimates:
        ok, _ = fits(e, host_avail, gpu_avail)
        t = f"{e.time_s:.3g} s" if e.time_s < 600 else f"{e.time_s / 3600:.3g} h"
        rows.append(
            [
                e.backend,
                *([e.n_tokens] if by_length else []),
                e.nodes,
                fmt_bytes(e.host_bytes),
                "-" if e.gpu_bytes is None else fmt_bytes(e.gpu_bytes),
                t,
                e.edge_storage or "-",
                "yes" if ok else "no",
            ]
        )
    return tabulate(
        rows,
        headers=[
            "backend",
            *(["tokens"] if by_length else []),
            "nodes",
            "host peak",
            "GPU peak",
            "time",
            "edge store",
            "fits",
        ],
        tablefmt="simple",
    )


def predict_unfit(
    spec: WorkloadSpec,
    cells: list[Cell],
    backends: Mapping[str, Backend],
    settings: BenchSettings,
    say: Callable[[str], None],
    n_tokens: int | None = None,
) -> dict[tuple[str, int], str]:
    """Estimate every (backend, nodes) of ``cells``; warn through ``say`` about those predicted not to fit.
    Returns the reason per (backend, nodes) that does not fit. An estimate never stops a run. ``n_tokens``:
    the prompt length to name in the warnings (runs over several lengths)."""
    try:
        host, gpu = available_memory(settings.device, settings.memory_limit_bytes)
    except Exception as exc:
        say(f"warning: memory estimate unavailable ({type(exc).__name__}: {exc})")
        return {}
    too_big: dict[tuple[str, int], str] = {}
    for b, n in dict.fromkeys((cell.backend, cell.nodes) for cell in cells):
        try:
            est = estimate_run_cell(spec, b, backends[b], n, settings, DEFAULT_CPU_RATE)
        except Exception:
            continue
        ok, reason = fits(est, host, gpu) if est is not None else (True, None)
        if not ok and reason is not None:
            too_big[(b, n)] = reason
            action = "not run (--strict)" if settings.strict else "it may run out of memory"
            where = f"n_tokens={n_tokens} " if n_tokens is not None else ""
            say(f"warning: {b} {where}nodes={n}: {reason}; {action}")
    return too_big
