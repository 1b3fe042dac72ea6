"""What the kernel modules share: where kernels run, argument checks, the compute dtype, the math
the kernels call per element or per row, how one launch reduces across its programs, and the
in-place scaling of a gradient by its upstream gradient (a custom op)."""

from __future__ import annotations

import os

import torch
import triton
import triton.language as tl

from lossbench.reference._checks import check_same_device

# kernels/__init__.py has already chosen, before triton was imported.
INTERPRETED: bool = os.environ.get("TRITON_INTERPRET") == "1"
KERNEL_DEVICE: str = "cpu" if INTERPRETED else "cuda"


def _round_bf16_to_nearest_in_the_interpreter() -> None:
    """Make the interpreter's fp32 -> bf16 cast round to nearest even, as the GPU's does.

    Compiled, ``x.to(tl.bfloat16)`` (and a store of fp32 into a bf16 tensor) is cvt.rn.bf16.f32:
    round to nearest even. Triton's interpreter instead drops the low 16 bits (truncation, up to
    2^-7 = 0.8 % relative error, always toward zero), so a bf16 gradient that is right on the GPU
    fails the 1e-2 bf16 tolerance here. Upstream is aware (triton-lang/triton PRs #10945, #11897);
    until every Triton we support rounds, this routes that one cast through a correct rounding.
    """
    import numpy as np
    from triton.runtime import interpreter

    builder = interpreter.InterpreterBuilder
    truncating_cast = builder.cast_impl

    def cast_impl(self, src, dst_type):
        if not (src.dtype.scalar == tl.float32 and dst_type.scalar == tl.bfloat16):
            return truncating_cast(self, src, dst_type)
        bits = np.ascontiguousarray(src.data, dtype=np.float32).view(np.uint32).astype(np.uint64)
        # Add half an ulp of bf16, plus one when the kept part is odd (ties to even), then shift;
        # a carry out of the mantissa moves into the exponent, as it must. NaN stays a quiet NaN.
        rounded = ((bits + 0x7FFF + ((bits >> 16) & 1)) >> 16).astype(np.uint16)
        rounded = np.where(np.isnan(src.data), np.uint16(0x7FC0), rounded)
        return interpreter.TensorHandle(rounded, dst_type.scalar)

    builder.cast_impl = cast_impl


def _dot_bf16_values_in_the_interpreter() -> None:
    """Make the interpreter's ``tl.dot`` of bf16 operands multiply their values, as the GPU does.

    The interpreter stores bf16 as uint16 bit patterns and its ``create_dot`` widens only 8-bit
    floats before ``np.matmul``, so a bf16 ``tl.dot`` multiplies the bit patterns: results near
    1e10 for operands in [-2, 2] (triton-lang/triton issue #11584, closed as "not supported yet";
    Triton 3.8). Compiled, a bf16 ``tl.dot`` multiplies exactly (8-bit mantissas, a 16-bit product)
    and accumulates in fp32; widening each operand to fp32 (exact) and multiplying in fp32 does
    the same, up to the order of the additions. Operands that are not bf16 pass through, so the
    patch is harmless once upstream converts them itself.
    """
    import numpy as np
    from triton.runtime import interpreter

    builder = interpreter.InterpreterBuilder
    bit_pattern_dot = builder.create_dot

    def widened(operand):
        if operand.dtype.scalar != tl.bfloat16 or operand.data.dtype != np.uint16:
            return operand
        values = (operand.data.astype(np.uint32) << 16).view(np.float32)
        return interpreter.TensorHandle(values, tl.float32)

    def create_dot(self, a, b, d, input_precision, max_num_imprecise_acc):
        return bit_pattern_dot(
            self, widened(a), widened(b), d, input_precision, max_num_imprecise_acc
        )

    builder.create_dot = create_dot


if INTERPRETED:
    _round_bf16_to_nearest_in_the_interpreter()
    _dot_bf16_values_in_the_interpreter()


# Compile-time codes for the REDUCTION constexpr of every kernel.
REDUCTION_CODES: dict[str, int] = {"none": 0, "mean": 1, "sum": 2}


def check_kernel_device(**tensors: torch.Tensor | None) -> None:
    """Raise ``ValueError`` unless every tensor given lives where the kernels run.

    That is a CUDA device when one is present and the CPU under the interpreter; all tensors must
    share one device. ``None`` entries (absent optional arguments) are ignored.
    """
    devices = {name: t.device for name, t in tensors.items() if t is not None}
    for name, device in devices.items():
        if device.type != KERNEL_DEVICE:
            where = "Triton's interpreter (no GPU found)" if INTERPRETED else "a CUDA device"
            raise ValueError(
                f"{name} is on {device}, but the kernels run on {where}: "
                f"move it to {KERNEL_DEVICE!r}"
            )
    check_same_device(**tensors)


def check_no_gradient_wanted(module: str, **tensors: torch.Tensor | None) -> None:
    """Raise ``NotImplementedError`` if a tensor given requires grad while autograd records.

    The kernels differentiate their logits (and soft targets) only; a weight that wants a
    gradient would otherwise silently get none. ``module`` names the reference to use instead.
    """
    for name, tensor in tensors.items():
        if tensor is not None and tensor.requires_grad and torch.is_grad_enabled():
            raise NotImplementedError(
                f"{name} requires grad, but these kernels give no gradient for it: detach it, "
                f"or use {module}"
            )


def check_first_order(module: str) -> None:
    """Raise ``RuntimeError`` when a backward runs with ``create_graph=True``.

    Only such a backward records a graph of itself (grad mode is on inside it). The kernels'
    gradients have none, so a second-order gradient through them (a gradient penalty, a
    Hessian-vector product) would silently miss this loss's part; ``module`` names the
    reference, whose autograd ops do differentiate twice.
    """
    if torch.is_grad_enabled():
        raise RuntimeError(
            f"the fused {module.removeprefix('reference.')} kernels give first-order gradients "
            "only: backward with create_graph=True (for a second-order gradient) is not "
            f"supported; use {module}"
        )


# --- The compute dtype -----------------------------------------------------------------------
# fp16 and bf16 are computed in fp32, as torch's kernels do; fp32 in fp32; fp64 in fp64, so that
# torch.autograd.gradcheck's finite differences (in float64) see the kernels' own gradients.


@triton.jit
def to_compute_dtype(x, FP64: tl.constexpr):
    """``x`` in the dtype a kernel computes in: float64 when FP64, else float32."""
    # One return: the compiler types every return statement of a function, taken or not.
    return x.to(tl.float64) if FP64 else x.to(tl.float32)


@triton.jit
def scalar_in_compute_dtype(value, FP64: tl.constexpr):
    """A float argument (declared ``tl.float64``) as a (1,) tensor of the compute dtype.

    Triton passes an undeclared float argument as fp32, which would round an option such as
    label_smoothing = 0.1 before a float64 kernel sees it; declared float64, it arrives exact,
    and an fp32 kernel converts it once here rather than promote its arithmetic to fp64. (The
    interpreter passes the Python float itself; tl.full takes both.)
    """
    return tl.full([1], value, tl.float64) if FP64 else tl.full([1], value, tl.float32)


def multiprocessor_count(device: torch.device) -> int:
    """Streaming multiprocessors of ``device``: the width of a persistent grid.

    The interpreter runs programs one after another, so there a handful of programs is as fast as
    any other count and keeps per-program Python overhead low.
    """
    if INTERPRETED:
        return 4
    return torch.cuda.get_device_properties(device).multi_processor_count


# --- Math shared by the kernels ----------------------------------------------------------------
# Triton lowers tl.log and tl.log2 to a software routine (about 25 SASS instructions on sm_90), a
# division to about 8, and tl.exp to ex2.approx plus a range fix-up (5); tl.exp2 is one MUFU.EX2
# and tl.rsqrt one MUFU.RSQ. (Counted in the SASS by lossbench static, Triton 3.8.) Where a kernel
# must issue only a few tens of instructions per element, the helpers below replace them when
# APPROX is set (fp32 compute only; the launchers never set it for fp64): the same arithmetic
# runs in Triton's interpreter, so the tests check it against float64 at the tolerance table's
# precision. Their error bounds are derived below, not measured on hardware (no GPU was
# available): the interpreter computes rsqrt and exp2 exactly, the GPU within the PTX ISA's
# bounds for rsqrt.approx.ftz.f32 (2^-22.9 relative) and ex2.approx.ftz.f32 (2^-22.5 relative).
# Without APPROX they are the exact forms, in fp32 or fp64 by their argument's dtype.
APPROXIMATE_MATH = True

LOG2E: tl.constexpr = tl.constexpr(1.4426950408889634)
LN2: tl.constexpr = tl.constexpr(0.6931471805599453)


# The interpreter's flag, for kernels: see ``exp``.
_INTERPRETED: tl.constexpr = tl.constexpr(INTERPRETED)


@triton.jit
def exp(t):
    """exp(t). Compiled in fp32, ex2.approx.ftz of t log2(e): what tl.exp compiles to for fp32
    (ex2.approx of the same product), less the handling of denormal results that its non-ftz
    ex2 costs in SASS. In fp64 (libdevice's exact exp) and in the interpreter, tl.exp: numpy's
    exp is exact where exp2 of the rounded product is not, and the CPU tests keep their margin.
    """
    if _INTERPRETED:
        return tl.exp(t)
    if t.dtype == tl.float64:
        return tl.exp(t)
    return tl.exp2(t * LOG2E)


@triton.jit
def reciprocal(x, APPROX: tl.constexpr = False):
    """1 / x for a positive normal fp32 x: rsqrt(x)^2 (two instructions, relative error below
    2 x 2^-22.9 ~ 3e-7) when APPROX, a division otherwise."""
    if APPROX:
        root = tl.rsqrt(x)
        return root * root
    return 1.0 / x


@triton.jit
def _log_mantissa(y, APPROX: tl.constexpr = False):
    """log(1 + y) for y in [0, 1]: 2 atanh(s) with s = y / (2 + y) in [0, 1/3], as s P(s^2).

    P is a degree-4 polynomial fitted (weighted least squares on Chebyshev nodes, refined to
    equal ripple) to 2 atanh(s) / s on s^2 in [0, 1/9]: its relative error is below 4e-9 there,
    under fp32's rounding of the evaluation (6e-8); the Taylor series would need six terms for
    1.4e-8. The reciprocal adds at most 3e-7 (relative) when APPROX.
    """
    s = y * reciprocal(2.0 + y, APPROX)
    z = s * s
    series = 2.0000000079210376 + z * (
        0.6666631468216043
        + z * (0.400249102740667 + z * (0.2796060287062306 + z * 0.2817833438103654))
    )
    return s * series


@triton.jit
def log1p_unit(u, APPROX: tl.constexpr = False):
    """log(1 + u) for u in [0, 1] (exp(-|x|) of a sigmoid, say): the series of
    ``_log_mantissa`` alone when APPROX (about 12 instructions)."""
    if APPROX:
        return _log_mantissa(u, APPROX)
    return log1p(u, APPROX)


@triton.jit
def log1p(u, APPROX: tl.constexpr = False):
    """log(1 + u) for u >= 0, exact to a few ulps for small u (no rounding of 1 + u).

    APPROX (fp32): u < 1 goes straight to the series; u >= 1 is split as 1 + u = 2^k m, m in
    [1, 2), log(1 + u) = k ln 2 + log(1 + (m - 1)) (rounding 1 + u costs 6e-8 of a result
    >= ln 2). About 20 instructions instead of tl.log's 25 plus a series. nan and inf propagate.
    """
    if APPROX:
        whole = 1.0 + u
        bits = whole.to(tl.int32, bitcast=True)
        exponent = ((bits >> 23) & 0xFF) - 127
        mantissa = ((bits & 0x7FFFFF) | 0x3F800000).to(tl.float32, bitcast=True)
        big = u >= 1.0
        result = _log_mantissa(tl.where(big, mantissa - 1.0, u), APPROX)
        result += tl.where(big, exponent.to(tl.float32) * LN2, 0.0)
        result = tl.where(whole < 3.0e38, result, whole)
    elif u.dtype == tl.float64:
        # log(1 + u) corrected by the rounding error of 1 + u, which Fast2Sum gives exactly:
        # log1p(u) = log(s) + (u - (s - 1)) / s up to its square, s = 1 + u rounded (Goldberg
        # 1991, the log1p discussion); exact to an ulp or two with an accurate fp64 log.
        one_plus_u = 1.0 + u
        result = tl.log(one_plus_u) + (u - (one_plus_u - 1.0)) / one_plus_u
    else:
        # For u < 0.1, the alternating series to u^7/7 leaves a relative error below
        # u^7/8 < 1.3e-8. Beyond, log(1 + u) >= 0.095, so the absolute error of a fast GPU log
        # stays relatively small.
        series = u * (
            1.0
            - u
            * (0.5 - u * (1.0 / 3.0 - u * (0.25 - u * (0.2 - u * (1.0 / 6.0 - u * (1.0 / 7.0))))))
        )
        result = tl.where(u < 0.1, series, tl.log(1.0 + u))
    return result


@triton.jit
def log2(x, APPROX: tl.constexpr = False):
    """log2(x) for x >= 0 (-inf at 0, nan below 0 or for nan, inf at inf), denormals included.

    APPROX: x = 2^k m, m in [1, 2), log2(x) = k + log(m) / ln 2 through the series of
    ``_log_mantissa``; a denormal x is first scaled by 2^24 (exactly).
    """
    if APPROX:
        tiny = x < 1.1754943508222875e-38
        scaled = tl.where(tiny, x * 16777216.0, x)
        bits = scaled.to(tl.int32, bitcast=True)
        exponent = ((bits >> 23) & 0xFF) - tl.where(tiny, 151, 127)
        mantissa = ((bits & 0x7FFFFF) | 0x3F800000).to(tl.float32, bitcast=True)
        result = exponent.to(tl.float32) + _log_mantissa(mantissa - 1.0, APPROX) * LOG2E
        special = tl.where(x == 0.0, float("-inf"), tl.where(x > 0.0, x, float("nan")))
        return tl.where((x > 0.0) & (x < 3.0e38), result, special)
    return tl.log2(x)


@triton.jit
def expm1(t, APPROX: tl.constexpr = False):
    """exp(t) - 1 for t <= 0, without cancellation when |t| is small."""
    if t.dtype == tl.float64:
        # Kahan's expm1: (u - 1) t / log(u) with u = exp(t) rounded, exact to a few ulps in any
        # precision whose exp and log are accurate (libdevice's and numpy's fp64 are; the GPU's
        # fast fp32 log is not, hence the series below). u = 1 means |t| < ulp: expm1(t) = t;
        # u = 0 means t below -745: -1. Neither lane ever evaluates log(0) or a 0 / 0.
        u = tl.exp(t)
        ordinary = (u != 1.0) & (u != 0.0)
        kahan = (u - 1.0) * (t / tl.log(tl.where(ordinary, u, 2.0)))
        result = tl.where(u == 1.0, t, tl.where(u == 0.0, -1.0, kahan))
    else:
        # For |t| < 0.1, the series to t^5/5! leaves a relative error below t^5/6! < 1.4e-8
        # (fp32 spacing is 6e-8); beyond, exp(t) - 1 loses at most a factor 1/0.1 of exp's
        # relative error.
        series = t * (1.0 + t * (0.5 + t * (1.0 / 6.0 + t * (1.0 / 24.0 + t * (1.0 / 120.0)))))
        exponential = tl.exp2(t * LOG2E) if APPROX else tl.exp(t)
        result = tl.where(tl.abs(t) < 0.1, series, exponential - 1.0)
    return result


# --- One launch that reduces across its programs -----------------------------------------------
# A loss reduced by 'mean' or 'sum' needs every program's share added up, and 'mean' of the
# softmax losses needs its denominator (a sum over all targets) before any program can scale its
# gradient. Separate launches for these (torch reductions, a reciprocal) cost several device
# launches per call, which dominate a small problem. Instead each launch uses a few int32
# counters that are zero between launches: programs count their way through the shared work
# with atomics, the last program to finish adds the partial sums in a fixed order (deterministic)
# and sets the counters back to zero. One set of counters per device and stream: launches on one
# stream run one after another, so they never share them at the same time.

CLAIMED_CHUNKS: tl.constexpr = tl.constexpr(0)  # target chunks claimed (softmax denominators)
FINISHED_CHUNKS: tl.constexpr = tl.constexpr(1)  # target chunks whose partial sums are written
FINISHED_PROGRAMS: tl.constexpr = tl.constexpr(2)  # programs whose partial loss is written
WORKSPACE_COUNTERS: tl.constexpr = tl.constexpr(4)
# Partial sums the last program adds per step: 4 KiB of fp32 per load.
FINISH_BLOCK: tl.constexpr = tl.constexpr(1024)

_WORKSPACES: dict[tuple[torch.device, int], torch.Tensor] = {}


def launch_workspace(device: torch.device) -> torch.Tensor:
    """The (WORKSPACE_COUNTERS,) int32 counters of the current stream of ``device``, all zero.

    Made (one torch.zeros launch) the first time a stream needs them; every launch leaves them
    zero again. A launch that dies half-way (a device error) leaves them as they are, but such an
    error also ends the CUDA context.
    """
    stream = torch.cuda.current_stream(device).cuda_stream if device.type == "cuda" else 0
    key = (device, stream)
    workspace = _WORKSPACES.get(key)
    if workspace is None:
        workspace = torch.zeros(WORKSPACE_COUNTERS.value, dtype=torch.int32, device=device)
        _WORKSPACES[key] = workspace
    return workspace


@triton.jit
def finish_reduction(partials_ptr, workspace_ptr, output_ptr, partial):
    """Every program calls this last, with its share of the loss; the last one to arrive writes
    their sum to ``output_ptr`` (in its dtype) and zeroes the workspace.

    partials_ptr: (grid,) in the compute dtype, written here; workspace_ptr:
    (WORKSPACE_COUNTERS,) int32; output_ptr: () the reduced loss.
    """
    program = tl.program_id(0)
    n_programs = tl.num_programs(0)
    tl.store(partials_ptr + program, partial)
    # The share is stored before the ticket is taken (release), and the last program reads every
    # share after taking its ticket (acquire), from L2 (.cg): it sees them all.
    tl.debug_barrier()
    ticket = tl.atomic_add(workspace_ptr + FINISHED_PROGRAMS, 1, sem="acq_rel")
    if ticket == n_programs - 1:  # runs once per launch
        total = tl.zeros([FINISH_BLOCK], partials_ptr.dtype.element_ty)
        for start in range(0, n_programs, FINISH_BLOCK):
            shares = start + tl.arange(0, FINISH_BLOCK)
            total += tl.load(
                partials_ptr + shares, mask=shares < n_programs, other=0.0, cache_modifier=".cg"
            )
        tl.store(output_ptr, tl.sum(total, axis=0).to(output_ptr.dtype.element_ty))
        counters = tl.arange(0, WORKSPACE_COUNTERS)
        tl.store(workspace_ptr + counters, tl.zeros([WORKSPACE_COUNTERS], tl.int32))


# --- The upstream gradient of a reduced loss -------------------------------------------------
# A loss reduced by 'mean' or 'sum' can write its input gradient during the forward pass, as if
# the upstream gradient were 1, so that forward+backward reads the input once and writes the
# gradient once. Backward must then multiply by the upstream gradient, which lives on the device:
# reading it on the host would synchronise. Instead a small persistent grid reads it and leaves at
# once when it is 1 (what `loss.backward()` passes), so the common case costs one launch of a few
# programs and no traffic; any other value scales the gradient in place.

SCALE_BLOCK = 4096  # 16 KiB of fp32 per program and step: enough bytes in flight to stream.
SCALE_PROGRAMS_PER_SM = 4  # a few resident programs per SM hide the loop's load latency.


@triton.jit
def _scale_unless_one_kernel(
    grad_ptr,  # (n_elements,) contiguous gradient, fp32/fp16/bf16/fp64, scaled in place
    scale_ptr,  # () the upstream gradient, any float dtype
    n_elements,
    BLOCK: tl.constexpr,
    FP64: tl.constexpr,  # compute in float64 (a float64 gradient)
):
    """Each program strides over BLOCK-element blocks of the gradient, scaling them, unless the
    scale is 1."""
    scale = to_compute_dtype(tl.load(scale_ptr), FP64)
    if scale != 1.0:  # runs 0 if upstream_is_one else 1 times per program
        # int64: the gradient may hold more than 2^31 elements.
        first = tl.program_id(0).to(tl.int64) * BLOCK
        step = tl.num_programs(0).to(tl.int64) * BLOCK
        for block_start in tl.range(first, n_elements, step):
            offsets = block_start + tl.arange(0, BLOCK)
            mask = offsets < n_elements
            grad = tl.load(grad_ptr + offsets, mask=mask)
            tl.store(grad_ptr + offsets, to_compute_dtype(grad, FP64) * scale, mask=mask)


@torch.library.custom_op("lossbench::scale_unless_one_", mutates_args=("grad",))
def _scale_unless_one_op(grad: torch.Tensor, upstream: torch.Tensor) -> None:
    """Multiply ``grad`` in place by the one-element ``upstream`` unless it is 1 (on the device)."""
    # I/O: read 1 scalar per program; when upstream != 1, read and write grad once more.
    n_elements = grad.numel()
    if n_elements:
        programs = SCALE_PROGRAMS_PER_SM * multiprocessor_count(grad.device)
        grid = (min(triton.cdiv(n_elements, SCALE_BLOCK), programs),)
        _scale_unless_one_kernel[grid](
            grad, upstream, n_elements, BLOCK=SCALE_BLOCK, FP64=grad.dtype == torch.float64
        )


def writes_only(*args: object, **kwargs: object) -> None:
    """The fake (meta) implementation of every custom op of the kernels: each writes into
    tensors its caller allocated, so it creates no tensor and changes no shape."""


_scale_unless_one_op.register_fake(writes_only)


def scale_unless_one_(grad: torch.Tensor, upstream: torch.Tensor) -> torch.Tensor:
    """Multiply the contiguous ``grad`` in place by the one-element ``upstream``; no host sync.

    Runs the custom op ``lossbench::scale_unless_one_``, which declares that it mutates ``grad``.
    """
    if not grad.is_contiguous():
        raise ValueError("scale_unless_one_ needs a contiguous gradient")
    if upstream.numel() != 1:
        raise ValueError(f"upstream must hold one element, got shape {tuple(upstream.shape)}")
    _scale_unless_one_op(grad, upstream)
    return grad
