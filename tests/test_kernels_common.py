"""kernels/_common.py: the device check, the upstream-gradient scaling, the interpreter's bf16
(casts and tl.dot)."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import torch
import triton
import triton.language as tl

from lossbench.kernels._common import (
    INTERPRETED,
    KERNEL_DEVICE,
    check_kernel_device,
    scale_unless_one_,
)
from lossbench.reference.tolerance import assert_close

from .helpers import REPOSITORY_ROOT


@triton.jit
def _cast_kernel(source_ptr, destination_ptr, n_elements, BLOCK: tl.constexpr):
    """Each program casts BLOCK fp32 elements to the destination's dtype."""
    offsets = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    mask = offsets < n_elements
    values = tl.load(source_ptr + offsets, mask=mask)
    tl.store(destination_ptr + offsets, values.to(destination_ptr.dtype.element_ty), mask=mask)


def test_fp32_to_bf16_rounds_to_nearest_even_like_torch() -> None:
    # Spread over many binades, plus the edge cases of a rounding: ties, a carry out of the
    # mantissa (1.9999999 -> 2), the largest finite values, infinities, nan and signed zero.
    values = torch.randn(50_000) * torch.logspace(-30, 30, 50_000)
    ties_and_carries = [1 + 2**-8, 1 + 3 * 2**-8, 1.9999999, 3.3895e38, -3.3895e38]
    specials = [float("inf"), -float("inf"), float("nan"), -0.0, 0.0, 1e-40]
    edges = torch.tensor([*ties_and_carries, *specials])
    source = torch.cat([values, edges]).to(KERNEL_DEVICE)
    cast = torch.full_like(source, float("nan"), dtype=torch.bfloat16)
    _cast_kernel[(triton.cdiv(source.numel(), 1024),)](source, cast, source.numel(), BLOCK=1024)
    expected = source.to(torch.bfloat16)
    assert torch.equal(cast.isnan(), expected.isnan())
    assert torch.equal(cast[~cast.isnan()], expected[~expected.isnan()])


@triton.jit
def _dot_kernel(a_ptr, b_ptr, c_ptr, M: tl.constexpr, N: tl.constexpr, K: tl.constexpr):
    """One program multiplies the (M, K) and (K, N) row-major operands into fp32 (M, N)."""
    rows, columns, inner = tl.arange(0, M), tl.arange(0, N), tl.arange(0, K)
    a = tl.load(a_ptr + rows[:, None] * K + inner[None, :])
    b = tl.load(b_ptr + inner[:, None] * N + columns[None, :])
    # ieee: on a GPU, fp32 operands would otherwise multiply in TF32 (10-bit mantissas).
    tl.store(c_ptr + rows[:, None] * N + columns[None, :], tl.dot(a, b, input_precision="ieee"))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16], ids=str)
def test_dot_multiplies_values(dtype: torch.dtype) -> None:
    # Unpatched, the interpreter's bf16 tl.dot multiplies the uint16 bit patterns (~1e10 here).
    # Products of 16-bit floats are exact in fp32, so fp32 accumulation is all that differs.
    a = torch.randn(16, 32, device=KERNEL_DEVICE).to(dtype)
    b = torch.randn(32, 16, device=KERNEL_DEVICE).to(dtype)
    product = torch.full((16, 16), float("nan"), device=KERNEL_DEVICE)
    _dot_kernel[(1,)](a, b, product, M=16, N=16, K=32)
    assert_close(product, a.double() @ b.double(), torch.float32, "tl.dot")


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("n_elements", [1, 4095, 4097, 70_001])  # block edges; many blocks
def test_scale_unless_one(dtype: torch.dtype, n_elements: int) -> None:
    grad = torch.randn(n_elements, device=KERNEL_DEVICE).to(dtype)
    original = grad.clone()
    upstream = torch.empty((), device=KERNEL_DEVICE).uniform_(-3, 3)
    scale_unless_one_(grad, upstream.to(dtype))
    expected = original.double() * upstream.to(dtype).double()
    assert_close(grad, expected, dtype, "scaled gradient")


@pytest.mark.skipif(not INTERPRETED, reason="counts the stores of Triton's interpreter")
def test_an_upstream_gradient_of_one_writes_nothing(monkeypatch: pytest.MonkeyPatch) -> None:
    """loss.backward() passes exactly 1: then the gradient is neither read nor written again."""
    from triton.runtime import interpreter

    stores: list[str] = []
    for name in ("create_store", "create_masked_store"):
        original = getattr(interpreter.InterpreterBuilder, name)

        def counting(self, *args, _original=original, _name=name, **kwargs):
            stores.append(_name)
            return _original(self, *args, **kwargs)

        monkeypatch.setattr(interpreter.InterpreterBuilder, name, counting)
    grad = torch.randn(10_000, device=KERNEL_DEVICE)
    scale_unless_one_(grad, torch.ones((), device=KERNEL_DEVICE))
    assert stores == []
    # The count does see the kernel's stores: the same call with another upstream makes them.
    scale_unless_one_(grad, torch.full((), 2.0, device=KERNEL_DEVICE))
    assert stores


def test_scale_unless_one_rejects_bad_arguments() -> None:
    grad = torch.randn(8, 4, device=KERNEL_DEVICE)
    with pytest.raises(ValueError, match="contiguous"):
        scale_unless_one_(grad.t(), torch.ones((), device=KERNEL_DEVICE))
    with pytest.raises(ValueError, match="one element"):
        scale_unless_one_(grad, torch.ones(2, device=KERNEL_DEVICE))


def test_check_kernel_device() -> None:
    here = torch.zeros(2, device=KERNEL_DEVICE)
    check_kernel_device(input=here, weight=None)
    elsewhere = torch.zeros(2, device="meta")
    with pytest.raises(ValueError, match="weight is on meta"):
        check_kernel_device(input=here, weight=elsewhere)


@pytest.mark.skipif(not INTERPRETED, reason="the interpreter is chosen only without a GPU")
def test_importing_triton_first_gives_a_clear_error() -> None:
    environment = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    completed = subprocess.run(
        [sys.executable, "-c", "import triton, lossbench.kernels"],
        cwd=REPOSITORY_ROOT,
        env=environment,
        capture_output=True,
        text=True,
        check=False,
    )
    assert completed.returncode != 0
    assert "import lossbench.kernels first, or set TRITON_INTERPRET=1" in completed.stderr
