"""Fused vocabulary-parallel cross-entropy and focal loss: the classes split over a process group.

``kernels.cross_entropy`` and ``kernels.softmax_focal_loss`` call these when given a
``process_group``; reference/vocab_parallel.py is the oracle and says what the arguments mean:
rank r holds the logits of classes [offset_r, offset_r + V_r) (``input`` (N, V_r), (N, V_r, d1, ...)
or (V_r,)), ``target`` holds global class indices, ``weight`` and a tensor ``alpha`` the full (C,)
vectors, all the same on every rank; every rank returns the loss of all C classes and, given the
same upstream gradient, receives its slice of the gradient.

One call, per rank, with R rows (samples times positions) and b bytes per logit:

1. ``_shard_statistics_kernel`` reads this rank's R x V_r logits once and reduces each row to its
   local max m_r, rest_r = sum_c exp(x_c - m_r) - 1 (one class at m_r left out, as in
   kernels/softmax.py), the label-smoothing sum sum_c w_c (m_r - x_c), and the true-class logit
   where this rank holds the true class;
2. all-reduce MAX of m_r: R fp32, the global max m;
3. ``_shares_kernel`` moves each row's sums from m_r to m: rest_r becomes (1 + rest_r) e^(m_r - m)
   on ranks below m, and stays rest_r on ranks at m, which also count 1 each; the smoothing sum
   gains (m - m_r) W_r. Appended: V_r, so that every rank learns C;
4. all-reduce SUM of those shares: 3R + 1 fp32 (4R + 1 with label smoothing). Global
   rest = sum of shares + (ranks at m - 1), an exact integer added, so 1 + rest - 1 never forms;
5. ``_shard_loss_kernel`` computes each row's loss from the global statistics, with
   kernels/softmax.py's own ``_row_terms`` (every rank the same numbers, so the same loss), and,
   when autograd wants it, reads the logits again to write this rank's gradient slice.

With 'mean' or 'sum' the gradient is written in step 5 of the forward pass, already divided by the
'mean' denominator, and backward only scales it by the upstream gradient (not at all when that is
1), as on one device; with 'none' step 5's gradient pass runs in backward with each row's upstream
gradient, from the O(R) global statistics saved by forward. Backward communicates nothing.

Compared to the single-device kernel, forward+backward reads the logits twice (steps 1 and 5),
not once: the gradient needs the global statistics, which arrive after the collectives, so the
slice cannot stay on chip in between (Megatron's and torch's loss_parallel, written as several
elementwise passes, read theirs more often). No host synchronisation. Memory beyond the gradient:
at most 9R + 1 fp32 values at once (while the statistics are formed; 5R + 1 of them, the global
statistics, are kept for a 'none' backward).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.distributed as dist
import triton
import triton.language as tl

from lossbench.kernels._common import (
    INTERPRETED,
    REDUCTION_CODES,
    check_first_order,
    check_kernel_device,
    check_no_gradient_wanted,
    log1p,
    scale_unless_one_,
)
from lossbench.kernels.softmax import (
    _MEAN,
    _as_rows,
    _block_shape,
    _check_inplace,
    _class_weights,
    _fold_chunk,
    _gradient_coefficients,
    _inverse_denominators,
    _LossOptions,
    _row_terms,
    _store_gradient,
)
from lossbench.reference._checks import check_reduction
from lossbench.reference.vocab_parallel import (
    check_against_class_count,
    check_shard_arguments,
    resolve_class_offset,
)

# Rows per program of the elementwise ``_shares_kernel``: 4 KiB of fp32 per statistic.
SHARES_BLOCK = 1024
# The logits these kernels take: they compute in fp32 (the single-device kernels also take fp64).
_SHARD_DTYPES = (torch.float32, torch.float16, torch.bfloat16)


# --- Kernels ------------------------------------------------------------------------------------


@triton.jit
def _shard_chunk(
    logits_ptr,
    logits_row,
    stride_logits_c,
    local_weight_ptr,
    chunk,
    row_mask,
    n_classes,
    WEIGHTED: tl.constexpr,
):
    """One (rows, chunk) tile of a shard's logits in fp32 (-inf on masked lanes), the chunk's
    class weights (ones unless WEIGHTED) and its class mask."""
    class_mask = chunk < n_classes
    x = tl.load(
        logits_ptr + logits_row[:, None] + chunk[None, :].to(tl.int64) * stride_logits_c,
        mask=row_mask[:, None] & class_mask[None, :],
        other=float("-inf"),
    ).to(tl.float32)
    return x, _class_weights(local_weight_ptr, chunk, class_mask, WEIGHTED, False), class_mask


@triton.jit
def _row_offsets(
    rows,
    n_spatial,
    stride_logits_n,
    stride_logits_s,
    stride_target_n,
    stride_target_s,
    stride_grad_n,
    stride_grad_s,
    HAS_SPATIAL: tl.constexpr,
):
    """Offsets of each row's first logit, its target and its first gradient element.

    Row r is position s of sample n: element (n, c, s) sits at n*sN + c*sC + s*sS, so (N, C, d1,
    ...) inputs need no transposed copy. ``rows`` is int64: row * stride exceeds 2^31 once the
    slice holds more elements, and an int32 product would wrap.
    """
    if HAS_SPATIAL:
        sample = rows // n_spatial
        position = rows % n_spatial
        logits_row = sample * stride_logits_n + position * stride_logits_s
        target_at = sample * stride_target_n + position * stride_target_s
        grad_row = sample * stride_grad_n + position * stride_grad_s
    else:
        logits_row = rows * stride_logits_n
        target_at = rows * stride_target_n
        grad_row = rows * stride_grad_n
    return logits_row, target_at, grad_row


@triton.jit
def _shard_statistics_kernel(
    logits_ptr,  # (N, V, S) fp32/fp16/bf16, any strides: this rank's slice of the logits
    target_ptr,  # (N, S) integer, any strides: global class indices, or ignore_index
    local_weight_ptr,  # (V,) float: this rank's class weights; with HAS_WEIGHT and LABEL_SMOOTHING
    local_max_ptr,  # (R,) fp32, written: each row's largest logit on this rank, m_r
    partial_ptr,  # (3, R) fp32, written: rest_r, smooth_r (LABEL_SMOOTHING), true logit or 0
    n_rows,  # R = N*S
    n_classes,  # V: this rank's classes
    n_spatial,  # S = d1 x d2 x ..., 1 for (N, V) input
    stride_logits_n,
    stride_logits_c,
    stride_logits_s,
    stride_target_n,
    stride_target_s,
    class_offset,  # this rank's first class: its class c is global class class_offset + c
    ignore_index,
    HAS_WEIGHT: tl.constexpr,
    LABEL_SMOOTHING: tl.constexpr,
    HAS_SPATIAL: tl.constexpr,
    ROWS_PER_PROGRAM: tl.constexpr,
    BLOCK_C: tl.constexpr,
):
    """Each program reduces ROWS_PER_PROGRAM rows of this rank's slice, BLOCK_C classes at a time,
    to their local statistics (step 1 of the module docstring)."""
    rows = tl.program_id(0).to(tl.int64) * ROWS_PER_PROGRAM + tl.arange(0, ROWS_PER_PROGRAM)
    row_mask = rows < n_rows
    logits_row, target_at, _ = _row_offsets(
        rows,
        n_spatial,
        stride_logits_n,
        stride_logits_s,
        stride_target_n,
        stride_target_s,
        0,
        0,
        HAS_SPATIAL,
    )
    target = tl.load(target_ptr + target_at, mask=row_mask, other=0).to(tl.int64)
    local_target = target - class_offset
    held = row_mask & (target != ignore_index) & (local_target >= 0) & (local_target < n_classes)
    # Only the rank that holds the true class reads it; the others add 0 to the SUM.
    true_logit = tl.load(
        logits_ptr + logits_row + local_target * stride_logits_c, mask=held, other=0.0
    ).to(tl.float32)

    row_max = tl.full([ROWS_PER_PROGRAM], float("-inf"), tl.float32)
    rest = tl.zeros([ROWS_PER_PROGRAM], tl.float32)
    smooth = tl.zeros([ROWS_PER_PROGRAM], tl.float32)
    weight_seen = tl.zeros([ROWS_PER_PROGRAM], tl.float32)
    classes = tl.arange(0, BLOCK_C)
    for start in range(0, n_classes, BLOCK_C):
        chunk = start + classes
        x, class_weight, class_mask = _shard_chunk(
            logits_ptr,
            logits_row,
            stride_logits_c,
            local_weight_ptr,
            chunk,
            row_mask,
            n_classes,
            HAS_WEIGHT and LABEL_SMOOTHING,
        )
        row_max, rest, smooth, weight_seen = _fold_chunk(
            x,
            class_weight,
            class_mask,
            row_mask,
            row_max,
            rest,
            smooth,
            weight_seen,
            LABEL_SMOOTHING,
        )
    tl.store(local_max_ptr + rows, row_max, mask=row_mask)
    tl.store(partial_ptr + rows, rest, mask=row_mask)
    tl.store(partial_ptr + n_rows + rows, smooth, mask=row_mask)
    tl.store(partial_ptr + 2 * n_rows + rows, true_logit, mask=row_mask)


@triton.jit
def _shares_kernel(
    local_max_ptr,  # (R,) fp32: m_r
    global_max_ptr,  # (R,) fp32: m, the all-reduced max
    partial_ptr,  # (3, R) fp32: rest_r, smooth_r, true logit or 0 (from _shard_statistics_kernel)
    local_weight_total_ptr,  # () fp32: W_r, this rank's class weights summed; when HAS_WEIGHT
    shares_ptr,  # (K*R + 1,) fp32, written: rest share, ranks at m, true logit[, smooth share], V
    n_rows,  # R
    n_classes,  # V
    HAS_WEIGHT: tl.constexpr,
    LABEL_SMOOTHING: tl.constexpr,  # K = 4 with it, 3 without
    BLOCK: tl.constexpr,
):
    """Each program moves BLOCK rows' sums from this rank's max m_r to the global max m."""
    rows = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    row_mask = rows < n_rows
    local_max = tl.load(local_max_ptr + rows, mask=row_mask, other=0.0)
    global_max = tl.load(global_max_ptr + rows, mask=row_mask, other=0.0)
    rest = tl.load(partial_ptr + rows, mask=row_mask, other=0.0)
    true_logit = tl.load(partial_ptr + 2 * n_rows + rows, mask=row_mask, other=0.0)
    # sum_c exp(x_c - m) = (1 + rest_r) e^(m_r - m). At m_r == m the 1 is this rank's top class,
    # counted apart (at_max) so that the SUM of rest shares has only non-negative small terms.
    # m_r = -inf < m (a slice of masked classes) gives e^-inf = 0.
    at_max = local_max == global_max
    rest_share = tl.where(at_max, rest, (1.0 + rest) * tl.exp(local_max - global_max))
    tl.store(shares_ptr + rows, rest_share, mask=row_mask)
    tl.store(shares_ptr + n_rows + rows, at_max.to(tl.float32), mask=row_mask)
    tl.store(shares_ptr + 2 * n_rows + rows, true_logit, mask=row_mask)
    if LABEL_SMOOTHING:
        # sum_c w_c (m - x_c) = sum_c w_c (m_r - x_c) + (m - m_r) W_r: non-negative terms. A slice
        # with m_r = -inf already holds +inf (its classes have log p = -inf, as in torch).
        smooth = tl.load(partial_ptr + n_rows + rows, mask=row_mask, other=0.0)
        local_weight_total = tl.load(local_weight_total_ptr) if HAS_WEIGHT else n_classes * 1.0
        rebase = tl.where(local_max == float("-inf"), 0.0, global_max - local_max)
        tl.store(
            shares_ptr + 3 * n_rows + rows, smooth + rebase * local_weight_total, mask=row_mask
        )
    n_shares = 4 if LABEL_SMOOTHING else 3
    # C = sum_r V_r arrives with the SUM: exact in fp32 up to 2^24 classes.
    tl.store(shares_ptr + n_shares * n_rows, n_classes * 1.0, mask=tl.program_id(0) == 0)


@triton.jit
def _shard_loss_kernel(
    logits_ptr,  # (N, V, S) fp32/fp16/bf16, any strides: this rank's slice; read when COMPUTE_GRAD
    target_ptr,  # (N, S) integer: global class indices, or ignore_index
    class_weight_ptr,  # (C,) float: the full CE weight or focal alpha; read when HAS_WEIGHT
    local_weight_ptr,  # (V,) float: its entries of this rank's classes; with LABEL_SMOOTHING
    class_weight_total_ptr,  # () fp32: sum of class_weight; when HAS_WEIGHT and LABEL_SMOOTHING
    inverse_denominators_ptr,  # (2,) fp32: 1 / sum of w_y, 1 / count, non-ignored rows; 'mean'
    upstream_ptr,  # (R,) float, any stride: each row's upstream gradient; when BACKWARD
    global_max_ptr,  # (R,) fp32: m, the all-reduced max of each row
    shares_ptr,  # (K*R + 1,) fp32: the all-reduced shares of _shares_kernel, then C
    loss_ptr,  # (R,) fp32 or input dtype, written: each row's loss (share of a 'mean'); forward
    grad_ptr,  # (N, V, S) input dtype, its own strides, written: this rank's gradient slice
    n_rows,  # R
    n_classes,  # V
    n_spatial,  # S
    stride_logits_n,
    stride_logits_c,
    stride_logits_s,
    stride_target_n,
    stride_target_s,
    stride_grad_n,
    stride_grad_c,
    stride_grad_s,
    stride_upstream,  # 0 for the expanded ones of loss.sum().backward()
    class_offset,
    ignore_index,
    label_smoothing,
    z_loss_scale,
    gamma,
    focal_alpha,  # a float alpha of the focal loss, multiplying every class (1.0 otherwise)
    FOCAL: tl.constexpr,
    HAS_WEIGHT: tl.constexpr,
    LABEL_SMOOTHING: tl.constexpr,
    Z_LOSS: tl.constexpr,
    REDUCTION: tl.constexpr,  # REDUCTION_CODES; 'mean' reads inverse_denominators_ptr
    COMPUTE_GRAD: tl.constexpr,  # write the gradient slice
    BACKWARD: tl.constexpr,  # 'none' backward: upstream from memory, no loss
    HAS_SPATIAL: tl.constexpr,
    ROWS_PER_PROGRAM: tl.constexpr,
    BLOCK_C: tl.constexpr,
):
    """Each program computes ROWS_PER_PROGRAM rows' losses from their global statistics and, when
    COMPUTE_GRAD, writes their gradient on this rank's classes, BLOCK_C at a time."""
    rows = tl.program_id(0).to(tl.int64) * ROWS_PER_PROGRAM + tl.arange(0, ROWS_PER_PROGRAM)
    row_mask = rows < n_rows
    logits_row, target_at, grad_row = _row_offsets(
        rows,
        n_spatial,
        stride_logits_n,
        stride_logits_s,
        stride_target_n,
        stride_target_s,
        stride_grad_n,
        stride_grad_s,
        HAS_SPATIAL,
    )
    n_shares = 4 if LABEL_SMOOTHING else 3
    total_classes = tl.load(shares_ptr + n_shares * n_rows)  # C, fp32
    target = tl.load(target_ptr + target_at, mask=row_mask, other=0).to(tl.int64)
    ignored = target == ignore_index
    in_range = (target >= 0) & (target < total_classes.to(tl.int64))
    active = row_mask & in_range & ~ignored
    # A label outside [0, C) is rejected before launch on the CPU; on a GPU (a host sync to check)
    # its row's loss and gradient are nan, as on one device. It never indexes memory: every load
    # that takes the target as an offset is masked by `active`.
    out_of_range = ~ignored & ~in_range
    local_target = tl.where(active, target - class_offset, -1)  # -1: no class of this rank

    row_max = tl.load(global_max_ptr + rows, mask=row_mask, other=0.0)
    ranks_at_max = tl.load(shares_ptr + n_rows + rows, mask=row_mask, other=1.0)
    rest = tl.load(shares_ptr + rows, mask=row_mask, other=0.0) + (ranks_at_max - 1.0)
    log_sum = log1p(rest)
    true_logit = tl.load(shares_ptr + 2 * n_rows + rows, mask=row_mask, other=0.0)
    if LABEL_SMOOTHING:
        smooth = tl.load(shares_ptr + 3 * n_rows + rows, mask=row_mask, other=0.0)
    else:
        smooth = tl.zeros([ROWS_PER_PROGRAM], tl.float32)
    if HAS_WEIGHT:
        target_weight = tl.load(class_weight_ptr + target, mask=active, other=0.0).to(tl.float32)
    else:
        target_weight = tl.full([ROWS_PER_PROGRAM], 1.0, tl.float32)
    if HAS_WEIGHT and LABEL_SMOOTHING:
        weight_total = tl.load(class_weight_total_ptr)
    else:
        weight_total = total_classes

    if BACKWARD:
        scale_weighted = tl.load(
            upstream_ptr + rows * stride_upstream, mask=row_mask, other=0.0
        ).to(tl.float32)
        scale_count = scale_weighted
    elif REDUCTION == _MEAN:
        no_scale = tl.zeros([ROWS_PER_PROGRAM], tl.float32)
        scale_weighted = no_scale + tl.load(inverse_denominators_ptr)
        scale_count = no_scale + tl.load(inverse_denominators_ptr + 1)
    else:
        scale_weighted = tl.full([ROWS_PER_PROGRAM], 1.0, tl.float32)
        scale_count = scale_weighted

    # The single-device kernel's per-row terms, with C the global class count: every rank
    # computes the same loss from the same all-reduced statistics.
    loss, true_coef, prob_coef, class_coef, p_minus_one = _row_terms(
        row_max,
        log_sum,
        true_logit,
        target_weight,
        weight_total,
        smooth,
        scale_weighted,
        scale_count,
        total_classes,
        label_smoothing,
        z_loss_scale,
        gamma,
        focal_alpha,
        FOCAL,
        LABEL_SMOOTHING,
        Z_LOSS,
    )
    if not BACKWARD:
        # An ignored row adds 0 x the 'mean' scale: nan when no row counts (torch's 0 / 0).
        ignored_loss = 0.0 * scale_count if FOCAL else 0.0 * scale_weighted
        loss = tl.where(active, loss, tl.where(out_of_range, float("nan"), ignored_loss))
        tl.store(loss_ptr + rows, loss.to(loss_ptr.dtype.element_ty), mask=row_mask)

    if COMPUTE_GRAD:
        finite_max = tl.where(row_max == float("-inf"), 0.0, row_max)
        prob_scale, target_value, class_coef = _gradient_coefficients(
            true_coef, prob_coef, class_coef, p_minus_one, log_sum, active, out_of_range
        )
        classes = tl.arange(0, BLOCK_C)
        for start in range(0, n_classes, BLOCK_C):
            chunk = start + classes
            x, class_weight, class_mask = _shard_chunk(
                logits_ptr,
                logits_row,
                stride_logits_c,
                local_weight_ptr,
                chunk,
                row_mask,
                n_classes,
                HAS_WEIGHT and LABEL_SMOOTHING,
            )
            _store_gradient(
                grad_ptr,
                grad_row,
                stride_grad_c,
                x,
                chunk,
                class_mask,
                class_weight,
                row_mask,
                local_target,
                finite_max,
                prob_scale,
                target_value,
                class_coef,
                LABEL_SMOOTHING,
            )


# --- Launchers ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Shard:
    """Where this rank's classes sit among all, and the group that holds the others."""

    process_group: dist.ProcessGroup
    class_offset: int


def _local_weight(
    class_weight: torch.Tensor | None, n_classes: int, shard: _Shard
) -> torch.Tensor | None:
    """The entries of the full (C,) weight (or alpha) of this rank's V classes: a view."""
    if class_weight is None:
        return None
    return class_weight.narrow(0, shard.class_offset, n_classes)


def _global_statistics(
    logits: torch.Tensor,
    target: torch.Tensor,
    class_weight: torch.Tensor | None,
    options: _LossOptions,
    shard: _Shard,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Steps 1-4: each row's global max (R,) and the all-reduced shares (K*R + 1,), both fp32.

    # I/O: step 1 reads R*V*b logits, R targets and R*b true-class logits, writes 4R fp32;
    # step 3 reads 4R fp32 (5R with label smoothing), writes 3R + 1 (4R + 1).
    # Collectives: MAX of R fp32, then SUM of 3R + 1 fp32 (4R + 1 with label smoothing).
    """
    n_samples, n_classes, n_spatial = logits.shape
    n_rows = n_samples * n_spatial
    device = logits.device
    smoothing = options.label_smoothing > 0
    local_weight = _local_weight(class_weight, n_classes, shard)
    local_max = torch.empty(n_rows, dtype=torch.float32, device=device)
    partial = torch.empty((3, n_rows), dtype=torch.float32, device=device)
    if n_rows:
        shape = _block_shape(n_rows, n_classes)
        _shard_statistics_kernel[(triton.cdiv(n_rows, shape.rows_per_program),)](
            logits,
            target,
            local_weight,
            local_max,
            partial,
            n_rows,
            n_classes,
            n_spatial,
            *logits.stride(),
            *target.stride(),
            shard.class_offset,
            options.ignore_index,
            HAS_WEIGHT=class_weight is not None,
            LABEL_SMOOTHING=smoothing,
            HAS_SPATIAL=n_spatial > 1,
            ROWS_PER_PROGRAM=shape.rows_per_program,
            BLOCK_C=shape.block_c,
            num_warps=shape.num_warps,
        )
    global_max = local_max.clone()
    dist.all_reduce(global_max, op=dist.ReduceOp.MAX, group=shard.process_group)

    local_weight_total = None
    if smoothing and local_weight is not None:
        local_weight_total = local_weight.sum(dtype=torch.float32)
    n_shares = 4 if smoothing else 3
    shares = torch.empty(n_shares * n_rows + 1, dtype=torch.float32, device=device)
    _shares_kernel[(max(1, triton.cdiv(n_rows, SHARES_BLOCK)),)](
        local_max,
        global_max,
        partial,
        local_weight_total,
        shares,
        n_rows,
        n_classes,
        HAS_WEIGHT=local_weight_total is not None,
        LABEL_SMOOTHING=smoothing,
        BLOCK=SHARES_BLOCK,
    )
    dist.all_reduce(shares, op=dist.ReduceOp.SUM, group=shard.process_group)
    return global_max, shares


def _launch_loss(
    logits: torch.Tensor,
    target: torch.Tensor,
    class_weight: torch.Tensor | None,
    options: _LossOptions,
    shard: _Shard,
    global_max: torch.Tensor,
    shares: torch.Tensor,
    *,
    loss: torch.Tensor | None = None,
    grad: torch.Tensor | None = None,
    upstream: torch.Tensor | None = None,
    inverse_denominators: torch.Tensor | None = None,
    backward: bool = False,
) -> None:
    """Step 5: ``_shard_loss_kernel`` over the rows of ``logits`` (N, V, S), ``target`` (N, S).

    # I/O: read R targets, 4R + 1 fp32 statistics (5R + 1 with label smoothing) and, with a
    # weight, R weights; write R losses (forward). With the gradient: read the R*V*b logits once
    # more and write R*V*b gradient ('none' backward: + R upstream gradients, no loss).
    """
    n_samples, n_classes, n_spatial = logits.shape
    n_rows = n_samples * n_spatial
    if n_rows == 0:
        return
    shape = _block_shape(n_rows, n_classes)
    weight_total = None
    if class_weight is not None and options.label_smoothing > 0:
        weight_total = class_weight.sum(dtype=torch.float32)
    grad_strides = grad.stride() if grad is not None else (0, 0, 0)
    _shard_loss_kernel[(triton.cdiv(n_rows, shape.rows_per_program),)](
        logits,
        target,
        class_weight,
        _local_weight(class_weight, n_classes, shard),
        weight_total,
        inverse_denominators,
        upstream,
        global_max,
        shares,
        loss,
        grad,
        n_rows,
        n_classes,
        n_spatial,
        *logits.stride(),
        *target.stride(),
        *grad_strides,
        upstream.stride(0) if upstream is not None else 0,
        shard.class_offset,
        options.ignore_index,
        options.label_smoothing,
        options.z_loss_scale,
        options.gamma,
        options.focal_alpha,
        FOCAL=options.focal,
        HAS_WEIGHT=class_weight is not None,
        LABEL_SMOOTHING=options.label_smoothing > 0,
        Z_LOSS=options.z_loss_scale > 0,
        REDUCTION=REDUCTION_CODES[options.reduction],
        COMPUTE_GRAD=grad is not None,
        BACKWARD=backward,
        HAS_SPATIAL=n_spatial > 1,
        ROWS_PER_PROGRAM=shape.rows_per_program,
        BLOCK_C=shape.block_c,
        num_warps=shape.num_warps,
    )


def _check_classes_on_the_host(
    input: torch.Tensor,
    target: torch.Tensor,
    class_weight: torch.Tensor | None,
    options: _LossOptions,
    shard: _Shard,
    shares: torch.Tensor,
) -> None:
    """On the CPU (the interpreter), where reading C and the labels is free: the slice, the
    per-class vector and the labels against C. On a GPU that would be a host sync; a label outside
    [0, C) gives a nan row there instead."""
    if not INTERPRETED:
        return
    n_local = input.shape[0 if input.dim() == 1 else 1]
    name = "alpha" if options.focal else "weight"
    check_against_class_count(
        int(shares[-1].item()),
        shard.class_offset,
        n_local,
        target,
        options.ignore_index,
        **{name: class_weight},
    )


# --- Autograd ---------------------------------------------------------------------------------


class _VocabParallelLossFunction(torch.autograd.Function):
    """Cross-entropy or focal loss of this rank's slice of the classes; gradient to ``input``."""

    @staticmethod
    def forward(
        ctx: torch.autograd.function.FunctionCtx,
        input: torch.Tensor,
        target: torch.Tensor,
        class_weight: torch.Tensor | None,
        options: _LossOptions,
        shard: _Shard,
    ) -> torch.Tensor:
        logits, rows_target = _as_rows(input, target)
        n_rows = rows_target.numel()
        reduction = options.reduction
        wants_grad = options.compute_grad
        global_max, shares = _global_statistics(logits, rows_target, class_weight, options, shard)
        _check_classes_on_the_host(input, target, class_weight, options, shard, shares)
        grad = None
        if wants_grad and reduction != "none":
            grad = (
                input.detach()
                if options.inplace_backward
                else torch.empty(input.shape, dtype=input.dtype, device=input.device)
            )
        loss_dtype = input.dtype if reduction == "none" else torch.float32
        row_losses = torch.empty(n_rows, dtype=loss_dtype, device=input.device)
        inverse_denominators = None
        if reduction == "mean":
            inverse_denominators = _inverse_denominators(
                rows_target, class_weight, options, torch.float32
            )
        _launch_loss(
            logits,
            rows_target,
            class_weight,
            options,
            shard,
            global_max,
            shares,
            loss=row_losses,
            grad=None if grad is None else grad.view(logits.shape),
            inverse_denominators=inverse_denominators,
        )
        ctx.options = options
        ctx.shard = shard
        ctx.gradient = grad
        ctx.spent = False
        if grad is not None and options.inplace_backward:
            torch.autograd.graph.increment_version(input)
        if reduction == "none":
            if wants_grad:
                ctx.save_for_backward(input, target, class_weight, global_max, shares)
            return row_losses.view(target.shape)
        if reduction == "mean" and n_rows == 0:
            return torch.full((), math.nan, dtype=input.dtype, device=input.device)
        return row_losses.sum().to(input.dtype)

    @staticmethod
    def backward(
        ctx: torch.autograd.function.FunctionCtx, grad_output: torch.Tensor
    ) -> tuple[torch.Tensor, None, None, None, None]:
        check_first_order("reference.vocab_parallel")
        options = ctx.options
        if options.reduction != "none":
            grad = ctx.gradient
            if grad is None:
                raise RuntimeError(
                    "backward called twice: this loss's gradient was computed in the forward "
                    "pass and handed out by the first backward; call the loss again"
                )
            ctx.gradient = None
            return scale_unless_one_(grad, grad_output), None, None, None, None
        if ctx.spent:
            raise RuntimeError(
                "backward called twice on a loss with inplace_backward=True: the first backward "
                "wrote the gradient over the logits it would need; call the loss again"
            )
        input, target, class_weight, global_max, shares = ctx.saved_tensors
        logits, rows_target = _as_rows(input, target)
        if options.inplace_backward:
            grad = input.detach()
            ctx.spent = True
        else:
            grad = torch.empty(input.shape, dtype=input.dtype, device=input.device)
        _launch_loss(
            logits,
            rows_target,
            class_weight,
            options,
            ctx.shard,
            global_max,
            shares,
            grad=grad.view(logits.shape),
            upstream=grad_output.reshape(-1),
            backward=True,
        )
        if options.inplace_backward:
            torch.autograd.graph.increment_version(input)
        return grad, None, None, None, None


# --- Functional API ---------------------------------------------------------------------------


def _check_kernel_arguments(
    input: torch.Tensor,
    target: torch.Tensor,
    reduction: str,
    process_group: object,
    class_offset: int | None,
    **per_class: torch.Tensor | None,
) -> int:
    """Raise before any collective unless this rank's arguments suit the kernels."""
    check_kernel_device(input=input, target=target, **per_class)
    class_dim = check_shard_arguments(input, target, process_group, class_offset, **per_class)
    if input.dtype not in _SHARD_DTYPES:
        raise TypeError(
            f"the vocabulary-parallel kernels take fp32, fp16 or bf16 logits, got {input.dtype}; "
            "reference.vocab_parallel computes in any floating dtype"
        )
    check_reduction(reduction)
    check_no_gradient_wanted("reference.vocab_parallel", **per_class)
    return class_dim


def cross_entropy(
    input: torch.Tensor,
    target: torch.Tensor,
    weight: torch.Tensor | None = None,
    *,
    ignore_index: int = -100,
    reduction: str = "mean",
    label_smoothing: float = 0.0,
    z_loss_scale: float = 0.0,
    inplace_backward: bool = False,
    process_group: dist.ProcessGroup,
    class_offset: int | None = None,
) -> torch.Tensor:
    """Fused cross-entropy of logits split by class over ``process_group``.

    The arguments and results of ``kernels.softmax.cross_entropy`` (class-index targets), with
    ``input`` this rank's slice of the classes, ``target`` global class indices and ``weight`` the
    full (C,) vector; see the module docstring and reference.vocab_parallel for the layout and
    ``class_offset``. ``label_smoothing`` spreads eps over all C classes.

    Raises:
        ValueError, TypeError: as ``kernels.softmax.cross_entropy``, plus a bad ``class_offset``,
            a ``process_group`` that is no ProcessGroup, and (on the CPU, where C can be read for
            free) a slice, weight or label that does not fit the C classes of all ranks.
        NotImplementedError: class-probability targets.
    """
    class_dim = _check_kernel_arguments(
        input, target, reduction, process_group, class_offset, weight=weight
    )
    if not 0.0 <= label_smoothing <= 1.0:
        raise ValueError(f"label_smoothing must be in [0, 1], got {label_smoothing}")
    if not 0.0 <= z_loss_scale < math.inf:
        raise ValueError(f"z_loss_scale must be finite and >= 0, got {z_loss_scale}")
    compute_grad = input.requires_grad and torch.is_grad_enabled()
    if inplace_backward and compute_grad:
        _check_inplace(input)
    offset = resolve_class_offset(
        input, target, class_dim, process_group, class_offset, weight=weight
    )
    options = _LossOptions(
        focal=False,
        ignore_index=int(ignore_index),
        reduction=reduction,
        compute_grad=compute_grad,
        label_smoothing=float(label_smoothing),
        z_loss_scale=float(z_loss_scale),
        inplace_backward=inplace_backward,
    )
    shard = _Shard(process_group, offset)
    return _VocabParallelLossFunction.apply(input, target, weight, options, shard)


def softmax_focal_loss(
    input: torch.Tensor,
    target: torch.Tensor,
    alpha: float | torch.Tensor | None = None,
    gamma: float = 2.0,
    ignore_index: int = -100,
    reduction: str = "mean",
    *,
    process_group: dist.ProcessGroup,
    class_offset: int | None = None,
) -> torch.Tensor:
    """Fused focal loss of logits split by class over ``process_group``.

    The arguments and results of ``kernels.softmax.softmax_focal_loss``, with ``input`` this
    rank's slice of the classes, ``target`` global class indices and a tensor ``alpha`` the full
    (C,) vector; see the module docstring.

    Raises:
        ValueError, TypeError: as ``kernels.softmax.softmax_focal_loss``, plus a bad
            ``class_offset``, a ``process_group`` that is no ProcessGroup, and (CPU) a slice,
            alpha or label that does not fit the C classes of all ranks.
    """
    alpha_tensor = alpha if isinstance(alpha, torch.Tensor) else None
    class_dim = _check_kernel_arguments(
        input, target, reduction, process_group, class_offset, alpha=alpha_tensor
    )
    if not 0.0 <= gamma < math.inf:
        raise ValueError(f"gamma must be finite and >= 0, got {gamma}")
    if alpha_tensor is None and alpha is not None and not alpha >= 0:
        raise ValueError(f"alpha must be >= 0, got {alpha}; use alpha=None for no weighting")
    if alpha_tensor is not None and INTERPRETED and bool((alpha_tensor < 0).any()):
        raise ValueError("alpha must be >= 0 for every class; use alpha=None for no weighting")
    offset = resolve_class_offset(
        input, target, class_dim, process_group, class_offset, alpha=alpha_tensor
    )
    options = _LossOptions(
        focal=True,
        ignore_index=int(ignore_index),
        reduction=reduction,
        compute_grad=input.requires_grad and torch.is_grad_enabled(),
        gamma=float(gamma),
        focal_alpha=1.0 if alpha is None or alpha_tensor is not None else float(alpha),
    )
    shard = _Shard(process_group, offset)
    return _VocabParallelLossFunction.apply(input, target, alpha_tensor, options, shard)
