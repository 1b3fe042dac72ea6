"""The kernels compile for an H100/H200 (sm_90) and fit in registers, checked without a GPU.

Without a GPU every other kernel test runs in Triton's interpreter, which never compiles: a type
or layout error, or a row that no longer fits in registers, would first show on the hardware.
Here a subprocess with TRITON_INTERPRET=0 calls the public functions on CPU tensors, and each
launch their launchers make is compiled for sm_90 by Triton's own JIT path (argument
specialisation included) instead of run: what is compiled is exactly what would run, shapes,
dtypes and constexprs alike. ptxas's log gives the registers and spills of each.

The cases cover each code path once, with the heaviest options where registers are tight (see
``CASES``). tests/test_kernels_budgets.py holds the losses of logits to their sm_90 budgets
(instructions per element, occupancy, access widths, launches) through the static analyser.
On a machine with a GPU the other tests compile and run every kernel, so this one skips there;
it also skips when this Triton has no NVIDIA backend or ptxas.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import re
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
import torch

# ptxas may keep a few values computed before a loop in local memory until after it (4-12 bytes
# per thread, stored once and loaded once per program, seen at the 64-register mark with Triton
# 3.6's ptxas 12.8) rather than use more registers and fit fewer programs per SM: harmless. A row
# that no longer fits in registers spills far more (52-160 bytes with MAX_FUSED_C = 32768).
MAX_SPILL_BYTES = 16


def _softmax_case(
    shape: tuple[int, ...],
    dtype: torch.dtype,
    reduction: str,
    focal: bool,
    with_weight: bool = False,
    probabilities: bool = False,
    **options: float | bool,
) -> Callable[[], None]:
    """Forward and backward of a softmax loss on (N, C, ...) logits and int64 targets, or
    targets of class probabilities (which then require grad too)."""

    def run() -> None:
        from lossbench.kernels.softmax import cross_entropy, softmax_focal_loss

        n_classes = shape[1]
        leaf = torch.randn(shape, dtype=dtype, requires_grad=True)
        # inplace_backward needs logits computed by a layer, not a leaf.
        logits = leaf * 1.0 if options.get("inplace_backward") else leaf
        if probabilities:
            target = torch.rand(shape, dtype=dtype).softmax(1).requires_grad_()
        else:
            target = torch.randint(0, n_classes, shape[:1] + shape[2:])
        weight = torch.rand(n_classes, dtype=dtype) if with_weight else None
        if focal:
            loss = softmax_focal_loss(logits, target, alpha=weight, reduction=reduction)
        else:
            loss = cross_entropy(logits, target, weight, reduction=reduction, **options)
        # An upstream gradient of 2: reduced, backward recomputes the gradient (or, after
        # inplace_backward, launches _scale_unless_one_kernel); 'none', the backward kernel.
        loss.backward(torch.full_like(loss, 2.0))

    return run


def _sigmoid_case(
    dtype: torch.dtype,
    target_dtype: torch.dtype,
    reduction: str,
    focal: bool,
    gamma: float = 2.0,
    target_grad: bool = False,
) -> Callable[[], None]:
    """Forward and backward of a sigmoid loss on (64, 80) logits (COCO's 80 classes)."""

    def run() -> None:
        from lossbench.kernels.sigmoid import binary_cross_entropy_with_logits, sigmoid_focal_loss

        shape = (64, 80)
        logits = torch.randn(shape, dtype=dtype, requires_grad=True)
        target = (torch.rand(shape) > 0.5).to(target_dtype).requires_grad_(target_grad)
        if focal:
            loss = sigmoid_focal_loss(logits, target, gamma=gamma, reduction=reduction)
        else:
            weight = torch.rand(80, dtype=dtype)  # (C,): read in place, by index arithmetic
            pos_weight = torch.rand(shape, dtype=dtype)  # full shape: read element by element
            loss = binary_cross_entropy_with_logits(
                logits, target, weight, reduction=reduction, pos_weight=pos_weight
            )
        loss.backward(torch.full_like(loss, 2.0))

    return run


def _vocab_parallel_case(
    n_classes: int, dtype: torch.dtype, reduction: str, focal: bool, **options: float
) -> Callable[[], None]:
    """Forward and backward of a vocabulary-parallel loss on rank 0's (16, n_classes) slice of
    two, in a fake process group: its collectives do nothing, the launches compile."""

    def run() -> None:
        import torch.distributed as dist
        from torch.testing._internal.distributed.fake_pg import FakeStore

        from lossbench.kernels.softmax import cross_entropy, softmax_focal_loss

        if not dist.is_initialized():
            dist.init_process_group("fake", store=FakeStore(), rank=0, world_size=2)
        logits = torch.randn(16, n_classes, dtype=dtype, requires_grad=True)
        target = torch.randint(0, 2 * n_classes, (16,))
        weight = torch.rand(2 * n_classes, dtype=dtype)
        group = {"process_group": dist.group.WORLD, "class_offset": 0}
        if focal:
            loss = softmax_focal_loss(logits, target, weight, reduction=reduction, **group)
        else:
            loss = cross_entropy(logits, target, weight, reduction=reduction, **group, **options)
        loss.backward(torch.full_like(loss, 2.0))

    return run


def _linear_case(
    dtype: torch.dtype,
    reduction: str,
    with_options: bool = False,
    filter_eps: float | None = None,
) -> Callable[[], None]:
    """Forward and backward of the linear cross-entropy: 300 rows of D = 100 (not a multiple of
    the tile depth), V = 1000 classes (not a multiple of the class block), bias."""

    def run() -> None:
        from lossbench.kernels.linear import linear_cross_entropy

        n_rows, n_features, n_classes = 300, 100, 1000
        input = torch.randn(n_rows, n_features, dtype=dtype, requires_grad=True)
        linear_weight = torch.randn(n_classes, n_features, dtype=dtype, requires_grad=True)
        linear_bias = torch.randn(n_classes, dtype=dtype, requires_grad=True)
        target = torch.randint(0, n_classes, (n_rows,))
        options = {}
        if with_options:
            options = {
                "weight": torch.rand(n_classes, dtype=dtype),
                "label_smoothing": 0.1,
                "z_loss_scale": 1e-4,
                "softcap": 30.0,
            }
        loss = linear_cross_entropy(
            input,
            linear_weight,
            target,
            linear_bias=linear_bias,
            reduction=reduction,
            filter_eps=filter_eps,
            **options,
        )
        loss.backward(torch.full_like(loss, 2.0))

    return run


# Sizes pick the launcher's paths: 1024 x 10 holds two whole rows per thread (256 rows per
# program); 16384 classes is the longest row held in registers (8 warps, 64 values per thread,
# capped at 128 registers with every option on);
# 32000 (a language model's vocabulary) runs the chunked online softmax; (2, 19, 8, 8) is
# (N, C, H, W) with 19 Cityscapes classes. Probability targets hold two tiles per row: 8192
# classes is their longest row in registers (PROBABILITY_MAX_FUSED_C). fp64 runs every path in
# float64 (libdevice's exp and log).
CASES: dict[str, Callable[[], None]] = {
    "softmax CE mean, 256 rows per program, bf16": _softmax_case(
        (1024, 10), torch.bfloat16, "mean", focal=False
    ),
    "softmax CE weight+smoothing+z-loss sum, one 16384-class row in registers, bf16": (
        _softmax_case(
            (4, 16384),
            torch.bfloat16,
            "sum",
            focal=False,
            with_weight=True,
            label_smoothing=0.1,
            z_loss_scale=1e-4,
        )
    ),
    "softmax focal alpha-tensor mean, one 16384-class row in registers, fp32": _softmax_case(
        (4, 16384), torch.float32, "mean", focal=True, with_weight=True
    ),
    "softmax CE weight+smoothing+z-loss mean, chunked 32000 classes, bf16": _softmax_case(
        (2, 32000),
        torch.bfloat16,
        "mean",
        focal=False,
        with_weight=True,
        label_smoothing=0.1,
        z_loss_scale=1e-4,
    ),
    "softmax focal none forward and backward, chunked 32000 classes, bf16": _softmax_case(
        (2, 32000), torch.bfloat16, "none", focal=True
    ),
    "softmax CE none forward and backward, (N, C, H, W), fp32": _softmax_case(
        (2, 19, 8, 8), torch.float32, "none", focal=False
    ),
    "softmax CE inplace_backward mean, upstream 2 scales in place, bf16": _softmax_case(
        (64, 1000), torch.bfloat16, "mean", focal=False, inplace_backward=True
    ),
    "softmax CE weight+smoothing+z-loss mean, fp64": _softmax_case(
        (64, 1000),
        torch.float64,
        "mean",
        focal=False,
        with_weight=True,
        label_smoothing=0.1,
        z_loss_scale=1e-4,
    ),
    "probability targets weight+smoothing mean, one 8192-class row in registers, bf16": (
        _softmax_case(
            (4, 8192),
            torch.bfloat16,
            "mean",
            focal=False,
            with_weight=True,
            probabilities=True,
            label_smoothing=0.1,
        )
    ),
    "probability targets smoothing sum, chunked 32000 classes, bf16": _softmax_case(
        (2, 32000), torch.bfloat16, "sum", focal=False, probabilities=True, label_smoothing=0.1
    ),
    "probability targets mean, (N, C, H, W), fp64": _softmax_case(
        (2, 19, 8, 8), torch.float64, "mean", focal=False, probabilities=True
    ),
    "sigmoid BCE weight+pos_weight mean, bool target, bf16": _sigmoid_case(
        torch.bfloat16, torch.bool, "mean", focal=False
    ),
    "sigmoid focal gamma=2 none forward and backward, target grad, fp32": _sigmoid_case(
        torch.float32, torch.float32, "none", focal=True, gamma=2.0, target_grad=True
    ),
    "sigmoid focal gamma=1.5 sum, uint8 target, bf16": _sigmoid_case(
        torch.bfloat16, torch.uint8, "sum", focal=True, gamma=1.5
    ),
    "sigmoid BCE weight+pos_weight mean, target grad, fp64": _sigmoid_case(
        torch.float64, torch.float64, "mean", focal=False, target_grad=True
    ),
    # Vocabulary-parallel (kernels/vocab_parallel.py): a slice held in registers, a chunked one.
    "vocab-parallel CE weight+smoothing+z-loss mean, 16384-class slice, bf16": (
        _vocab_parallel_case(
            16384, torch.bfloat16, "mean", focal=False, label_smoothing=0.1, z_loss_scale=1e-4
        )
    ),
    "vocab-parallel focal none forward and backward, chunked 32000-class slice, bf16": (
        _vocab_parallel_case(32000, torch.bfloat16, "none", focal=True)
    ),
    "linear CE mean, bias, bf16": _linear_case(torch.bfloat16, "mean"),
    "linear CE weight+smoothing+z-loss+softcap none, bias, bf16": _linear_case(
        torch.bfloat16, "none", with_options=True
    ),
    "linear CE sum, bias, gradient filter, bf16": _linear_case(
        torch.bfloat16, "sum", filter_eps=1e-4
    ),
    "linear CE weight+smoothing+z-loss+softcap mean, bias, fp32": _linear_case(
        torch.float32, "mean", with_options=True
    ),
    "linear CE sum, bias, fp16 (a scaled tile, two-term dz)": _linear_case(torch.float16, "sum"),
}


def _compile_every_launch() -> dict[str, object]:
    """Run CASES, compiling each launch for sm_90 instead of running it; return what ptxas said.

    Runs in the subprocess only: it replaces Triton's driver and patches the kernel modules.
    """
    import triton

    from lossbench.bench.static.offline import (
        install_offline_driver,
        let_launchers_take_cpu_tensors,
        sm90_unavailable,
    )

    if reason := sm90_unavailable():
        return {"skip": reason}
    install_offline_driver()
    # The tensors live on the CPU while the launchers expect CUDA, and persistent grids see an
    # H200's SMs.
    let_launchers_take_cpu_tensors()

    from lossbench import kernels
    from lossbench.kernels import _common, linear, sigmoid, softmax, vocab_parallel  # noqa: F401

    launches: list[dict[str, object]] = []
    current_case = [""]
    # A specialisation launched again comes from the JIT's in-memory cache, without ptxas: keep
    # what ptxas said the first time, by compiled kernel.
    first_log: dict[int, str] = {}
    kernel_functions = (
        kernels.softmax._softmax_loss_kernel,
        kernels.softmax._softmax_probability_loss_kernel,
        kernels.sigmoid._sigmoid_loss_kernel,
        kernels._common._scale_unless_one_kernel,
        kernels.vocab_parallel._shard_statistics_kernel,
        kernels.vocab_parallel._shares_kernel,
        kernels.vocab_parallel._shard_loss_kernel,
        kernels.linear._partial_logsumexp_kernel,
        kernels.linear._row_loss_kernel,
        kernels.linear._backward_kernel,
    )
    for kernel in kernel_functions:
        launch = kernel.run

        def compile_only(*args, grid, warmup, launch=launch, kernel=kernel, **kwargs):
            ptxas_log = io.StringIO()
            with contextlib.redirect_stdout(ptxas_log):  # TRITON_DUMP_PTXAS_LOG prints it
                compiled = launch(*args, grid=grid, warmup=True, **kwargs)
            log = first_log.setdefault(id(compiled), ptxas_log.getvalue())
            registers = re.search(r"Used (\d+) registers", log)
            spills = re.search(r"(\d+) bytes spill stores", log)
            launches.append(
                {
                    "case": current_case[0],
                    "kernel": kernel.__name__,
                    "num_warps": compiled.metadata.num_warps,
                    "shared_bytes": compiled.metadata.shared,
                    "registers": int(registers.group(1)) if registers else None,
                    "spill_bytes": int(spills.group(1)) if spills else None,
                }
            )

        kernel.run = compile_only
    for name, case in CASES.items():
        current_case[0] = name
        case()
    return {"triton": triton.__version__, "launches": launches}


@pytest.mark.skipif(
    torch.cuda.is_available(), reason="a CUDA GPU is present: the other kernel tests compile there"
)
def test_kernels_compile_for_sm90_and_fit_in_registers(tmp_path: Path) -> None:
    environment = {
        **os.environ,
        "TRITON_INTERPRET": "0",
        "TRITON_CACHE_DIR": str(tmp_path),  # empty: ptxas runs, and prints its log
        "TRITON_ALWAYS_COMPILE": "1",
        "TRITON_DUMP_PTXAS_LOG": "1",
    }
    completed = subprocess.run(
        [sys.executable, __file__],
        cwd=tmp_path,  # not the checkout, whose folders would shadow the installed lossbench
        env=environment,
        capture_output=True,
        text=True,
        check=False,
        timeout=600,
    )
    assert completed.returncode == 0, f"compiling for sm_90 failed:\n{completed.stderr[-6000:]}"
    report = json.loads(completed.stdout.strip().splitlines()[-1])
    if "skip" in report:
        pytest.skip(report["skip"])
    launches = report["launches"]
    compiled_cases = {launch["case"] for launch in launches}
    assert compiled_cases == set(CASES), (
        f"cases that launched nothing: {set(CASES) - compiled_cases}"
    )
    kernel_names = {launch["kernel"] for launch in launches}
    assert kernel_names == {
        "_softmax_loss_kernel",
        "_softmax_probability_loss_kernel",
        "_sigmoid_loss_kernel",
        "_scale_unless_one_kernel",
        "_shard_statistics_kernel",
        "_shares_kernel",
        "_shard_loss_kernel",
        "_partial_logsumexp_kernel",
        "_row_loss_kernel",
        "_backward_kernel",
    }
    for launch in launches:
        assert launch["registers"] is not None, (
            f"no ptxas log (Triton {report['triton']}): {launch}"
        )
        assert launch["spill_bytes"] <= MAX_SPILL_BYTES, f"spills on sm_90: {launch}"


if __name__ == "__main__":
    # The subprocess: print one JSON line for the test above to read.
    print(json.dumps(_compile_every_launch()))
