"""Training-step throughput and peak memory: ArrayGPT's own step on each backend against PyTorch autograd.

    python benchmarks/train_bench.py --device cpu                     # reference, baby, large; 5 contenders
    python benchmarks/train_bench.py --device cuda --json cuda.json   # + gpt2-small; 5 contenders
    python benchmarks/train_bench.py --device cpu --configs reference --contenders ours-numpy,torch-eager --rounds 5
    python benchmarks/train_bench.py --device cpu --configs gpt2-small --rounds 1   # batch 1 on the CPU
    python benchmarks/train_bench.py --device cuda --configs gpt2-small --precision bf16 --micro-batch 4

A step is forward + backward + global-norm clipping (5.0) + Adam (lr 1e-3) in float32, with the loss (mean
cross-entropy) on every position of a (B, T) batch of random tokens handed over as host NumPy int64 arrays.
``--precision fp16|bf16`` runs ours with ``TrainStep(precision=...)`` (float32 master weights) and the PyTorch
contenders under ``torch.autocast`` with the same dtype (fp16 with a GradScaler); ``--micro-batch M`` runs each
batch as slices of M sequences (ours: ``TrainStep(micro_batch=M)``; PyTorch: the same slices, gradients
accumulated, the loss of each slice weighted by its share). ``--batch B`` replaces every config's batch size;
gpt2-small runs on the CPU with batch 1 unless ``--batch`` says otherwise, so the path is exercised without a GPU.
Contenders:

    ours-numpy, ours-torch           --device cpu:  llm.TrainStep on the numpy / torch (CPU) backend (workers=1)
    ours-numpy-auto                  --device cpu:  llm.TrainStep(workers="auto") on numpy: the batch split across
                                     one thread per CPU (llm.parallel; the table names the number)
    ours-cupy, ours-torch:cuda       --device cuda: llm.TrainStep on cupy / torch:cuda, CUDA graphs off
    ours-torch:cuda+graphs           --device cuda: llm.TrainStep on torch:cuda, CUDA graphs on
    torch-eager                      PyTorch autograd, attention written out: scores, causal mask, softmax, matmul
    torch-sdpa                       the same with F.scaled_dot_product_attention(is_causal=True)

The PyTorch model is the project's: pre-LN blocks (h = x + attn(ln1(x)); out = h + ff(ln2(h))), learned token and
position embeddings, QKV projection without bias, output projection with bias, ReLU feed-forward with biases, final
LayerNorm, untied output head (V, C) with bias; weights N(0, 0.02), the residual projections (attention output and
second feed-forward layer) N(0, 0.02 / sqrt(2 L)) as in llm.GPT. Then clip_grad_norm_(params, 5.0) and
torch.optim.Adam(lr=1e-3) with its default (foreach on CUDA). Its batches are copied from host NumPy every step as
well (on CUDA pinned, non-blocking, as nanoGPT does). TF32 is off everywhere unless --tf32.

Every (config, contender) runs in its own fresh process (the script re-invokes itself with a hidden --worker
argument: OpenBLAS's spinning threads, allocator caches and CUDA state never leak into the next contender);
contenders are interleaved over --rounds and the medians reported. In a worker: build, --warmup steps (CUDA graph
capture happens there), synchronize, then --steps steps timed with perf_counter around the whole loop and a final
synchronize, divided by --steps. On Linux the worker also reads /proc/stat around that loop: a round in which other
processes kept more than 0.1 core busy is flagged, and left out of the median when a quiet round exists (a shared
2-core machine otherwise turns PyTorch's spinning thread pool into 10-40x slower steps). A library or device that
is missing is reported as skipped, never a crash.

On the CPU every round also runs a float32 GEMM probe in its own process (NumPy's BLAS, 1 thread and 2 threads,
best of a few n x n x n products): a 2-thread rate near the 1-thread one says the two vCPUs were sharing one core
during that round. The highest 2-thread rate of the run is the peak that MFU is measured against:

    model FLOPs per step = (6 * N_mm + 12 * L * C * T) * B * T

with N_mm the weights that take part in a matmul (L * (3C^2 + C^2 + 2 C d_ff) + C V: the blocks' projections
and the output head; embeddings are lookups), 6 = 2 (multiply-add) x 3 (forward, and backward to inputs and to
weights), and 12 L C T the attention scores and their weighted sum over every (query, key) pair, forward and
backward (nanoGPT's estimate_mfu; the causal half that is masked is counted too, as it is computed).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import statistics
import subprocess
import sys
import time
import traceback
from typing import Any, Callable

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RESULT_TAG = "TRAIN_BENCH_RESULT "

# name: (d_model, n_heads, n_layers, d_ff, T, V, batch)
CONFIGS: dict[str, tuple[int, int, int, int, int, int, int]] = {
    "reference": (128, 8, 3, 256, 80, 400, 16),  # the project's default model, T = max_seq_len
    "baby": (128, 4, 4, 512, 64, 65, 12),  # nanoGPT's Shakespeare-char "baby" shape
    "large": (384, 6, 6, 1536, 256, 65, 8),  # nanoGPT's Shakespeare-char model
    "gpt2-small": (768, 12, 12, 3072, 1024, 50304, 8),  # GPT-2 124M (vocab padded to 50304, untied head)
}
CPU_BATCH = {"gpt2-small": 1}  # on the CPU, unless --batch: a step of batch 8 would take minutes on 2 cores
PRECISIONS = ("fp32", "fp16", "bf16")

# ours-* contender -> (backend name, cuda_graphs, workers)
OURS = {
    "ours-numpy": ("numpy", "off", 1),
    "ours-numpy-auto": ("numpy", "off", "auto"),
    "ours-torch": ("torch", "off", 1),
    "ours-cupy": ("cupy", "off", 1),
    "ours-torch:cuda": ("torch:cuda", "off", 1),
    "ours-torch:cuda+graphs": ("torch:cuda", "on", 1),
}
PROBE = "gemm-probe"  # the CPU matmul probe's worker
RUSTGPT_TOKENS_PER_S = 7066  # RustGPT's release build on this machine, batch 1 (issue 9)
CONTENDERS = {
    "cpu": ["ours-numpy", "ours-numpy-auto", "ours-torch", "torch-eager", "torch-sdpa"],
    "cuda": ["ours-cupy", "ours-torch:cuda", "ours-torch:cuda+graphs", "torch-eager", "torch-sdpa"],
}
BASELINE = "torch-eager"
SDPA = "torch-sdpa"

# (warmup, steps) when not given: the default CPU run (3 configs x 4 contenders x 3 rounds) takes a few minutes on
# 2 cores; on a GPU process start and CUDA set-up dominate anyway.
DEFAULT_STEPS = {
    "cpu": {"reference": (5, 20), "baby": (5, 20), "large": (2, 5), "gpt2-small": (1, 2)},
    "cuda": {"reference": (5, 50), "baby": (5, 50), "large": (5, 30), "gpt2-small": (5, 20)},
}
N_BATCHES = 4  # distinct random batches, cycled
BUSY_CORES = 0.1  # other processes using more than this many cores during a timed loop: a busy round
LR = 1e-3
CLIP = 5.0


def dims(config: str, batch: int | None = None, device: str = "cuda") -> dict[str, int]:
    C, H, L, F, T, V, B = CONFIGS[config]
    if batch is None and device == "cpu":
        batch = CPU_BATCH.get(config)
    return {"d_model": C, "n_heads": H, "n_layers": L, "d_ff": F, "seq_len": T, "vocab": V,
            "batch": B if batch is None else batch}


def num_parameters(config: str) -> int:
    C, H, L, F, T, V, B = CONFIGS[config]
    block = 4 * C + 3 * C * C + C * C + C + C * F + F + F * C + C  # 2 norms, qkv, proj + b, fc1 + b, fc2 + b
    return V * C + T * C + L * block + 2 * C + V * C + V


def step_flops(config: str, batch: int | None = None) -> int:
    """Model FLOPs of one training step (see the module docstring): (6 N_mm + 12 L C T) * B * T."""
    C, H, L, F, T, V, B = CONFIGS[config]
    B = B if batch is None else batch
    n_mm = L * (3 * C * C + C * C + 2 * C * F) + C * V
    return (6 * n_mm + 12 * L * C * T) * B * T


# ------------------------------------------------------------------------------------------------- worker side
class Skip(Exception):
    """The contender's library or device is not available here: reported as skipped."""


def _batches(d: dict[str, int]) -> list[tuple[Any, Any]]:
    import numpy as np

    rng = np.random.default_rng(0)
    shape = (d["batch"], d["seq_len"])
    return [(rng.integers(0, d["vocab"], shape, dtype=np.int64), rng.integers(0, d["vocab"], shape, dtype=np.int64))
            for _ in range(N_BATCHES)]


def _rss_bytes() -> int:
    """Peak resident set size of this process so far (ru_maxrss: KiB on Linux, bytes on macOS)."""
    import resource

    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak if sys.platform == "darwin" else peak * 1024


def _cpu_seconds() -> tuple[float, float] | None:
    """(CPU seconds every process on the machine has used, this process's own); None where /proc/stat is missing."""
    import resource

    try:
        with open("/proc/stat") as f:
            fields = [int(x) for x in f.readline().split()[1:9]]
    except (OSError, ValueError):
        return None
    user, nice, system, idle, iowait, irq, softirq, steal = fields
    own = resource.getrusage(resource.RUSAGE_SELF)
    return (user + nice + system + irq + softirq + steal) / os.sysconf("SC_CLK_TCK"), own.ru_utime + own.ru_stime


def _timed(step: Callable[[Any, Any], Any], batches: list, warmup: int, steps: int, sync: Callable[[], None],
           before_timed: Callable[[], None] = lambda: None) -> dict[str, Any]:
    t0 = time.perf_counter()
    loss = None
    for i in range(warmup):
        loss = step(*batches[i % len(batches)])
    sync()
    warmup_s = time.perf_counter() - t0
    before_timed()
    sync()
    cpu0 = _cpu_seconds()
    t0 = time.perf_counter()
    for i in range(steps):
        loss = step(*batches[(warmup + i) % len(batches)])
    sync()
    seconds = time.perf_counter() - t0
    cpu1 = _cpu_seconds()
    out = {"step_s": seconds / steps, "warmup_s": warmup_s, "loss": float(loss)}
    if cpu0 and cpu1:  # cores that other processes (and the hypervisor's steal) kept busy during the timed loop
        out["foreign_cores"] = max(0.0, ((cpu1[0] - cpu0[0]) - (cpu1[1] - cpu0[1])) / seconds)
    return out


def _torch_setup(device: str, tf32: bool) -> Any:
    try:
        import torch
    except ImportError:
        raise Skip("PyTorch is not installed (pip install torch)") from None
    if device == "cuda" and not torch.cuda.is_available():
        raise Skip(f"PyTorch {torch.__version__} sees no CUDA device")
    torch.backends.cuda.matmul.allow_tf32 = tf32
    torch.backends.cudnn.allow_tf32 = tf32
    return torch


def _torch_info(torch: Any, device: str) -> dict[str, Any]:
    info = {"torch": torch.__version__}
    if device == "cuda":
        info |= {"gpu": torch.cuda.get_device_name(), "cuda": torch.version.cuda}
    else:
        info["torch_threads"] = torch.get_num_threads()
    return info


def _run_ours(spec: dict[str, Any]) -> dict[str, Any]:
    sys.path.insert(0, ROOT)
    import llm
    from backends import get_backend

    backend_name, graphs, workers = OURS[spec["contender"]]
    d, device, tf32 = spec["dims"], spec["device"], spec["tf32"]
    try:
        be = get_backend(backend_name, "float32")
    except llm.BackendUnavailableError as exc:
        raise Skip(str(exc)) from None
    info: dict[str, Any] = {"backend": str(be)}
    torch = None
    if backend_name.startswith("torch"):
        torch = _torch_setup(device, tf32)
        info |= _torch_info(torch, device)
    if backend_name == "cupy":
        import cupy

        props = cupy.cuda.runtime.getDeviceProperties(cupy.cuda.Device().id)
        name = props["name"]
        info |= {"cupy": cupy.__version__, "gpu": name.decode() if isinstance(name, bytes) else name,
                 "cuda_runtime": cupy.cuda.runtime.runtimeGetVersion(),
                 "CUPY_TF32": os.environ.get("CUPY_TF32", "")}
    rss_base = _rss_bytes()
    cfg = llm.GPTConfig(vocab_size=d["vocab"], d_model=d["d_model"], n_heads=d["n_heads"], n_layers=d["n_layers"],
                        d_ff=d["d_ff"], max_seq_len=d["seq_len"])
    model = llm.GPT(cfg, be, seed=0)
    opt = llm.Adam(model, lr=LR, clip_norm=CLIP)
    extra: dict[str, Any] = {}  # only what differs from the default, so the default step is the plain one
    if spec.get("precision", "fp32") != "fp32":
        extra["precision"] = spec["precision"]
    if spec.get("micro_batch"):
        extra["micro_batch"] = spec["micro_batch"]
    train_step = llm.TrainStep(model, opt, cuda_graphs=graphs, tf32=tf32, workers=workers, **extra)
    info["workers"] = train_step.workers

    def step(tokens: Any, targets: Any) -> Any:
        return train_step(tokens, targets, None, lr=LR)

    batches = _batches(d)
    on_cuda = device == "cuda"
    if torch is not None and on_cuda:
        out = _timed(step, batches, spec["warmup"], spec["steps"], be.synchronize, torch.cuda.reset_peak_memory_stats)
        out |= {"peak_bytes": torch.cuda.max_memory_allocated(), "reserved_bytes": torch.cuda.max_memory_reserved(),
                "mem_method": "torch.cuda.max_memory_allocated"}
    elif backend_name == "cupy":
        out = _timed(step, batches, spec["warmup"], spec["steps"], be.synchronize)
        out |= _cupy_peak(step, batches, be.synchronize)
    else:
        out = _timed(step, batches, spec["warmup"], spec["steps"], be.synchronize)
        out |= {"peak_bytes": _rss_bytes(), "rss_base_bytes": rss_base, "mem_method": "ru_maxrss"}
    return out | info


def _cupy_peak(step: Callable[[Any, Any], Any], batches: list, sync: Callable[[], None]) -> dict[str, Any]:
    """Peak bytes in use in CuPy's default pool over 2 more (untimed) steps.

    A set_allocator wrapper around the pool's malloc reads used_bytes() after every allocation: in-use memory only
    grows at an allocation, so this is the exact high-water mark of live arrays (what torch's max_memory_allocated
    reports), not the pool's cached total_bytes(). It runs after the timed loop so the wrapper's Python call per
    allocation never touches the timing.
    """
    import cupy

    pool = cupy.get_default_memory_pool()
    sync()
    peak = [pool.used_bytes()]

    def malloc(size: int) -> Any:
        mem = pool.malloc(size)
        used = pool.used_bytes()
        if used > peak[0]:
            peak[0] = used
        return mem

    cupy.cuda.set_allocator(malloc)
    try:
        for i in range(2):
            step(*batches[i % len(batches)])
        sync()
    finally:
        cupy.cuda.set_allocator(pool.malloc)
    return {"peak_bytes": peak[0], "reserved_bytes": pool.total_bytes(), "mem_method": "cupy pool used_bytes peak"}


def _torch_model(torch: Any, d: dict[str, int], sdpa: bool) -> Any:
    nn, F = torch.nn, torch.nn.functional
    C, H, L, Dff, T, V = d["d_model"], d["n_heads"], d["n_layers"], d["d_ff"], d["seq_len"], d["vocab"]
    D = C // H
    scale = 1.0 / math.sqrt(D)

    class Block(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.ln1, self.ln2 = nn.LayerNorm(C), nn.LayerNorm(C)
            self.qkv = nn.Linear(C, 3 * C, bias=False)
            self.proj = nn.Linear(C, C)
            self.fc1, self.fc2 = nn.Linear(C, Dff), nn.Linear(Dff, C)
            self.register_buffer("causal", torch.ones(T, T, dtype=torch.bool).triu(1), persistent=False)

        def attn(self, x: Any) -> Any:
            B, t, _ = x.shape
            q, k, v = self.qkv(x).view(B, t, 3, H, D).permute(2, 0, 3, 1, 4)  # (B, H, t, D) each
            if sdpa:
                y = F.scaled_dot_product_attention(q, k, v, is_causal=True)
            else:
                s = (q @ k.transpose(-2, -1)) * scale
                s = s.masked_fill(self.causal[:t, :t], float("-inf"))
                y = torch.softmax(s, dim=-1) @ v
            return self.proj(y.transpose(1, 2).reshape(B, t, C))

        def forward(self, x: Any) -> Any:
            h = x + self.attn(self.ln1(x))
            return h + self.fc2(F.relu(self.fc1(self.ln2(h))))

    class GPT(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.tok, self.pos = nn.Embedding(V, C), nn.Embedding(T, C)
            self.blocks = nn.ModuleList(Block() for _ in range(L))
            self.ln_f = nn.LayerNorm(C)
            self.head = nn.Linear(C, V)  # untied, weight (V, C), with bias
            for m in self.modules():
                if isinstance(m, (nn.Linear, nn.Embedding)):
                    nn.init.normal_(m.weight, 0.0, 0.02)
                    if getattr(m, "bias", None) is not None:
                        nn.init.zeros_(m.bias)
            for b in self.blocks:  # residual projections, as llm.GPT
                nn.init.normal_(b.proj.weight, 0.0, 0.02 / math.sqrt(2 * L))
                nn.init.normal_(b.fc2.weight, 0.0, 0.02 / math.sqrt(2 * L))

        def forward(self, tokens: Any, targets: Any) -> Any:
            x = self.tok(tokens) + self.pos.weight[: tokens.shape[1]]
            for b in self.blocks:
                x = b(x)
            logits = self.head(self.ln_f(x))
            return F.cross_entropy(logits.view(-1, V), targets.view(-1))

    return GPT()


def _run_torch(spec: dict[str, Any]) -> dict[str, Any]:
    device, d = spec["device"], spec["dims"]
    torch = _torch_setup(device, spec["tf32"])
    info = _torch_info(torch, device)
    dev = torch.device(device)
    torch.manual_seed(0)
    rss_base = _rss_bytes()
    model = _torch_model(torch, d, sdpa=spec["contender"] == "torch-sdpa").to(dev)
    params = list(model.parameters())
    opt = torch.optim.Adam(params, lr=LR)
    on_cuda = device == "cuda"

    def to_dev(a: Any) -> Any:
        t = torch.from_numpy(a)
        return t.pin_memory().to(dev, non_blocking=True) if on_cuda else t

    precision, micro = spec.get("precision", "fp32"), spec.get("micro_batch") or d["batch"]
    low = {"fp16": torch.float16, "bf16": torch.bfloat16}.get(precision)
    scaler = torch.amp.GradScaler(dev.type) if precision == "fp16" else None

    def step(tokens: Any, targets: Any) -> Any:
        tokens, targets = to_dev(tokens), to_dev(targets)
        opt.zero_grad(set_to_none=True)
        B, total = tokens.shape[0], 0.0
        for s in range(0, B, micro):  # one slice when there are no micro-batches
            share = min(micro, B - s) / B
            with torch.autocast(dev.type, dtype=low, enabled=low is not None):
                loss = model(tokens[s:s + micro], targets[s:s + micro]) * share
            (scaler.scale(loss) if scaler is not None else loss).backward()
            total = total + loss.detach()
        if scaler is not None:
            scaler.unscale_(opt)
        torch.nn.utils.clip_grad_norm_(params, CLIP)
        if scaler is not None:
            scaler.step(opt)
            scaler.update()
        else:
            opt.step()
        return total

    batches = _batches(d)
    if on_cuda:
        out = _timed(step, batches, spec["warmup"], spec["steps"], torch.cuda.synchronize,
                     torch.cuda.reset_peak_memory_stats)
        out |= {"peak_bytes": torch.cuda.max_memory_allocated(), "reserved_bytes": torch.cuda.max_memory_reserved(),
                "mem_method": "torch.cuda.max_memory_allocated"}
    else:
        out = _timed(step, batches, spec["warmup"], spec["steps"], lambda: None)
        out |= {"peak_bytes": _rss_bytes(), "rss_base_bytes": rss_base, "mem_method": "ru_maxrss"}
    return out | info


def _oom(exc: BaseException) -> bool:
    return "OutOfMemory" in type(exc).__name__ or "out of memory" in str(exc).lower()


def _run_probe(spec: dict[str, Any]) -> dict[str, Any]:
    """float32 GEMM rates (GFLOP/s) of NumPy's BLAS at 1 and 2 threads: the best of a few n^3 products each."""
    import numpy as np
    from threadpoolctl import threadpool_limits

    n = spec.get("n", 1024)
    rng = np.random.default_rng(0)
    a, b = rng.standard_normal((n, n), dtype=np.float32), rng.standard_normal((n, n), dtype=np.float32)
    out: dict[str, Any] = {"n": n}
    for threads in (1, 2, 1, 2):  # alternated, so a burst of load hits both
        with threadpool_limits(limits=threads, user_api="blas"):
            a @ b
            best = math.inf
            for _ in range(5):
                t0 = time.perf_counter()
                a @ b
                best = min(best, time.perf_counter() - t0)
        rate = 2 * n ** 3 / best / 1e9
        key = f"gflops_{threads}t"
        out[key] = max(out.get(key, 0.0), rate)
    return out


def worker(spec: dict[str, Any]) -> None:
    """Run one (config, contender) and print its result as one tagged JSON line on stdout."""
    run = _run_probe if spec["contender"] == PROBE else _run_ours if spec["contender"] in OURS else _run_torch
    try:
        result = {"status": "ok"} | run(spec)
    except Skip as exc:
        result = {"status": "skipped", "reason": str(exc)}
    except Exception as exc:  # reported, not raised: the other contenders still run
        traceback.print_exc()
        lines = str(exc).strip().splitlines()
        reason = f"{type(exc).__name__}: {lines[0] if lines else ''}"
        result = {"status": "failed", "reason": ("out of memory: " if _oom(exc) else "") + reason}
    print(RESULT_TAG + json.dumps(result), flush=True)


# ------------------------------------------------------------------------------------------------- parent side
def _versions() -> dict[str, str]:
    from importlib import metadata

    out = {"python": platform.python_version()}
    for dist in ("numpy", "torch", "array-api-compat", "array-api-strict"):
        try:
            out[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            pass
    for dist in metadata.distributions():
        name = (dist.metadata["Name"] or "").lower()
        if name.startswith("cupy"):
            out[name] = dist.version
    return out


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _blas() -> str | None:
    try:
        import numpy as np

        return np.__config__.CONFIG["Build Dependencies"]["blas"]["name"]
    except Exception:
        return None


def _nvidia_smi() -> list[str]:
    try:
        out = subprocess.run(["nvidia-smi", "--query-gpu=name,driver_version,memory.total", "--format=csv,noheader"],
                             capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired):
        return []
    return [line.strip() for line in out.stdout.splitlines() if line.strip()] if out.returncode == 0 else []


def machine() -> dict[str, Any]:
    try:
        usable = len(os.sched_getaffinity(0))
    except AttributeError:
        usable = os.cpu_count()
    return {"platform": platform.platform(), "cpu": _cpu_model(), "cpu_count": os.cpu_count(), "cpus_usable": usable,
            "blas": _blas(), "gpus": _nvidia_smi(), "versions": _versions()}


def run_worker(spec: dict[str, Any], timeout: float) -> dict[str, Any]:
    env = dict(os.environ)
    env["CUPY_TF32"] = "1" if spec["tf32"] else "0"
    cmd = [sys.executable, os.path.abspath(__file__), "--worker", json.dumps(spec)]
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=ROOT, timeout=timeout)
    except subprocess.TimeoutExpired:
        return {"status": "failed", "reason": f"timed out after {timeout:.0f} s"}
    for line in reversed(proc.stdout.splitlines()):
        if line.startswith(RESULT_TAG):
            result = json.loads(line[len(RESULT_TAG):])
            if result["status"] == "failed":
                sys.stderr.write(proc.stderr)
            return result
    tail = proc.stderr.strip().splitlines()[-1:] or [f"exit code {proc.returncode}"]
    return {"status": "failed", "reason": f"worker died (exit code {proc.returncode}): {tail[0]}"}


def _mib(n: float) -> str:
    return f"{n / 2**20:,.0f} MiB"


def _label(name: str, r: dict[str, Any]) -> str:
    workers = {run.get("workers") for run in r.get("runs", [])} - {None, 1}
    return name + (f" (workers={'/'.join(str(w) for w in sorted(workers))})" if workers else "")


def report(mach: dict[str, Any], args: argparse.Namespace, configs: list[str], contenders: list[str],
           rows: dict[tuple[str, str], dict[str, Any]], probes: list[dict[str, Any]] | None = None) -> str:
    probes = probes or []
    peak = max((p["gflops_2t"] for p in probes), default=None)
    v = mach["versions"]
    precision = "float32" if args.precision == "fp32" else f"{args.precision} with float32 master weights"
    micro = f", micro-batches of {args.micro_batch}" if args.micro_batch else ""
    lines = [f"## Training step: {args.device}, {precision}{micro}, TF32 {'on' if args.tf32 else 'off'}", "",
             f"- machine: {mach['platform']}; {mach['cpu']}; {mach['cpu_count']} CPUs "
             f"({mach['cpus_usable']} usable)" + (f"; NumPy BLAS {mach['blas']}" if mach["blas"] else "")]
    gpus = mach["gpus"] or sorted({r["gpu"] for rs in rows.values() for r in rs.get("runs", []) if "gpu" in r})
    if gpus:
        lines.append(f"- GPU: {'; '.join(gpus)}")
    cuda = sorted({f"torch CUDA {r['cuda']}" for rs in rows.values() for r in rs.get("runs", []) if r.get("cuda")}
                  | {f"CuPy CUDA runtime {r['cuda_runtime']}" for rs in rows.values() for r in rs.get("runs", [])
                     if r.get("cuda_runtime")})
    lines.append("- versions: " + ", ".join(f"{k} {val}" for k, val in v.items()) + (f"; {', '.join(cuda)}"
                                                                                      if cuda else ""))
    lines.append(f"- {args.rounds} round(s), contenders interleaved, each run in a fresh process; "
                 "step time = median over rounds")
    for c in configs:
        d = dims(c, args.batch, args.device)
        w, s = steps_for(args, c)
        lines.append(f"- {c}: d_model {d['d_model']}, {d['n_heads']} heads, {d['n_layers']} layers, d_ff {d['d_ff']}, "
                     f"T {d['seq_len']}, V {d['vocab']}, batch {d['batch']} ({d['batch'] * d['seq_len']:,} tokens a "
                     f"step, {num_parameters(c):,} parameters); {w} warm-up + {s} timed steps")
    if probes:
        lines.append("- float32 GEMM probe (NumPy BLAS, " + str(probes[0]["n"]) + "^3, best of 5), per round, 1 thread / "
                     "2 threads GFLOP/s: " + "; ".join(f"{p['gflops_1t']:.0f} / {p['gflops_2t']:.0f} "
                                                       f"({p['gflops_2t'] / p['gflops_1t']:.2f}x)" for p in probes)
                     + f"; peak (the highest 2-thread rate) {peak:.0f} GFLOP/s")
    lines += ["", "| config | contender | ms/step | min–max ms | tokens/s | vs torch-eager | vs torch-sdpa | MFU | "
              "peak memory | final loss |", "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
    notes = []
    for c in configs:
        d = dims(c, args.batch, args.device)
        tokens = d["batch"] * d["seq_len"]
        base = rows.get((c, BASELINE), {})
        base_ms = base.get("median_ms")
        sdpa_ms = rows.get((c, SDPA), {}).get("median_ms")
        for name in contenders:
            r = rows.get((c, name), {})
            if r.get("status") != "ok":
                reason = r.get("reason", "not run")
                lines.append(f"| {c} | {name} | {r.get('status', 'not run')} | | | | | | | |")
                note = f"{name}: {r.get('status', 'not run')}: {reason}"
                if note not in notes:
                    notes.append(note)
                continue
            ratio = f"{base_ms / r['median_ms']:.2f}x" if base_ms else "—"
            ratio_sdpa = f"{sdpa_ms / r['median_ms']:.2f}x" if sdpa_ms else "—"
            flops = step_flops(c, dims(c, args.batch, args.device)["batch"])
            mfu = f"{flops / (r['median_ms'] / 1e3) / (peak * 1e9):.0%}" if peak and args.device == "cpu" else "—"
            mem = _mib(r["peak_bytes"])
            if r.get("rss_base_bytes") is not None:
                mem += f" (+{r['peak_bytes'] / 2**20 - r['rss_base_bytes'] / 2**20:,.0f})"
            busy = " (busy)" if r["all_busy"] else f" ({r['busy_rounds']} busy dropped)" if r["busy_rounds"] else ""
            lines.append(f"| {c} | {_label(name, r)} | {r['median_ms']:.2f} | {min(r['ms']):.2f}–{max(r['ms']):.2f}"
                         f"{busy} | {tokens / (r['median_ms'] / 1e3):,.0f} | {ratio} | {ratio_sdpa} | {mfu} | {mem} | "
                         f"{r['loss']:.3f} |")
    lines += ["", "- ms/step: perf_counter around the timed loop, after the warm-up steps and a device synchronize, "
              "with a synchronize at its end, divided by the step count; tokens/s = batch × T / median step time; "
              "vs torch-eager / vs torch-sdpa = that contender's median step time / this contender's (> 1: faster)."]
    if peak and args.device == "cpu":
        lines.append(f"- MFU: model FLOPs per step (6 N_mm + 12 L C T) B T / median step time / {peak:.0f} GFLOP/s, "
                     "the float32 GEMM peak measured in this run; FLOPs per step: " +
                     ", ".join(f"{c} {step_flops(c, dims(c, args.batch, args.device)['batch']) / 1e9:.1f} G"
                               for c in configs))
    if "reference" in configs:
        ref_tokens = dims("reference", args.batch, args.device)["batch"] * dims("reference", args.batch, args.device)["seq_len"]
        best = [(rows[("reference", n)]["median_ms"], n) for n in contenders
                if n.startswith("ours") and rows.get(("reference", n), {}).get("status") == "ok"]
        if best:
            ms, n = min(best)
            tps = ref_tokens / (ms / 1e3)
            lines.append(f"- reference, {n}: {tps:,.0f} training tokens/s = {tps / RUSTGPT_TOKENS_PER_S:.1f}x "
                         f"RustGPT's {RUSTGPT_TOKENS_PER_S:,} (its release build on this machine, batch 1)")
    if args.device == "cpu":
        lines.append("- peak memory: peak RSS of the whole worker process (getrusage ru_maxrss), interpreter and "
                     "libraries included (importing PyTorch adds a couple of hundred MiB by itself); in parentheses "
                     "the growth over the peak RSS after the imports, before the model was built.")
    else:
        lines.append("- peak memory: torch contenders and ours-torch:cuda*: torch.cuda.max_memory_allocated() over "
                     "the timed steps (reset_peak_memory_stats() before them; CUDA-graph pools included). ours-cupy: "
                     "the highest used_bytes() of CuPy's default memory pool seen at any allocation (a "
                     "cupy.cuda.set_allocator wrapper around the pool's malloc) over 2 extra untimed steps, so the "
                     "same quantity: bytes of live arrays, not the pool's cached blocks (its total_bytes(), like "
                     "torch's max_memory_reserved(), is in --json as reserved_bytes). Neither counts the CUDA context.")
    foreign = [r["foreign_cores"] for row in rows.values() for r in row.get("runs", []) if "foreign_cores" in r]
    if foreign and max(foreign) > BUSY_CORES:
        lines.append(f"- busy rounds: other processes kept up to {max(foreign):.1f} cores busy during some timed loops "
                     f"(CPU time in /proc/stat minus the worker's own; over {BUSY_CORES} cores counts as busy). A "
                     "contender's busy rounds are left out of its median when it has a quiet one; \"(busy)\" marks "
                     "one with no quiet round, whose time is not trustworthy: rerun on a quiet machine.")
    lines.append("- final loss: mean cross-entropy at the last timed step, a sanity check (the same random batches "
                 "for every contender; it starts near ln V).")
    if notes:
        lines += ["", *[f"- {n}" for n in notes]]
    return "\n".join(lines)


def steps_for(args: argparse.Namespace, config: str) -> tuple[int, int]:
    warm, steps = DEFAULT_STEPS[args.device][config]
    return (warm if args.warmup is None else args.warmup), (steps if args.steps is None else args.steps)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    ap.add_argument("--configs", help="comma list of " + ", ".join(CONFIGS) +
                    " (default reference,baby,large, + gpt2-small on cuda; gpt2-small is cuda only)")
    ap.add_argument("--contenders", help="comma list (default: all of the device's): cpu: " +
                    ", ".join(CONTENDERS["cpu"]) + "; cuda: " + ", ".join(CONTENDERS["cuda"]))
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--warmup", type=int, help="untimed steps before timing (default 5; 2 for large on cpu)")
    ap.add_argument("--steps", type=int, help="timed steps (default: cpu 20, large 5; cuda 50, large 30, "
                                              "gpt2-small 20)")
    ap.add_argument("--tf32", action="store_true", help="allow TF32 matmuls (torch flags, CUPY_TF32=1, tf32=True "
                                                        "for TrainStep); off by default")
    ap.add_argument("--precision", choices=PRECISIONS, default="fp32",
                    help="fp32 (default); fp16 or bf16: ours with TrainStep(precision=...), PyTorch under autocast")
    ap.add_argument("--micro-batch", type=int, metavar="M", help="run each batch as slices of M sequences")
    ap.add_argument("--batch", type=int, metavar="B", help="batch size of every config (default: each config's; "
                                                           "gpt2-small on cpu: 1)")
    ap.add_argument("--json", metavar="PATH", help="also write every run's numbers here")
    ap.add_argument("--timeout", type=float, default=1800.0, help="seconds per worker process (default 1800)")
    ap.add_argument("--no-probe", action="store_true", help="cpu: skip the 1- vs 2-thread GEMM probe (and MFU)")
    ap.add_argument("--worker", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        worker(json.loads(args.worker))
        return

    default_configs = ["reference", "baby", "large"] + (["gpt2-small"] if args.device == "cuda" else [])
    configs = args.configs.split(",") if args.configs else default_configs
    for c in configs:
        if c not in CONFIGS:
            ap.error(f"unknown config {c!r}: choose from {', '.join(CONFIGS)}")
    if (args.batch is not None and args.batch < 1) or (args.micro_batch is not None and args.micro_batch < 1):
        ap.error("--batch and --micro-batch must be >= 1")
    contenders = args.contenders.split(",") if args.contenders else list(CONTENDERS[args.device])
    for n in contenders:
        if n not in CONTENDERS[args.device]:
            ap.error(f"unknown contender {n!r} for --device {args.device}: choose from "
                     f"{', '.join(CONTENDERS[args.device])}")
    if args.rounds < 1 or (args.steps is not None and args.steps < 1) or (args.warmup is not None and args.warmup < 0):
        ap.error("--rounds and --steps must be >= 1, --warmup >= 0")

    rows: dict[tuple[str, str], dict[str, Any]] = {(c, n): {"runs": []} for c in configs for n in contenders}
    dead: dict[str, dict[str, Any]] = {}  # contender -> skip result (its library or device is missing)
    t_start = time.perf_counter()
    probes: list[dict[str, Any]] = []
    for rnd in range(args.rounds):
        if args.device == "cpu" and not args.no_probe:
            result = run_worker({"contender": PROBE, "device": "cpu", "tf32": False}, args.timeout)
            if result["status"] == "ok":
                probes.append(result)
                msg = f"1 thread {result['gflops_1t']:.0f} GFLOP/s, 2 threads {result['gflops_2t']:.0f} GFLOP/s"
            else:
                msg = f"{result['status']}: {result.get('reason', '')}"
            print(f"[round {rnd + 1}/{args.rounds}, {time.perf_counter() - t_start:6.0f} s] {'probe':>10} "
                  f"{'float32 GEMM ' + str(result.get('n', '')) + '^3':<22} {msg}", file=sys.stderr, flush=True)
        for c in configs:
            warm, steps = steps_for(args, c)
            for n in contenders:
                row = rows[(c, n)]
                if n in dead:
                    row |= dead[n]
                    continue
                if row.get("status") in ("failed", "skipped"):
                    continue
                spec = {"contender": n, "config": c, "dims": dims(c, args.batch, args.device), "device": args.device,
                        "warmup": warm, "steps": steps, "tf32": args.tf32, "precision": args.precision,
                        "micro_batch": args.micro_batch}
                result = run_worker(spec, args.timeout)
                if result["status"] == "skipped":
                    dead[n] = {"status": "skipped", "reason": result["reason"]}
                    row |= dead[n]
                    msg = f"skipped: {result['reason']}"
                elif result["status"] == "failed":
                    row |= {"status": "failed", "reason": result["reason"]}
                    msg = f"FAILED: {result['reason']}"
                else:
                    row["runs"].append(result)
                    msg = f"{result['step_s'] * 1e3:8.2f} ms/step, peak {_mib(result['peak_bytes'])}, " \
                          f"loss {result['loss']:.3f}"
                    if result.get("foreign_cores", 0.0) > BUSY_CORES:
                        msg += f"  (busy machine: other processes used {result['foreign_cores']:.1f} cores)"
                print(f"[round {rnd + 1}/{args.rounds}, {time.perf_counter() - t_start:6.0f} s] {c:>10} "
                      f"{n:<22} {msg}", file=sys.stderr, flush=True)
    for row in rows.values():
        if row.get("status") is None and row["runs"]:
            # Rounds during which other processes kept the CPUs busy are dropped when a quiet round exists.
            quiet = [r for r in row["runs"] if r.get("foreign_cores", 0.0) <= BUSY_CORES]
            used = quiet or row["runs"]
            ms = [r["step_s"] * 1e3 for r in used]
            row |= {"status": "ok", "ms": ms, "median_ms": statistics.median(ms),
                    "peak_bytes": statistics.median(r["peak_bytes"] for r in used), "loss": used[-1]["loss"],
                    "busy_rounds": len(row["runs"]) - len(quiet), "all_busy": not quiet}
            base = [r["rss_base_bytes"] for r in used if r.get("rss_base_bytes") is not None]
            if base:
                row["rss_base_bytes"] = statistics.median(base)
    mach = machine()
    print(report(mach, args, configs, contenders, rows, probes))
    if args.json:
        out = {"machine": mach, "args": {k: val for k, val in vars(args).items() if k != "worker"}, "results": [],
               "gemm_probes": probes}
        for (c, n), row in rows.items():
            d = dims(c, args.batch, args.device)
            tokens = d["batch"] * d["seq_len"]
            base = rows.get((c, BASELINE), {}).get("median_ms")
            entry = {"config": c, "dims": d, "contender": n, "warmup_steps": steps_for(args, c)[0],
                     "timed_steps": steps_for(args, c)[1], **row}
            if row.get("status") == "ok":
                entry |= {"tokens_per_s": tokens / (row["median_ms"] / 1e3),
                          "speed_vs_torch_eager": base / row["median_ms"] if base else None}
            out["results"].append(entry)
        with open(args.json, "w") as f:
            json.dump(out, f, indent=1)
        print(f"\nwrote {args.json}", file=sys.stderr)


if __name__ == "__main__":
    main()
