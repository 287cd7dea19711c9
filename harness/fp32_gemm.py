"""Which kernels run float32 GEMMs on a CPU: the BLAS torch was built with, or oneDNN's.

torch sends float32 matmuls to its BLAS (MKL in the PyPI wheels), which on AMD CPUs takes an AVX2 path. On
this project's machine (AMD EPYC, AVX-512) oneDNN's float32 kernels run the VJPs' GEMMs 2-2.5x faster,
with float32's accuracy. torch routes float32 matmuls to oneDNN only under
``torch.backends.mkldnn.matmul.fp32_precision = "bf16"``, which *allows* oneDNN to round the inputs to
bfloat16. oneDNN does so only where it has bfloat16 matrix units (AMX); elsewhere it runs its float32
kernels. So the route is probed once per process (:func:`onednn_probe`) and taken (``auto``) only where
a GEMM gives float32's answer through it (inputs rounded to bfloat16 would be ~10,000x further off), is
clearly faster than through the BLAS, and the batches are large enough (:data:`ONEDNN_MIN_BATCH`).

oneDNN builds a kernel for every new GEMM shape, so the gain is smaller on the first pass over a prompt
than on later ones; circuit-tracer's own loop, with its many shapes, runs ~1.8x *slower* through it
(``small``, 4,000 nodes: 71 -> 130 s), which is why the route belongs to the backends that ask for it,
not to the process.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from functools import lru_cache

import torch

from attrbench.errors import UsageError

ROUTES = ("auto", "blas", "onednn")
#: float32 GEMMs differ from float64 by ~3e-7 (relative); inputs rounded to bfloat16 by ~3e-3
EXACT_REL_ERROR = 1e-5
#: ``auto`` takes oneDNN only where it runs the probe's GEMM at least this much faster than the BLAS
MIN_SPEEDUP = 1.3
#: and only from this batch size up: oneDNN builds a kernel for every new GEMM shape (~1 ms and fresh memory
#: each), which small batches (many shapes, little work each) do not repay. ``tiny``, batch 64, first pass:
#: gqa-shared 0.024 s through the BLAS, 0.077 s through oneDNN; ``small``, batch 64: even; batch 512: 0.59 ->
#: 0.44 s. approximate-pruned's bfloat16 GEMMs, oneDNN's too, follow the same rule.
ONEDNN_MIN_BATCH = 256


@dataclass(frozen=True)
class OnednnProbe:
    """What the probe found: whether oneDNN's float32 route exists, is float32-exact, and its speed-up."""

    available: bool
    exact: bool
    speedup: float

    @property
    def pays(self) -> bool:
        return self.available and self.exact and self.speedup >= MIN_SPEEDUP


def _precision_knob() -> object | None:
    """torch's switch (torch >= 2.9); None where this torch has none."""
    matmul = getattr(torch.backends.mkldnn, "matmul", None)
    return matmul if matmul is not None and hasattr(matmul, "fp32_precision") else None


@contextmanager
def fp32_gemms(route: str) -> Iterator[None]:
    """Run the block's float32 CPU GEMMs through ``route`` (``blas`` or ``onednn``), then restore the setting."""
    knob = _precision_knob()
    if knob is None:
        yield
        return
    previous = knob.fp32_precision  # type: ignore[attr-defined]
    knob.fp32_precision = "bf16" if route == "onednn" else "ieee"  # type: ignore[attr-defined]
    try:
        yield
    finally:
        knob.fp32_precision = previous  # type: ignore[attr-defined]


def onednn_route_active() -> bool:
    """Whether float32 CPU GEMMs run through oneDNN right now (inside ``fp32_gemms("onednn")``)."""
    knob = _precision_knob()
    return knob is not None and knob.fp32_precision == "bf16"  # type: ignore[attr-defined]


def _best_seconds(fn: Callable[[], object], reps: int = 5) -> float:
    fn()
    best = float("inf")
    for _ in range(reps):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return best


def probe_error(mm: Callable[[torch.Tensor, torch.Tensor], torch.Tensor], bmm: Callable[..., torch.Tensor]) -> float:
    """The largest relative error, against float64, of ``mm`` and ``bmm`` on the probe's float32 inputs:
    ~3e-7 for float32 arithmetic, ~3e-3 where the inputs are rounded to bfloat16."""
    generator = torch.Generator().manual_seed(0)
    a = torch.randn(512, 256, generator=generator)
    b = torch.randn(256, 256, generator=generator)
    x = torch.randn(4, 64, 256, generator=generator)
    pairs = (
        (mm(a, b), a.double() @ b.double()),
        (bmm(x, x.transpose(1, 2)), torch.bmm(x.double(), x.double().transpose(1, 2))),
    )
    return max(float((got.double() - want).norm() / want.norm()) for got, want in pairs)


@lru_cache(maxsize=1)
def onednn_probe() -> OnednnProbe:
    """Probe oneDNN's float32 route once per process (~20 ms): exactness of a GEMM and a batched GEMM
    (:func:`probe_error`), and the speed of a VJP-shaped GEMM against the BLAS."""
    if _precision_knob() is None or not torch.backends.mkldnn.is_available():
        return OnednnProbe(False, False, 0.0)
    a, b = torch.randn(2048, 256), torch.randn(256, 256)
    with fp32_gemms("onednn"):
        error = probe_error(torch.mm, torch.bmm)
        onednn = _best_seconds(lambda: a @ b)
    with fp32_gemms("blas"):
        blas = _best_seconds(lambda: a @ b)
    return OnednnProbe(True, error <= EXACT_REL_ERROR, blas / onednn)


def choose_route(requested: str, device: torch.device | str, batch_size: int) -> str:
    """The route for float32 GEMMs on ``device``: option ``fp32_gemm`` (``auto``, ``blas``, ``onednn``).

    ``auto`` is oneDNN from batch :data:`ONEDNN_MIN_BATCH` up where :func:`onednn_probe` finds it exact and
    faster, the BLAS otherwise; a GPU
    has no choice to make (``blas`` stands for torch's default there). ``onednn`` where the probe finds
    it inexact is refused: the exact backends must stay float32-exact."""
    if requested not in ROUTES:
        raise UsageError(f"fp32_gemm must be one of {', '.join(ROUTES)}, got {requested!r}")
    if torch.device(device).type != "cpu":
        return "blas"
    if requested == "blas":
        return "blas"
    probe = onednn_probe()
    if requested == "onednn":
        if not (probe.available and probe.exact):
            raise UsageError("fp32_gemm=onednn: oneDNN's float32 GEMMs are not float32-exact on this machine")
        return "onednn"
    return "onednn" if probe.pays and batch_size >= ONEDNN_MIN_BATCH else "blas"
