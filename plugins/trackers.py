"""Built-in measurement trackers: host memory (psutil sampler + getrusage) and GPU memory (NVML + torch).

Each factory takes the device string and returns an object with ``start()``, ``stop()`` and
``results() -> dict``. Samplers run in a daemon thread that sleeps between samples (no busy-wait); every
number is labelled with where it came from in ``results()["sources"]``.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable
from typing import Any

from attrbench.hookspecs import hookimpl

SAMPLE_INTERVAL_S = 0.02


class _Sampler:
    """Calls ``sample()`` every ``interval`` seconds in a daemon thread until stopped."""

    def __init__(self, sample: Callable[[], None], interval: float = SAMPLE_INTERVAL_S):
        self._sample = sample
        self._interval = interval
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, name="attrbench-sampler", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(self._interval):
            try:
                self._sample()
            except Exception:
                return

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
        try:
            self._sample()
        except Exception:
            pass


class HostMemoryTracker:
    """Peak resident set size of this process sampled with psutil, plus ``ru_maxrss``.

    ``peak_host_bytes`` is the larger of the sampled peak and getrusage's high-water mark over the tracked
    interval; getrusage's mark covers the whole process lifetime, so it is only used when it grew while
    tracking (it then catches spikes shorter than the sampling interval).
    """

    name = "host-memory"

    def __init__(self, device: str = "cpu"):
        import psutil

        self._proc = psutil.Process(os.getpid())
        self._peak = 0
        self._start_rss = 0
        self._rusage_before = 0
        self._rusage_after = 0
        self._sampler = _Sampler(self._sample)

    def _rss(self) -> int:
        return self._proc.memory_info().rss

    def _sample(self) -> None:
        self._peak = max(self._peak, self._rss())

    @staticmethod
    def _maxrss() -> int:
        try:
            import resource
            import sys

            kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
            return kb if sys.platform == "darwin" else kb * 1024
        except Exception:
            return 0

    def start(self) -> None:
        self._start_rss = self._rss()
        self._peak = self._start_rss
        self._rusage_before = self._maxrss()
        self._sampler.start()

    def stop(self) -> None:
        self._sampler.stop()
        self._rusage_after = self._maxrss()

    def results(self) -> dict[str, Any]:
        rusage_grew = self._rusage_after > self._rusage_before
        peak = max(self._peak, self._rusage_after) if rusage_grew else self._peak
        return {
            "peak_host_bytes": int(peak),
            "host_rss_start_bytes": int(self._start_rss),
            "host_rss_sampled_peak_bytes": int(self._peak),
            "host_ru_maxrss_bytes": int(self._rusage_after),
            "sources": {
                "peak_host_bytes": "max(psutil RSS of this process sampled every "
                f"{SAMPLE_INTERVAL_S * 1000:.0f} ms, getrusage ru_maxrss if it grew while tracking)",
            },
        }


class GpuMemoryTracker:
    """Peak GPU memory of this process: NVML per-process used memory (sampled) and torch's allocator peak.

    Inert (all None) on CPU devices or when CUDA / pynvml is unavailable.
    """

    name = "gpu-memory"

    def __init__(self, device: str = "cpu"):
        self._active = False
        self._handle = None
        self._nvml = None
        self._peak_nvml: int | None = None
        self._peak_torch: int | None = None
        self._device_index = 0
        self._sampler: _Sampler | None = None
        if not str(device).startswith("cuda"):
            return
        try:
            import torch

            if not torch.cuda.is_available():
                return
            self._device_index = torch.device(device).index or 0
            self._active = True
        except Exception:
            return
        try:
            import pynvml

            pynvml.nvmlInit()
            self._nvml = pynvml
            self._handle = pynvml.nvmlDeviceGetHandleByIndex(self._device_index)
            self._sampler = _Sampler(self._sample)
        except Exception:
            self._nvml = None

    def _sample(self) -> None:
        pid = os.getpid()
        used = None
        for getter in ("nvmlDeviceGetComputeRunningProcesses", "nvmlDeviceGetGraphicsRunningProcesses"):
            try:
                for proc in getattr(self._nvml, getter)(self._handle):
                    if proc.pid == pid and proc.usedGpuMemory is not None:
                        used = max(used or 0, int(proc.usedGpuMemory))
            except Exception:
                continue
        if used is not None:
            self._peak_nvml = max(self._peak_nvml or 0, used)

    def start(self) -> None:
        if not self._active:
            return
        import torch

        torch.cuda.synchronize(self._device_index)
        torch.cuda.reset_peak_memory_stats(self._device_index)
        if self._sampler is not None:
            self._sampler.start()

    def stop(self) -> None:
        if not self._active:
            return
        import torch

        torch.cuda.synchronize(self._device_index)
        if self._sampler is not None:
            self._sampler.stop()
        self._peak_torch = int(torch.cuda.max_memory_allocated(self._device_index))

    def results(self) -> dict[str, Any]:
        if not self._active:
            return {"peak_gpu_bytes": None, "peak_gpu_torch_bytes": None}
        return {
            "peak_gpu_bytes": self._peak_nvml,
            "peak_gpu_torch_bytes": self._peak_torch,
            "sources": {
                "peak_gpu_bytes": "NVML per-process used GPU memory of this pid, sampled every "
                f"{SAMPLE_INTERVAL_S * 1000:.0f} ms"
                if self._nvml
                else "unavailable (no pynvml/NVML)",
                "peak_gpu_torch_bytes": "torch.cuda.max_memory_allocated",
            },
        }


class GemmRateTracker:
    """The machine's dense GEMM rates just before the timed attribution, the denominators of FLOP-floor
    fractions: float32 on the CPU, on the fastest float32-exact kernels there
    (:func:`attrbench.fp32_gemm.choose_route`), and bfloat16 (with float32 accumulation), the dtype
    approximate-pruned's backward passes run in; bfloat16 on CUDA. Square matrices of 2048.

    ``gemm_gflops`` is the run's default rate (float32 on the CPU); ``gemm_gflops_by_dtype`` has every
    measured one, so that a cell whose VJPs ran in bfloat16 (``info.vjp_dtype``) is held to bfloat16's
    floor rather than to float32's, which it would exceed."""

    SIZE = 2048

    def __init__(self, device: str = "cpu"):
        self.device = device
        self.by_dtype: dict[str, float] = {}
        self.kernels = ""

    @property
    def gflops(self) -> float | None:
        """The run's default rate: float32 on the CPU, bfloat16 on CUDA."""
        return next(iter(self.by_dtype.values()), None)

    def start(self) -> None:
        import torch

        from attrbench.fp32_gemm import choose_route, fp32_gemms

        cuda = str(self.device).startswith("cuda")
        route = choose_route("auto", self.device, batch_size=self.SIZE)
        dtypes = (torch.bfloat16,) if cuda else (torch.float32, torch.bfloat16)
        with fp32_gemms(route):
            for dtype in dtypes:
                self.by_dtype[str(dtype).replace("torch.", "")] = self._rate(dtype, cuda)
        self.kernels = "" if cuda else f" (float32 on {route})"

    def _rate(self, dtype: Any, cuda: bool) -> float:
        import torch

        a = torch.randn(self.SIZE, self.SIZE, device=self.device, dtype=dtype)
        b = torch.randn(self.SIZE, self.SIZE, device=self.device, dtype=dtype)
        reps = 20 if cuda else 3
        a @ b  # warm-up
        if cuda:
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        for _ in range(reps):
            a @ b
        if cuda:
            torch.cuda.synchronize()
        return 2 * self.SIZE**3 * reps / (time.perf_counter() - t0) / 1e9

    def stop(self) -> None:
        pass

    def results(self) -> dict[str, Any]:
        dtypes = "/".join(self.by_dtype)
        return {
            "gemm_gflops": self.gflops,
            "gemm_gflops_by_dtype": dict(self.by_dtype),
            "sources": {
                "gemm_gflops": f"{self.SIZE}^3 {dtypes}{self.kernels} matmul before timing",
            },
        }


@hookimpl
def register_trackers(register):
    """Host memory, GPU memory and machine GEMM-rate trackers."""
    register(GemmRateTracker)
    register(HostMemoryTracker)
    register(GpuMemoryTracker)
