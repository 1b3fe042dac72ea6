"""What the kernel modules share: where kernels run, argument checks, launch sizes."""

from __future__ import annotations

import os

import torch
import triton
import triton.language as tl

# kernels/__init__.py has already chosen, before triton was imported.
INTERPRETED: bool = os.environ.get("TRITON_INTERPRET") == "1"
KERNEL_DEVICE: str = "cpu" if INTERPRETED else "cuda"

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
    if len(set(devices.values())) > 1:
        listing = ", ".join(f"{name} on {device}" for name, device in devices.items())
        raise ValueError(f"all tensors must be on one device, got {listing}")


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
# reading it on the host would synchronise. Instead every program of this kernel reads it and
# leaves at once when it is 1 (what `loss.backward()` passes), so the common case costs one launch
# and no traffic; any other value scales the gradient in place.

SCALE_BLOCK = 4096  # 16 KiB of fp32 per program: large enough to stream, small enough to spread.


@triton.jit
def _scale_unless_one_kernel(
    grad_ptr,  # (n_elements,) contiguous gradient, fp32/fp16/bf16, scaled in place
    scale_ptr,  # () the upstream gradient, any float dtype
    n_elements,
    BLOCK: tl.constexpr,
):
    """Each program multiplies BLOCK elements of the gradient by the scale, unless it is 1."""
    scale = tl.load(scale_ptr).to(tl.float32)
    if scale != 1.0:
        # int64: the gradient may hold more than 2^31 elements.
        offsets = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
        mask = offsets < n_elements
        grad = tl.load(grad_ptr + offsets, mask=mask)
        tl.store(grad_ptr + offsets, (grad.to(tl.float32) * scale).to(grad.dtype), mask=mask)


def scale_unless_one_(grad: torch.Tensor, upstream: torch.Tensor) -> torch.Tensor:
    """Multiply the contiguous ``grad`` in place by the one-element ``upstream``; no host sync.

    # I/O: read 1 scalar per program; when upstream != 1, read and write grad once more.
    """
    if not grad.is_contiguous():
        raise ValueError("scale_unless_one_ needs a contiguous gradient")
    if upstream.numel() != 1:
        raise ValueError(f"upstream must hold one element, got shape {tuple(upstream.shape)}")
    n_elements = grad.numel()
    if n_elements:
        grid = (triton.cdiv(n_elements, SCALE_BLOCK),)
        _scale_unless_one_kernel[grid](grad, upstream, n_elements, BLOCK=SCALE_BLOCK)
    return grad
