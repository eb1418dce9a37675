"""Calibration statistics computed where the activations are: amax and 2048-bin |x| histograms.

The same rule as `collector.StatsCollector` (see its docstring), reimplemented for tensors on a
torch device so activations are never copied to the host:

* per tensor and batch, pass 1 (`amax`) reads the tensor once for its |x| maximum and its counts
  of elements, non-finite values and exact zeros (ReLU zeros are counted apart, never binned);
* pass 2 (`hist`) derives the batch's histogram range from the running `hist_max` and the batch
  amax (first batch: the amax itself; later: doubled until it covers it), and bins the non-zero
  finite values of its block into a shared-memory histogram, merged once into the batch histogram;
* `end_batch` (`finalize`, one launch for all tensors) merges the running histogram 2^k to 1 when
  the range doubled, adds the batch histogram and the zeros, and resets the batch scratch.

Nothing reads the device from the host until `stats()`, so a whole calibration step can be
captured in a CUDA graph. Three engines run the passes: CUDA C kernels compiled at run time with
NVRTC (`nvrtc`: one compile, then loaded from trtq's disk cache, see `cuda_kernels`) or CuPy
(`cupy`), and plain torch ops (`torch`: any device, slower on CUDA; the reference the kernels are
tested against).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch

from trtq.calibrate.collector import MIN_HIST_MAX, NUM_BINS, TensorStats
from trtq.calibrate.cuda_kernels import load_kernels

ENGINES = ("nvrtc", "cupy", "torch")

_THREADS = 256
_CHUNK = 1 << 30
"""Elements per kernel launch (keeps int32 indexing in the kernels safe)."""

_FLT_MAX = float(np.finfo(np.float32).max)

CUDA_SOURCE = r"""
#define NB 2048
#define REPL 4
#define THREADS 256
#define FLT_BIG 3.402823466e+38f

__device__ __forceinline__ float trtq_new_hist_max(float prev, float ba, int* shift) {
    /* The collector's _cover: the first non-zero batch sets the range; later ones double it. */
    *shift = 0;
    if (prev == 0.0f) return fmaxf(ba, __int_as_float(27 << 23));  /* MIN_HIST_MAX = 2^-100 */
    float top = prev;
    int k = 0;
    while (top < ba && k < 320) { top = top * 2.0f; ++k; }
    *shift = k;
    return top;
}

__device__ __forceinline__ float trtq_bin_scale(float hm) {
    /* collector.bin_scale: float32(NB / hm) computed in double, lowered until hm * s <= NB. */
    float s = __double2float_rn(2048.0 / (double)hm);
    for (int i = 0; i < 4; ++i) {
        if (__fmul_rn(hm, s) <= 2048.0f) break;
        s = __int_as_float(__float_as_int(s) - 1);
    }
    return s;
}

__device__ __forceinline__ unsigned int trtq_warp_max(unsigned int v) {
    for (int o = 16; o > 0; o >>= 1) v = max(v, __shfl_down_sync(0xffffffffu, v, o));
    return v;
}

__device__ __forceinline__ unsigned int trtq_warp_sum(unsigned int v) {
    for (int o = 16; o > 0; o >>= 1) v += __shfl_down_sync(0xffffffffu, v, o);
    return v;
}

/* Values are classified on their bits, so flush-to-zero compiler settings cannot change the result:
 * |x| bits 0 is a zero, >= 0x7f800000 is Inf/NaN; for non-negative floats, integer order is float order. */
#define TRTQ_ACC(v) { const unsigned int a_ = __float_as_uint(v) & 0x7fffffffu; \
    if (a_ < 0x7f800000u) { m = max(m, a_); zeros += (a_ == 0u); } else { ++bad; } }

extern "C" __global__ void __launch_bounds__(THREADS)
trtq_amax(const float* __restrict__ x, int n, int vec, int t, float* bamax, unsigned long long* bcount) {
    unsigned int m = 0u;
    unsigned int bad = 0u, zeros = 0u;
    const int tid = blockIdx.x * THREADS + threadIdx.x;
    const int stride = gridDim.x * THREADS;
    int done = 0;
    if (vec) {
        const int n4 = n >> 2;
        const float4* x4 = reinterpret_cast<const float4*>(x);
        int i = tid;
        for (; i + stride < n4; i += 2 * stride) {
            const float4 a = x4[i];
            const float4 b = x4[i + stride];
            TRTQ_ACC(a.x) TRTQ_ACC(a.y) TRTQ_ACC(a.z) TRTQ_ACC(a.w)
            TRTQ_ACC(b.x) TRTQ_ACC(b.y) TRTQ_ACC(b.z) TRTQ_ACC(b.w)
        }
        if (i < n4) {
            const float4 a = x4[i];
            TRTQ_ACC(a.x) TRTQ_ACC(a.y) TRTQ_ACC(a.z) TRTQ_ACC(a.w)
        }
        done = n4 << 2;
    }
    for (int i = done + tid; i < n; i += stride) TRTQ_ACC(x[i])
    m = trtq_warp_max(m);
    bad = trtq_warp_sum(bad);
    zeros = trtq_warp_sum(zeros);
    __shared__ unsigned int sm[THREADS / 32], sb[THREADS / 32], sz[THREADS / 32];
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    if (lane == 0) { sm[warp] = m; sb[warp] = bad; sz[warp] = zeros; }
    __syncthreads();
    if (threadIdx.x == 0) {
        for (int w = 1; w < THREADS / 32; ++w) { m = max(m, sm[w]); bad += sb[w]; zeros += sz[w]; }
        if (m > 0u) atomicMax(reinterpret_cast<unsigned int*>(bamax + t), m);
        if (bad) atomicAdd(bcount + 3 * t + 1, (unsigned long long)bad);
        if (zeros) atomicAdd(bcount + 3 * t + 2, (unsigned long long)zeros);
        if (blockIdx.x == 0) atomicAdd(bcount + 3 * t, (unsigned long long)n);
    }
}

#define TRTQ_BIN(v) { const unsigned int a_ = __float_as_uint(v) & 0x7fffffffu; \
    if (a_ != 0u && a_ < 0x7f800000u) { \
        int b_ = (int)ceilf(__fmul_rn(__uint_as_float(a_), s)) - 1; \
        b_ = b_ < 0 ? 0 : (b_ > NB - 1 ? NB - 1 : b_); \
        atomicAdd(h + b_, 1u); } }

extern "C" __global__ void __launch_bounds__(THREADS)
trtq_hist(const float* __restrict__ x, int n, int vec, int t, const float* hist_max, const float* bamax,
          unsigned long long* bhist) {
    __shared__ unsigned int sh[REPL * NB];
    for (int i = threadIdx.x; i < REPL * NB; i += THREADS) sh[i] = 0u;
    const float ba = bamax[t];
    int shift;
    const float hm = trtq_new_hist_max(hist_max[t], ba, &shift);
    const float s = trtq_bin_scale(hm);
    __syncthreads();
    if (__float_as_uint(ba) != 0u) {
        unsigned int* h = sh + ((threadIdx.x >> 5) & (REPL - 1)) * NB;
        const int tid = blockIdx.x * THREADS + threadIdx.x;
        const int stride = gridDim.x * THREADS;
        int done = 0;
        if (vec) {
            /* Walk from the end: the amax pass read the tail last, so it is still in L2. */
            const int n4 = n >> 2;
            const float4* x4 = reinterpret_cast<const float4*>(x);
            int i = tid;
            for (; i + stride < n4; i += 2 * stride) {
                const float4 a = x4[n4 - 1 - i];
                const float4 b = x4[n4 - 1 - i - stride];
                TRTQ_BIN(a.x) TRTQ_BIN(a.y) TRTQ_BIN(a.z) TRTQ_BIN(a.w)
                TRTQ_BIN(b.x) TRTQ_BIN(b.y) TRTQ_BIN(b.z) TRTQ_BIN(b.w)
            }
            if (i < n4) {
                const float4 a = x4[n4 - 1 - i];
                TRTQ_BIN(a.x) TRTQ_BIN(a.y) TRTQ_BIN(a.z) TRTQ_BIN(a.w)
            }
            done = n4 << 2;
        }
        for (int i = done + tid; i < n; i += stride) TRTQ_BIN(x[i])
    }
    __syncthreads();
    if (__float_as_uint(ba) != 0u) {
        unsigned long long* out = bhist + (size_t)t * NB;
        for (int i = threadIdx.x; i < NB; i += THREADS) {
            unsigned int c = 0u;
            for (int r = 0; r < REPL; ++r) c += sh[r * NB + i];
            if (c) atomicAdd(out + i, (unsigned long long)c);
        }
    }
}

extern "C" __global__ void __launch_bounds__(THREADS)
trtq_finalize(int with_hist, float* amax, float* hist_max, unsigned long long* count,
              unsigned long long* nan_count, unsigned long long* hist, float* bamax,
              unsigned long long* bcount, unsigned long long* bhist) {
    __shared__ unsigned long long old[NB];
    const int t = blockIdx.x;
    const unsigned long long numel = bcount[3 * t], bad = bcount[3 * t + 1], zeros = bcount[3 * t + 2];
    const unsigned long long finite = numel - bad;
    const float ba = bamax[t];
    unsigned long long* h = hist + (size_t)t * NB;
    unsigned long long* bh = bhist + (size_t)t * NB;
    if (numel > 0 && finite > 0 && with_hist) {
        if (__float_as_uint(ba) != 0u) {
            const float prev = hist_max[t];
            int shift;
            const float hm = trtq_new_hist_max(prev, ba, &shift);
            if (prev > 0.0f && shift > 0) {
                for (int i = threadIdx.x; i < NB; i += THREADS) old[i] = h[i];
                __syncthreads();
                if (shift >= 11) {
                    for (int i = threadIdx.x; i < NB; i += THREADS) h[i] = 0ull;
                    __syncthreads();
                    if (threadIdx.x == 0) {
                        unsigned long long total = 0ull;
                        for (int i = 0; i < NB; ++i) total += old[i];
                        h[0] = total;
                    }
                } else {
                    const int g = 1 << shift;
                    for (int b = threadIdx.x; b < NB; b += THREADS) {
                        unsigned long long v = 0ull;
                        if (b * g < NB) for (int j = 0; j < g; ++j) v += old[b * g + j];
                        h[b] = v;
                    }
                }
                __syncthreads();
            }
            for (int i = threadIdx.x; i < NB; i += THREADS) h[i] += bh[i];
            __syncthreads();
            if (threadIdx.x == 0) { h[0] += zeros; hist_max[t] = hm; }
        } else if (threadIdx.x == 0) {
            h[0] += finite;
        }
    }
    if (threadIdx.x == 0 && numel > 0) {
        nan_count[t] += bad;
        if (finite > 0) { amax[t] = __uint_as_float(max(__float_as_uint(amax[t]), __float_as_uint(ba))); count[t] += finite; }
    }
    if (with_hist) for (int i = threadIdx.x; i < NB; i += THREADS) bh[i] = 0ull;
    if (threadIdx.x == 0) { bamax[t] = 0.0f; bcount[3 * t] = 0ull; bcount[3 * t + 1] = 0ull; bcount[3 * t + 2] = 0ull; }
}
"""

Launch = Callable[[tuple[int, int, int], tuple[int, int, int], Sequence[object]], None]


class DeviceStats:
    """Streaming amax, counts and (optionally) 2048-bin |x| histograms of `names`, kept on `device`.

    `update(i, x)` queues the statistics of one batch of tensor i without synchronising;
    `end_batch()` folds the batch in; `stats()` copies everything to the host as `TensorStats`.
    """

    def __init__(self, names: Sequence[str], device: str | torch.device, histogram: bool = True,
                 engine: str | None = None) -> None:
        self.names = list(names)
        self.device = torch.device(device)
        self.histogram = histogram
        count = len(self.names)
        bins = NUM_BINS if histogram else 0

        def zeros(*shape: int, dtype: torch.dtype = torch.int64) -> torch.Tensor:
            return torch.zeros(shape, dtype=dtype, device=self.device)

        self.amax = zeros(count, dtype=torch.float32)
        self.hist_max = zeros(count, dtype=torch.float32)
        self.count = zeros(count)
        self.nan_count = zeros(count)
        self.hist = zeros(count, bins)
        self.batch_amax = zeros(count, dtype=torch.float32)
        self.batch_counts = zeros(count, 3)
        """Per batch: elements, non-finite elements, exact zeros."""
        self.batch_hist = zeros(count, bins)
        self._engine, self.engine_note = _make_engine(self.device, engine)

    @property
    def engine(self) -> str:
        """Which engine computes the statistics: "nvrtc", "cupy" or "torch"."""
        return self._engine.name

    @property
    def kernel_origin(self) -> str:
        """Where the CUDA kernels came from (cache file or compiled in this run); '' for the torch engine."""
        return self._engine.origin

    def update(self, index: int, x: torch.Tensor) -> None:
        """Queue one batch of tensor `index` (any shape and float dtype, on this device)."""
        flat = x.detach().reshape(-1)
        if flat.dtype != torch.float32:
            flat = flat.float()
        if flat.numel() == 0:
            return
        self._engine.update(self, index, flat.contiguous())

    def end_batch(self) -> None:
        """Fold the batch's statistics into the running ones (one launch for all tensors)."""
        self._engine.finalize(self)

    def stats(self) -> dict[str, TensorStats]:
        """Every tensor's statistics, copied to the host (this synchronises)."""
        amax = self.amax.cpu().numpy()
        hist_max = self.hist_max.cpu().numpy()
        count = self.count.cpu().numpy()
        nan_count = self.nan_count.cpu().numpy()
        hist = self.hist.cpu().numpy()
        return {
            name: TensorStats(name=name, amax=float(amax[i]), hist=hist[i].copy(), hist_max=float(hist_max[i]),
                              count=int(count[i]), nan_count=int(nan_count[i]))
            for i, name in enumerate(self.names)
        }


class _TorchEngine:
    """The statistics with torch ops; no host synchronisation, any device."""

    name = "torch"
    origin = ""

    def update(self, s: DeviceStats, t: int, x: torch.Tensor) -> None:
        a = x.abs()
        finite = a <= _FLT_MAX
        af = torch.where(finite, a, torch.zeros((), dtype=a.dtype, device=a.device))
        s.batch_amax[t] = torch.maximum(s.batch_amax[t], af.amax())
        s.batch_counts[t, 0] += x.numel()
        s.batch_counts[t, 1] += (~finite).sum()
        s.batch_counts[t, 2] += (finite & (a == 0)).sum()
        if not s.histogram:
            return
        top, _ = _new_range(s.hist_max[t], s.batch_amax[t])
        scale = _bin_scale(top)
        bins = (torch.ceil(af * scale).to(torch.int64) - 1).clamp_(0, NUM_BINS - 1)
        s.batch_hist[t].scatter_add_(0, bins, (af > 0).to(torch.int64))

    def finalize(self, s: DeviceStats) -> None:
        numel, bad, zeros = s.batch_counts.unbind(1)
        finite = numel - bad
        has = finite > 0
        s.nan_count += bad
        s.amax.copy_(torch.where(has, torch.maximum(s.amax, s.batch_amax), s.amax))
        s.count += finite
        if s.histogram:
            s.hist[:, 0] += torch.where(has & (s.batch_amax == 0), finite, 0)
            binned = has & (s.batch_amax > 0)
            top, shift = _new_range(s.hist_max, s.batch_amax)
            grow = binned & (s.hist_max > 0) & (shift > 0)
            target = torch.arange(NUM_BINS, device=s.device)[None, :] >> shift.clamp(max=11).to(torch.int64)[:, None]
            merged = torch.zeros_like(s.hist).scatter_add_(1, target, s.hist)
            s.hist.copy_(torch.where(grow[:, None], merged, s.hist))
            s.hist += torch.where(binned[:, None], s.batch_hist, 0)
            s.hist[:, 0] += torch.where(binned, zeros, 0)
            s.hist_max.copy_(torch.where(binned, top, s.hist_max))
            s.batch_hist.zero_()
        s.batch_amax.zero_()
        s.batch_counts.zero_()


def _new_range(prev: torch.Tensor, amax: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(hist_max, doublings) after a batch with `amax`, elementwise; the collector's `_cover`."""
    m_prev, e_prev = torch.frexp(prev)
    m_new, e_new = torch.frexp(amax)
    shift = (e_new - e_prev + (m_new > m_prev).to(e_new.dtype)).clamp(min=0)
    grown = torch.ldexp(prev, shift)
    first = amax.clamp(min=MIN_HIST_MAX)
    fresh = prev == 0
    return torch.where(fresh, first, grown), torch.where(fresh, torch.zeros_like(shift), shift)


def _bin_scale(top: torch.Tensor) -> torch.Tensor:
    """collector.bin_scale elementwise: float32(NUM_BINS / top), lowered while top * s > NUM_BINS."""
    scale = (NUM_BINS / top.double()).float()
    zero = torch.zeros_like(scale)
    for _ in range(4):
        scale = torch.where(top * scale > NUM_BINS, torch.nextafter(scale, zero), scale)
    return scale


_SIGNATURES = {"trtq_amax": "piiipp", "trtq_hist": "piiippp", "trtq_finalize": "ipppppppp"}
"""Parameters of the kernels in CUDA_SOURCE (p pointer, i int32)."""


class _KernelEngine:
    """The CUDA C kernels of CUDA_SOURCE, launched on the current torch stream."""

    def __init__(self, name: str, device: torch.device, kernels: dict[str, Launch], origin: str) -> None:
        self.name = name
        self.origin = origin
        """Where the kernels came from (a cache file, or compiled in this run)."""
        self._kernels = kernels
        self._sms = torch.cuda.get_device_properties(device).multi_processor_count
        self._dummy = torch.zeros(1, dtype=torch.int64, device=device)

    def update(self, s: DeviceStats, t: int, x: torch.Tensor) -> None:
        parts = [x[i:i + _CHUNK] for i in range(0, x.numel(), _CHUNK)]
        for part in parts:
            n = part.numel()
            blocks = max(1, min(math.ceil(n / (_THREADS * 8)), self._sms * 8))
            self._kernels["trtq_amax"]((blocks, 1, 1), (_THREADS, 1, 1),
                                       [part, n, int(part.data_ptr() % 16 == 0), t, s.batch_amax, s.batch_counts])
        if not s.histogram:
            return
        for part in parts:
            n = part.numel()
            blocks = max(1, min(math.ceil(n / (_THREADS * 16)), self._sms * 4))
            self._kernels["trtq_hist"]((blocks, 1, 1), (_THREADS, 1, 1),
                                       [part, n, int(part.data_ptr() % 16 == 0), t, s.hist_max, s.batch_amax, s.batch_hist])

    def finalize(self, s: DeviceStats) -> None:
        if not s.names:
            return
        hist, batch_hist = (s.hist, s.batch_hist) if s.histogram else (self._dummy, self._dummy)
        self._kernels["trtq_finalize"]((len(s.names), 1, 1), (_THREADS, 1, 1),
                                       [int(s.histogram), s.amax, s.hist_max, s.count, s.nan_count, hist,
                                        s.batch_amax, s.batch_counts, batch_hist])


def _nvrtc_kernels(device: torch.device) -> tuple[dict[str, Launch], str]:
    """The kernels built by NVRTC (one compile for all three), from trtq's disk cache when it has them."""
    loaded = load_kernels(CUDA_SOURCE, _SIGNATURES, device, "trtq-stats")
    if loaded.cached:
        origin = f"kernels from the cache in {loaded.path.parent if loaded.path else '?'}"
    else:
        where = f"cached in {loaded.path.parent}" if loaded.path else loaded.note
        origin = f"kernels compiled in {loaded.compile_seconds:.2f} s, {where}"
    return dict(loaded.kernels), origin


def _cupy_kernels(device: torch.device) -> tuple[dict[str, Launch], str]:
    """Kernels compiled by CuPy's NVRTC (CuPy keeps its own disk cache), launched on torch's current stream."""
    import cupy

    module = cupy.RawModule(code=CUDA_SOURCE)
    functions = {name: module.get_function(name) for name in _SIGNATURES}

    def launcher(fn: object) -> Launch:
        def launch(grid: tuple[int, int, int], block: tuple[int, int, int], args: Sequence[Any]) -> None:
            converted = tuple(np.uint64(a.data_ptr()) if isinstance(a, torch.Tensor) else np.int32(a) for a in args)
            current = torch.cuda.current_stream()
            from_external = getattr(cupy.cuda.Stream, "from_external", None)
            stream = from_external(current) if from_external else cupy.cuda.ExternalStream(current.cuda_stream)
            with stream:
                fn(grid, block, converted)  # type: ignore[operator]

        return launch

    return {name: launcher(fn) for name, fn in functions.items()}, "kernels from CuPy's cache or compiler"


def _make_engine(device: torch.device, engine: str | None) -> tuple[_TorchEngine | _KernelEngine, str]:
    """The requested engine, or the fastest that works on `device`, and why faster ones were skipped."""
    if engine is not None and engine not in ENGINES:
        raise ValueError(f"Unknown statistics engine {engine!r}; expected one of {ENGINES}.")
    if device.type != "cuda" or engine == "torch":
        return _TorchEngine(), ""
    order = [engine] if engine else ["nvrtc", "cupy"]
    errors: list[str] = []
    for name in order:
        try:
            with torch.cuda.device(device):
                kernels, origin = (_nvrtc_kernels if name == "nvrtc" else _cupy_kernels)(device)
                return _KernelEngine(name, device, kernels, origin), "; ".join(errors)
        except (ImportError, AttributeError, RuntimeError, OSError) as exc:  # no compiler: try the next engine
            errors.append(f"{name}: {type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}")
    if engine:
        raise RuntimeError(f"Statistics engine {engine!r} is unavailable ({'; '.join(errors)}).")
    return _TorchEngine(), "; ".join(errors)
