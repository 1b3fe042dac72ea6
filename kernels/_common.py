"""What the kernel modules share: where kernels run, argument checks, the compute dtype, and the
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


@_scale_unless_one_op.register_fake
def _(grad: torch.Tensor, upstream: torch.Tensor) -> None:
    return None


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
