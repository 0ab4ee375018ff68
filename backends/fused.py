"""Fused fast paths for hot operations, beside the plain array-API versions in ``llm/`` that stay the reference.

On CuPy a small model's step is launch-bound: each array operation costs ~10-30 us of host time however little it
computes. The operations below run as one kernel each instead of five to forty:

    adam_update        Adam + clipping + the finite guard + weight decay over the flat buffers   (~35 ops -> 1)
    softmax_rows       attention's scale + causal bias + max-subtracted softmax over the last axis  (7 -> 1)
    softmax_backward   ds = p * (dp - r) in place                                                   (2 -> 1)
    layernorm_forward  mean, variance, normalize, scale and shift of each row                        (9 -> 1)
    layernorm_backward the input gradient of each row                                               (8 -> 1)

``fast_path(name, like)`` returns the kernel for arrays like `like`, or None: the caller then runs the reference.
Only CuPy on NVIDIA GPUs has entries (torch:cuda gets its speed from CUDA graphs instead; on ROCm the reference
runs). ``ARRAYGPT_FUSED=0`` in the environment,
or ``with reference_only():``, turns every fast path off: the parity tests compare the two ways on the same data.
Every kernel expects C-contiguous inputs and makes them so.
"""

from __future__ import annotations

import contextlib
import os
from typing import Any, Callable, Iterator

import array_api_compat as compat

__all__ = ["fast_path", "reference_only", "fused_enabled"]

_DISABLED = [False]


def fused_enabled() -> bool:
    """False under ``ARRAYGPT_FUSED=0`` or inside ``reference_only()``."""
    return not _DISABLED[0] and os.environ.get("ARRAYGPT_FUSED", "1") != "0"


@contextlib.contextmanager
def reference_only() -> Iterator[None]:
    """Within this block every fast path is off and the array-API reference runs."""
    saved = _DISABLED[0]
    _DISABLED[0] = True
    try:
        yield
    finally:
        _DISABLED[0] = saved


def _on_rocm() -> bool:
    """Whether CuPy runs on AMD's ROCm (HIP): there a wavefront is 64 lanes, and the kernels below reduce within
    32-lane warps with ``__shfl_down_sync``, so they are not used (the array-API reference runs instead)."""
    if not hasattr(_on_rocm, "value"):
        import cupy

        _on_rocm.value = bool(getattr(cupy.cuda.runtime, "is_hip", False))
    return _on_rocm.value


def fast_path(name: str, like: Any) -> Callable[..., Any] | None:
    """The fused kernel `name` for arrays like `like`, or None where there is none (or fast paths are off)."""
    if not fused_enabled() or not compat.is_cupy_array(like) or _on_rocm():
        return None
    if like.dtype.kind == "f" and like.dtype.itemsize < 4:  # float16 (mixed precision): no kernel, the reference
        return None
    return _CUPY.get(name)


# -- CuPy kernels -------------------------------------------------------------------------------------------------
# Each kernel is compiled on first use (CuPy caches the binary on disk) for float32 and float64: REAL is replaced.

_BLOCK = 128  # threads per row; rows are 80..1024 long here

_REDUCE = r"""
#define NEG_BIG (-3.0e38)
__device__ REAL block_reduce(REAL v, REAL* shared, bool is_max) {
    for (int o = 16; o > 0; o >>= 1) {
        REAL w = __shfl_down_sync(0xffffffff, v, o);
        v = is_max ? fmax(v, w) : v + w;
    }
    int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    if (lane == 0) shared[warp] = v;
    __syncthreads();
    int n_warps = (blockDim.x + 31) >> 5;
    if (warp == 0) {
        v = lane < n_warps ? shared[lane] : (is_max ? (REAL)NEG_BIG : (REAL)0);
        for (int o = 16; o > 0; o >>= 1) {
            REAL w = __shfl_down_sync(0xffffffff, v, o);
            v = is_max ? fmax(v, w) : v + w;
        }
        if (lane == 0) shared[0] = v;
    }
    __syncthreads();
    REAL r = shared[0];
    __syncthreads();
    return r;
}
"""

_SOFTMAX = _REDUCE + r"""
// out[row, j] = softmax_j(s[row, j] * scale + bias[row % n_bias_rows, j]); one block per row of length n
extern "C" __global__ void softmax_rows(const REAL* s, const REAL* bias, REAL* out, int n, int n_bias_rows,
                                        REAL scale) {
    __shared__ REAL shared[32];
    const long row = blockIdx.x;
    const REAL* x = s + row * n;
    const REAL* b = bias + (row % n_bias_rows) * (long)n;
    REAL* y = out + row * n;
    REAL m = NEG_BIG;
    for (int j = threadIdx.x; j < n; j += blockDim.x) m = fmax(m, x[j] * scale + b[j]);
    m = block_reduce(m, shared, true);
    REAL total = 0;
    for (int j = threadIdx.x; j < n; j += blockDim.x) {
        REAL e = exp(x[j] * scale + b[j] - m);
        y[j] = e;
        total += e;
    }
    total = block_reduce(total, shared, false);
    REAL inv = (REAL)1 / total;
    for (int j = threadIdx.x; j < n; j += blockDim.x) y[j] *= inv;
}
"""

_LAYERNORM = _REDUCE + r"""
// Per row of x (N, C): xhat = (x - mean) * rstd, y = xhat * gamma + beta; rstd (N,) is written too.
extern "C" __global__ void layernorm_forward(const REAL* x, const REAL* gamma, const REAL* beta, REAL* y,
                                             REAL* xhat, REAL* rstd, int c, REAL eps) {
    __shared__ REAL shared[32];
    const long row = blockIdx.x;
    const REAL* xr = x + row * c;
    REAL total = 0;
    for (int j = threadIdx.x; j < c; j += blockDim.x) total += xr[j];
    const REAL mean = block_reduce(total, shared, false) / c;
    REAL sq = 0;
    for (int j = threadIdx.x; j < c; j += blockDim.x) { REAL d = xr[j] - mean; sq += d * d; }
    const REAL r = (REAL)1 / sqrt(block_reduce(sq, shared, false) / c + eps);
    for (int j = threadIdx.x; j < c; j += blockDim.x) {
        REAL h = (xr[j] - mean) * r;
        xhat[row * c + j] = h;
        y[row * c + j] = h * gamma[j] + beta[j];
    }
    if (threadIdx.x == 0) rstd[row] = r;
}

// dx = rstd * (g - mean(g) - xhat * mean(g * xhat)) with g = dout * gamma, per row.
extern "C" __global__ void layernorm_backward(const REAL* dout, const REAL* xhat, const REAL* rstd,
                                              const REAL* gamma, REAL* dx, int c) {
    __shared__ REAL shared[32];
    const long row = blockIdx.x;
    REAL a = 0, b = 0;
    for (int j = threadIdx.x; j < c; j += blockDim.x) {
        REAL g = dout[row * c + j] * gamma[j];
        a += g;
        b += g * xhat[row * c + j];
    }
    a = block_reduce(a, shared, false) / c;
    b = block_reduce(b, shared, false) / c;
    const REAL r = rstd[row];
    for (int j = threadIdx.x; j < c; j += blockDim.x) {
        REAL g = dout[row * c + j] * gamma[j];
        dx[row * c + j] = r * (g - a - xhat[row * c + j] * b);
    }
}
"""

_KERNELS: dict[tuple[str, str], Any] = {}


def _raw(source: str, name: str, dtype: Any) -> Any:
    import cupy

    real = {"float32": "float", "float64": "double"}[str(dtype)]
    key = (name, real)
    kernel = _KERNELS.get(key)
    if kernel is None:
        kernel = _KERNELS[key] = cupy.RawKernel(source.replace("REAL", real), name)
    return kernel


def _scalar(dtype: Any, value: float) -> Any:
    import numpy as np

    return np.dtype(str(dtype)).type(value)


def _softmax_rows(s: Any, bias: Any, scale: float) -> Any:
    # s: (..., n) scores; bias: (T_q, n), added to row r as bias[r % T_q] -> softmax over the last axis (new array)
    import cupy

    s = cupy.ascontiguousarray(s)
    bias = cupy.ascontiguousarray(bias)
    n = s.shape[-1]
    out = cupy.empty_like(s)
    rows = s.size // n
    _raw(_SOFTMAX, "softmax_rows", s.dtype)((rows,), (_BLOCK,), (s, bias, out, cupy.int32(n),
                                                                 cupy.int32(bias.size // n), _scalar(s.dtype, scale)))
    return out


def _softmax_backward(ds: Any, p: Any, r: Any) -> Any:
    # ds <- p * (ds - r), in place; r broadcasts over the last axis
    _elementwise("softmax_backward", "T p, T r", "T ds", "ds = p * (ds - r)")(p, r, ds)
    return ds


def _layernorm_forward(x: Any, gamma: Any, beta: Any, eps: float) -> tuple[Any, Any, Any]:
    # x: (N, C) -> y, xhat (N, C), rstd (N, 1)
    import cupy

    x = cupy.ascontiguousarray(x)
    N, C = x.shape
    y, xhat = cupy.empty_like(x), cupy.empty_like(x)
    rstd = cupy.empty((N, 1), dtype=x.dtype)
    _raw(_LAYERNORM, "layernorm_forward", x.dtype)((N,), (_BLOCK,), (x, cupy.ascontiguousarray(gamma),
                                                                     cupy.ascontiguousarray(beta), y, xhat, rstd,
                                                                     cupy.int32(C), _scalar(x.dtype, eps)))
    return y, xhat, rstd


def _layernorm_backward(dout: Any, xhat: Any, rstd: Any, gamma: Any) -> Any:
    # dout, xhat: (N, C), rstd: (N, 1) -> dx (N, C)
    import cupy

    dout = cupy.ascontiguousarray(dout)
    N, C = dout.shape
    dx = cupy.empty_like(dout)
    _raw(_LAYERNORM, "layernorm_backward", dout.dtype)((N,), (_BLOCK,), (dout, cupy.ascontiguousarray(xhat),
                                                                         cupy.ascontiguousarray(rstd),
                                                                         cupy.ascontiguousarray(gamma), dx,
                                                                         cupy.int32(C)))
    return dx


_ADAM = r"""
// Device scalars: norm (the global gradient norm), lr, t (Adam's step count, this step included when it counts).
double ok = isfinite((double)norm) ? 1.0 : 0.0;
double scale = ok;
if (clip > 0) { double raw = clip / ((double)norm + 1e-6); scale = ok * (raw < 1.0 ? raw : 1.0); }
double gg = ok > 0 ? (double)g * scale : 0.0;
double tt = (double)t + (1.0 - ok);
double bc1 = 1.0 - pow(b1, tt), bc2 = 1.0 - pow(b2, tt);
double step = (double)lr * ok * sqrt(bc2) / bc1;
double eps_hat = eps * sqrt(bc2);
double mm = (double)m * (1.0 - (1.0 - b1) * ok) + (1.0 - b1) * gg;
double vv = (double)v * (1.0 - (1.0 - b2) * ok) + (1.0 - b2) * gg * gg;
double pp = (double)p;
if (i < n_decay) pp *= 1.0 - (double)lr * ok * wd;
m = mm;
v = vv;
p = pp - step * mm / (sqrt(vv) + eps_hat);
"""


def _adam_update(p: Any, g: Any, m: Any, v: Any, norm: Any, lr: Any, t: Any, *, clip: float | None, b1: float,
                 b2: float, eps: float, weight_decay: float, n_decay: int) -> None:
    # The whole update of llm.optim.Adam.step_device after its bookkeeping, over the flat (P,) buffers, in place.
    import cupy

    kernel = _elementwise("adam_update", "T g, T norm, T lr, T t, float64 clip, float64 b1, float64 b2, "
                          "float64 eps, float64 wd, int64 n_decay", "T p, T m, T v", _ADAM)
    kernel(g, norm, lr, t, cupy.float64(clip or 0.0), cupy.float64(b1), cupy.float64(b2), cupy.float64(eps),
           cupy.float64(weight_decay), cupy.int64(n_decay), p, m, v)


_ELEMENTWISE: dict[str, Any] = {}


def _elementwise(name: str, in_params: str, out_params: str, body: str) -> Any:
    import cupy

    kernel = _ELEMENTWISE.get(name)
    if kernel is None:
        kernel = _ELEMENTWISE[name] = cupy.ElementwiseKernel(in_params, out_params, body, "arraygpt_" + name)
    return kernel


_CUPY: dict[str, Callable[..., Any]] = {
    "adam_update": _adam_update,
    "softmax_rows": _softmax_rows,
    "softmax_backward": _softmax_backward,
    "layernorm_forward": _layernorm_forward,
    "layernorm_backward": _layernorm_backward,
}
