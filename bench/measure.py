"""How the harness measures speed and memory: synchronised steps, their spread, copy bandwidth,
peak memory. (Agreement with the float64 reference is lossbench.bench.agreement's.)

Every figure says what it counts:
- time: one call of the step, the device synchronised inside it (pytest-benchmark's median and
  its 20th and 80th percentiles), and on a GPU also triton.testing.do_bench's (CUDA events, L2
  flushed between calls);
- bandwidth: ``lossbench.bench.cases.bytes_moved`` over that time, and its fraction of the
  device-to-device copy bandwidth measured in the same session (``copy_bandwidth``);
- compute (the linear loss): ``lossbench.bench.cases.model_flops`` over that time, and its
  fraction of the matmul throughput measured in the same session (``matmul_throughput``);
- memory: the peak allocated during one step beyond what was allocated before it (the inputs).
"""

from __future__ import annotations

import math
import statistics
import time
from collections.abc import Callable, Iterator

import torch

from lossbench.bench.agreement import CHECK_CHUNK_ELEMENTS, GRADIENT_CHECK_ELEMENTS
from lossbench.bench.cases import INDEX_BYTES, Case, Preset
from lossbench.bench.implementations import Implementation

Step = Callable[[], None]


def synchronize(device: torch.device) -> None:
    """Wait for the device's queued work (a no-op on the CPU, where ops run synchronously)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def make_step(
    implementation: Implementation,
    inputs: tuple[torch.Tensor, ...],
    target: torch.Tensor,
    pass_: str,
    synchronized: bool = True,
) -> Step:
    """One call of the pass on ``inputs`` (the logits, or the linear loss's hidden states and
    classifier), ending with a device synchronisation when ``synchronized``.

    forward: the loss of inputs that do not require a gradient (inference).
    forward_backward: the loss, then backward into each input's ``.grad``, which the caller sets
    to None before each step, as optimizer.zero_grad() does, so every step allocates fresh
    gradients exactly as a training step does.
    Unsynchronised steps are for do_bench, which brackets each call with CUDA events.
    """
    function = implementation.function
    device = target.device
    if pass_ == "forward":

        def call() -> None:
            function(*inputs, target)

    else:

        def call() -> None:
            function(*inputs, target).backward()

    if not synchronized:
        return call

    def step() -> None:
        call()
        synchronize(device)

    return step


def time_once(step: Step) -> float:
    """Seconds one call of ``step`` takes (it synchronises itself)."""
    start = time.perf_counter()
    step()
    return time.perf_counter() - start


def timing_rounds(preset: Preset, call_s: float) -> int:
    """Rounds that fill the preset's timing budget at ``call_s`` per call, within its bounds."""
    wanted = math.ceil(preset.timing_budget_s / max(call_s, 1e-9))
    return max(preset.min_rounds, min(preset.max_rounds, wanted))


# The spread every time is reported with: the 20th and 80th percentiles of the timed calls, as
# Liger-Kernel's benchmarks keep them beside the median.
SPREAD_QUANTILES = (0.2, 0.8)


def spread(seconds: list[float]) -> tuple[float, float]:
    """The 20th and 80th percentiles of ``seconds`` (linear interpolation between calls)."""
    ordered = sorted(seconds)

    def quantile(q: float) -> float:
        position = q * (len(ordered) - 1)
        low = math.floor(position)
        high = min(low + 1, len(ordered) - 1)
        return ordered[low] + (ordered[high] - ordered[low]) * (position - low)

    return quantile(SPREAD_QUANTILES[0]), quantile(SPREAD_QUANTILES[1])


def do_bench_ms(
    step: Step, inputs: tuple[torch.Tensor, ...], rep_ms: float
) -> tuple[float, float, float]:
    """triton.testing.do_bench's median, 20th and 80th percentiles (ms) of an unsynchronised
    ``step`` on a GPU: CUDA events around each call, L2 flushed before it.

    The gradients of ``inputs`` are set to None before every call, outside the timed region.
    """
    from triton.testing import do_bench

    grad_to_none = [tensor for tensor in inputs if tensor.requires_grad] or None
    median, low, high = do_bench(
        step,
        warmup=rep_ms / 4,
        rep=rep_ms,
        grad_to_none=grad_to_none,
        quantiles=[0.5, *SPREAD_QUANTILES],
    )
    return median, low, high


def copy_bandwidth(device: torch.device) -> float:
    """Bytes per second of a large device-to-device copy, counting bytes read plus written.

    A GPU copies 1 GiB with do_bench's median; the CPU copies 256 MiB, median of 5 after one
    untimed copy (which faults the pages in).
    """
    if device.type == "cuda":
        from triton.testing import do_bench

        source = torch.empty(2**30, dtype=torch.uint8, device=device)
        destination = torch.empty_like(source)
        milliseconds = do_bench(lambda: destination.copy_(source), return_mode="median")
        return 2 * source.numel() / (milliseconds / 1e3)
    source = torch.empty(2**28, dtype=torch.uint8).random_()
    destination = torch.empty_like(source)
    destination.copy_(source)
    seconds = statistics.median(time_once(lambda: destination.copy_(source)) for _ in range(5))
    return 2 * source.numel() / seconds


# The matmul whose throughput the linear loss is measured against: the shape of a language
# model's projection, big enough to run near the GPU's peak (2 x 8192^3 = 1.1e12 flops, a few
# milliseconds on an H200); on the CPU 1024^3, which takes a few tens of milliseconds.
MATMUL_SIZE = {"cuda": 8192, "cpu": 1024}


def matmul_throughput(device: torch.device, dtype: torch.dtype) -> float:
    """Flops per second of an n x n by n x n ``torch.mm`` in ``dtype``: do_bench's median on a
    GPU, the median of 5 calls after one untimed call on the CPU. fp32 follows torch's own
    matmul precision setting (IEEE fp32 unless TF32 is allowed), as every torch peer does."""
    size = MATMUL_SIZE[device.type]
    left = torch.randn(size, size, device=device).to(dtype)
    right = torch.randn(size, size, device=device).to(dtype)
    if device.type == "cuda":
        from triton.testing import do_bench

        seconds = do_bench(lambda: torch.mm(left, right), return_mode="median") / 1e3
    else:
        torch.mm(left, right)
        seconds = statistics.median(time_once(lambda: torch.mm(left, right)) for _ in range(5))
    return 2 * size**3 / seconds


# --- Memory -----------------------------------------------------------------------------------


def available_memory(device: torch.device) -> int:
    """Bytes a case may still allocate: free device memory plus torch's unused cache on a GPU,
    MemAvailable on the CPU."""
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        cached = torch.cuda.memory_reserved(device) - torch.cuda.memory_allocated(device)
        return free + cached
    with open("/proc/meminfo") as meminfo:
        for line in meminfo:
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    raise RuntimeError("no MemAvailable in /proc/meminfo")


def estimated_peak_bytes(case: Case) -> int:
    """A generous estimate of what a case allocates, checked before anything is allocated.

    Inputs and gradient; for the unfused implementations up to four fp32 temporaries of N*C
    (softmax, its log, the focal factor, the gradient before its cast); a saved copy of the
    logits where the implementation overwrites them; and the float64 agreement check (a chunk,
    the sampled gradient rows, and about six temporaries of each). The linear loss:
    ``_estimated_linear_peak_bytes``.
    """
    if case.spec.family == "linear":
        return _estimated_linear_peak_bytes(case)
    element = case.torch_dtype.itemsize
    logits = case.elements * element
    targets = case.batch * INDEX_BYTES if case.spec.family == "softmax" else logits
    gradient = logits if case.pass_ == "forward_backward" else 0
    fused = ("triton", "triton+compile", "liger")
    temporaries = 0 if case.impl in fused else 4 * case.elements * 4
    saved_logits = logits if case.impl == "liger" else 0
    agreement = 6 * 8 * (CHECK_CHUNK_ELEMENTS + GRADIENT_CHECK_ELEMENTS)
    return logits + targets + gradient + temporaries + saved_logits + agreement


def _estimated_linear_peak_bytes(case: Case) -> int:
    """The linear loss: hidden states, classifier and their gradients (twice: the agreement's
    inputs beside the timed ones, and an fp32 accumulator of either); for the implementations that
    materialise the logits (torch, compile, reference), five fp32 tensors of N x V (eager bf16
    at CCE's Table 1 shape peaks at 28 GB, seven bf16 logits, published); for the fused ones an
    N x D and a V x D workspace more; and the float64 agreement check: six N_check x V tensors
    and the float64 inputs and gradients."""
    from lossbench.bench.agreement import linear_agreement_rows

    element = case.torch_dtype.itemsize
    layer = (case.batch + case.classes) * case.hidden
    inputs_and_gradients = 2 * layer * element * (2 if case.pass_ == "forward_backward" else 1)
    if case.impl in ("torch", "compile", "reference"):
        workspace = 5 * case.elements * 4
    else:
        workspace = layer * 4
    rows = linear_agreement_rows(case.batch, case.hidden, case.classes, interpreted=False)
    agreement = 8 * (6 * rows * case.classes + 2 * (rows + case.classes) * case.hidden)
    return inputs_and_gradients + workspace + agreement


def peak_memory(step: Step, device: torch.device) -> int:
    """Peak bytes allocated while ``step`` runs, beyond those allocated before it (the inputs).

    CUDA: torch's caching-allocator statistics. CPU: ``cpu_allocation_peak``.
    """
    if device.type == "cuda":
        synchronize(device)
        before = torch.cuda.memory_allocated(device)
        torch.cuda.reset_peak_memory_stats(device)
        step()
        return torch.cuda.max_memory_allocated(device) - before
    return cpu_allocation_peak(step)


def cpu_allocation_peak(step: Step) -> int:
    """Peak of the running sum of CPU allocations and frees made while ``step`` runs.

    tracemalloc cannot see torch's allocator, so this asks torch's profiler: with
    profile_memory=True it records every allocation and free of torch's CPU allocator, with its
    size (negative for a free) and address. Only frees of blocks allocated during the step count:
    the profiler also reports the free of a block it saw allocated in an earlier profiled step
    (Triton's interpreter, for one, holds the last launch's arguments until the next launch), and
    counting those would subtract memory the step never allocated. The inputs never count.
    """
    from torch._C._profiler import _EventType
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as profiler:
        step()

    def walk(events: list) -> Iterator:
        for event in events:
            yield event
            yield from walk(event.children)

    tree = profiler.profiler.kineto_results.experimental_event_tree()
    allocations = sorted(
        (event for event in walk(tree) if event.typed[0] == _EventType.Allocation),
        key=lambda event: event.start_time_ns,
    )
    allocated = peak = 0
    live: set[int] = set()
    for event in allocations:
        fields = event.typed[1]
        if fields.device.type != "cpu":
            continue
        if fields.alloc_size > 0:
            live.add(fields.ptr)
        elif fields.ptr in live:
            live.discard(fields.ptr)
        else:
            continue  # a block allocated before the step
        allocated += fields.alloc_size
        peak = max(peak, allocated)
    return peak
