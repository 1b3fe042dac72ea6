"""Fused linear cross-entropy: the classifier layer and the loss, without the N x V logits.

The same function as reference/linear.py, computed the way Cut Cross-Entropy works (Wijmans et
al., arXiv 2411.09009): the logits of a row block and a class block are a ``tl.dot`` tile in
registers, used at once and dropped. Shapes: hidden states ``input`` (N, D), (..., D) or (D,),
flattened to N rows; classifier ``linear_weight`` (V, D) and ``linear_bias`` (V,); class-index
``target`` of ``input``'s shape without D. Per row, with x its features:

    a = W x + b,   z = c tanh(a / c) (Gemma 2's soft-cap; z = a without it),   loss = CE(z, y)

with every option of kernels/softmax.py's cross-entropy (weight, ignore_index, label smoothing,
z-loss, the three reductions), whose per-row math (``_row_terms``, ``_gradient_coefficients``) and
online softmax (``_fold_chunk``) this module calls rather than copies.

Forward (two launches):

1. ``_partial_logsumexp_kernel``, grid (row blocks, class splits): a program computes logit tiles
   of its BLOCK_N rows over its split of the classes, BLOCK_V at a time (``tl.dot`` over D in
   BLOCK_D steps, fp32 accumulation), and folds each tile into an online softmax: the running max
   m, rest = sum_c exp(z_c - m) - 1 (the 1 is the max itself, so that log-sum = log1p(rest) keeps
   p_y close to 1 exact), the smoothing sum sum_c w_c (m - z_c), and the target's logit when it
   falls in the split. Splitting the classes gives a short batch enough programs to fill the GPU.
2. ``_row_loss_kernel``, grid (row blocks): merges each row's splits, then computes its loss and
   its gradient coefficients (``_row_terms``), already divided by the 'mean' denominator, and
   keeps (m, log-sum, coefficients) for the backward pass: 20 bytes a row.

Backward (one launch per class slab): ``_backward_kernel``, grid (row blocks x class blocks),
recomputes its logit tile, forms d loss / d z from the row's coefficients,

    dz_j = u (T (p_j - [j == y]) + B p_j - K w_j),   p_j = exp(z_j - m - log-sum)

(u the upstream gradient), times 1 - (z_j / c)^2 through the soft-cap, and accumulates, in fp32,
d input += dz @ W_block, d W_block += dz^T @ x_block and d b_block += sum over rows of dz, with
``tl.atomic_add``: blocks of rows and of classes meet in the same gradient rows, as in CCE, whose
locks we replace by fp32 atomics. fp32 atomics make the last bits of the gradients depend on the
order in which programs finish (run to run on a GPU; the interpreter runs programs in order).

Memory, beyond the inputs and their gradients (the bound the docstring of
:func:`linear_cross_entropy` states): forward 20 N bytes for the saved rows, plus 20 N S bytes of
split statistics freed before it returns (S splits, S N <= N + FORWARD_PROGRAMS_PER_SM x SMs x
BLOCK_N); backward, for an input narrower than fp32, an fp32 accumulator of d input (4 N D bytes;
fp32 input accumulates in its gradient), and for a weight narrower than fp32, an fp32 accumulator
of one slab of d W, at most max(WEIGHT_SLAB_BYTES, BLOCK_V D 4) bytes (fp32 accumulation of the
weight gradient whatever its dtype, since bf16 accumulation made training diverge in
Liger-Kernel #512 and OLMo-core #370, without a second V x D buffer: the classes are processed a
slab at a time and each slab is cast into the gradient when done), plus 4 V bytes for d b.
Nothing of size N x V exists at any time.

Precision: the logits accumulate in fp32. bf16 and fp16 operands multiply exactly on the tensor
cores; fp32 operands follow torch's own setting for fp32 matmuls
(``torch.backends.cuda.matmul.fp32_precision``, or ``allow_tf32`` on a torch without it): IEEE
fp32 by default, exact to fp32 rounding as torch's default cuBLAS SGEMM, or TF32 (10-bit
mantissas, about 1e-3 relative error in the logits) when the user allowed TF32 for torch's
matmuls too. The interpreter multiplies in fp32 whatever is asked (it has no TF32). For 16-bit
inputs dz enters the two backward products as a sum of 16-bit terms (3 for bf16, 2 for fp16:
``GRAD_SPLITS``), one tensor-core product each, so that every gradient is exact to its final
rounding, entry by entry; ``gradient_precision="input"`` rounds dz once to the input dtype
instead, as torch's own gradient of 16-bit logits is: a third of the backward products' work,
and errors far beyond an entry's size wherever its sum cancels.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import triton
import triton.language as tl
from torch.autograd.function import once_differentiable

from lossbench.kernels._common import (
    INTERPRETED,
    REDUCTION_CODES,
    check_kernel_device,
    check_no_gradient_wanted,
    multiprocessor_count,
    writes_only,
)
from lossbench.kernels._common import expm1 as _expm1
from lossbench.kernels._common import log1p as _log1p
from lossbench.kernels.softmax import (
    _class_weights,
    _fold_chunk,
    _gradient_coefficients,
    _inverse_denominators,
    _LossOptions,
    _row_terms,
)
from lossbench.reference import linear as reference_linear
from lossbench.reference._checks import (
    check_class_index_values,
    check_linear_layer,
    check_reduction,
)

_KERNEL_DTYPES = (torch.float32, torch.float16, torch.bfloat16)
_MEAN: tl.constexpr = tl.constexpr(REDUCTION_CODES["mean"])

# Fields of the per-split statistics the forward kernel writes, (splits, _SPLIT_FIELDS, N) fp32:
# row max, rest, smoothing sum, weight seen, target logit.
_SPLIT_FIELDS = 5
# Fields of the per-row statistics kept for backward, (_ROW_FIELDS, N) fp32: row max, log-sum,
# and the gradient coefficients prob_scale, target_value, class_coef of _gradient_coefficients.
_ROW_FIELDS = 5


@dataclass(frozen=True)
class _Tiles:
    """The tile of one kernel: rows x classes, the depth of each ``tl.dot`` step over D, warps
    and software-pipelining stages."""

    block_n: int
    block_v: int
    block_d: int
    num_warps: int
    num_stages: int
    # Backward only: the depth of the d input and d W products over D (the width of their
    # fp32 partial tiles and of their atomic adds).
    grad_block_d: int = 0


# Tiles per kernel and operand width (bytes). Chosen offline for sm_90 (Triton 3.8's ptxas, through
# tests/test_kernels_compile.py's machinery), the largest that do not spill: 16-bit operands take
# 128 rows x 64 classes x 64 features with 8 warps (242-255 registers a thread, forward and
# backward; 128 x 128 spills 170-370 bytes forward and 1-2.6 KB backward, even at 16 warps), the
# backward's two products 32 features at a time (64 spills); fp32 operands multiply on FMA units
# (IEEE, see the module docstring), which hold more registers a product: 64 x 64, 16 features a
# step forward (183 registers; 32 spills 20 bytes) and 32 backward (186; 128 x 64 spills 36-544
# bytes). CCE 25.1.1's tuned tiles are 256 x 128 x 32 forward and 128 x 128 x 32 backward with
# lock-protected adds instead of atomics. Not timed: no GPU was available when this was written.
_FORWARD_TILES = {
    2: _Tiles(block_n=128, block_v=64, block_d=64, num_warps=8, num_stages=3),
    4: _Tiles(block_n=64, block_v=64, block_d=16, num_warps=8, num_stages=2),
}
_BACKWARD_TILES = {
    2: _Tiles(block_n=128, block_v=64, block_d=64, num_warps=8, num_stages=3, grad_block_d=32),
    4: _Tiles(block_n=64, block_v=64, block_d=32, num_warps=8, num_stages=2, grad_block_d=16),
}
# 16-bit terms dz is split into for the backward products under gradient_precision="fp32"
# (_backward_kernel): the remainder after k bf16 terms is 2^-9k of dz, after k fp16 terms 2^-12k,
# so 3 and 2 terms leave dz exact to about fp32's 2^-24. Measured in the interpreter (bf16, 12
# shapes x 4 seeds, D up to 512, V up to 2048): worst gradient entry 0.39 of its elementwise
# allowance with 3 terms, which is the final rounding to bf16 alone, 0.56 with 2 terms, 339 with 1.
GRAD_SPLITS = {torch.bfloat16: 3, torch.float16: 2, torch.float32: 1}
# Rows per program of _row_loss_kernel: elementwise over S x 5 loads a row, 4 warps x 32 threads
# x 8 rows.
ROWS_PER_LOSS_PROGRAM = 1024
# The forward splits the classes until the grid holds this many programs per SM (derived, not
# measured: while one program folds its tile into the online softmax, another keeps the tensor
# cores busy).
FORWARD_PROGRAMS_PER_SM = 2
# Row blocks that run one after another over the same classes in the backward grid, so that a
# class block's weight rows are still in L2 for the next row block (the grouped ordering of
# Triton's matmul tutorial and CCE).
GROUP_ROW_BLOCKS = 8
# The fp32 accumulator of one slab of d W for weights narrower than fp32: 64 MiB holds 4096
# classes at D = 4096 (64 class blocks of 64, a grid of 64 x N / 128 programs per launch), so a
# launch still fills the GPU; derived, not measured.
WEIGHT_SLAB_BYTES = 64 * 2**20


# --- Kernels ----------------------------------------------------------------------------------


@triton.jit
def _tanh(u):
    """tanh(u) = sign(u) t / (2 - t) with t = 1 - exp(-2|u|): no overflow, exact near 0."""
    t = -_expm1(-2.0 * tl.abs(u))
    magnitude = t / (2.0 - t)
    return tl.where(u < 0.0, -magnitude, magnitude)


@triton.jit
def _logits_tile(
    x_ptr,
    w_ptr,
    b_ptr,
    rows,
    row_mask,
    classes,
    class_mask,
    n_features,
    stride_x_n,
    stride_x_d,
    stride_w_v,
    stride_w_d,
    softcap,
    HAS_BIAS: tl.constexpr,
    SOFTCAP: tl.constexpr,
    DOT_PRECISION: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_V: tl.constexpr,
    BLOCK_D: tl.constexpr,
):
    """The (BLOCK_N, BLOCK_V) fp32 logits z of ``rows`` x ``classes`` (int64 rows: row x stride
    exceeds 2^31 once N x D does): x W^T over D in BLOCK_D steps, + b, soft-capped.
    Masked rows and classes read zeros."""
    features = tl.arange(0, BLOCK_D)
    x_rows = x_ptr + rows[:, None] * stride_x_n
    w_columns = w_ptr + classes[None, :].to(tl.int64) * stride_w_v
    logits = tl.zeros((BLOCK_N, BLOCK_V), tl.float32)
    for start in range(0, n_features, BLOCK_D):
        feature = start + features
        feature_mask = feature < n_features
        x = tl.load(
            x_rows + feature[None, :] * stride_x_d,
            mask=row_mask[:, None] & feature_mask[None, :],
            other=0.0,
        )
        w = tl.load(
            w_columns + feature[:, None] * stride_w_d,
            mask=feature_mask[:, None] & class_mask[None, :],
            other=0.0,
        )
        logits = tl.dot(x, w, logits, input_precision=DOT_PRECISION)
    if HAS_BIAS:
        logits += tl.load(b_ptr + classes, mask=class_mask, other=0.0).to(tl.float32)[None, :]
    if SOFTCAP:
        logits = softcap * _tanh(logits / softcap)
    return logits


@triton.jit
def _partial_logsumexp_kernel(
    x_ptr,  # (N, D) fp32/fp16/bf16, any strides: the hidden states
    w_ptr,  # (V, D) x's dtype, any strides: the classifier
    b_ptr,  # (V,) x's dtype, contiguous: the bias; read when HAS_BIAS
    target_ptr,  # (N,) integer, any stride: class indices, or ignore_index
    class_weight_ptr,  # (V,) x's dtype, contiguous: per-class weight; read when HAS_WEIGHT
    split_stats_ptr,  # (S, 5, N) fp32, contiguous: what this kernel writes, per split and row
    n_rows,
    n_classes,
    n_features,
    tiles_per_split,  # class blocks of BLOCK_V per split (the last split may have fewer)
    stride_x_n,
    stride_x_d,
    stride_w_v,
    stride_w_d,
    stride_target,
    softcap,
    HAS_BIAS: tl.constexpr,
    HAS_WEIGHT: tl.constexpr,  # the smoothing sum weighs classes (only read with LABEL_SMOOTHING)
    LABEL_SMOOTHING: tl.constexpr,
    SOFTCAP: tl.constexpr,
    DOT_PRECISION: tl.constexpr,  # "ieee" or "tf32": how tl.dot multiplies fp32 operands
    BLOCK_N: tl.constexpr,
    BLOCK_V: tl.constexpr,
    BLOCK_D: tl.constexpr,
):
    """Each program folds the logits of BLOCK_N rows and one split of the classes, BLOCK_V
    classes at a time, into each row's max, rest, smoothing sum, weight seen and target logit."""
    rows = tl.program_id(0).to(tl.int64) * BLOCK_N + tl.arange(0, BLOCK_N)
    row_mask = rows < n_rows
    split = tl.program_id(1)
    # -1 matches no class: padding rows, and ignored or out-of-range labels, have no target here.
    target = tl.load(target_ptr + rows * stride_target, mask=row_mask, other=-1).to(tl.int64)

    row_max = tl.full([BLOCK_N], float("-inf"), tl.float32)
    rest = tl.zeros([BLOCK_N], tl.float32)
    smooth = tl.zeros([BLOCK_N], tl.float32)
    weight_seen = tl.zeros([BLOCK_N], tl.float32)
    target_logit = tl.zeros([BLOCK_N], tl.float32)
    first_tile = split * tiles_per_split
    end_tile = tl.minimum(first_tile + tiles_per_split, tl.cdiv(n_classes, BLOCK_V))
    for tile in range(first_tile, end_tile):
        classes = tile * BLOCK_V + tl.arange(0, BLOCK_V)
        class_mask = classes < n_classes
        z = _logits_tile(
            x_ptr,
            w_ptr,
            b_ptr,
            rows,
            row_mask,
            classes,
            class_mask,
            n_features,
            stride_x_n,
            stride_x_d,
            stride_w_v,
            stride_w_d,
            softcap,
            HAS_BIAS,
            SOFTCAP,
            DOT_PRECISION,
            BLOCK_N,
            BLOCK_V,
            BLOCK_D,
        )
        # The target's logit is taken from the very tile the max and rest see, so that
        # m - z_y is exactly 0 when y holds the max.
        is_target = (classes[None, :] == target[:, None]) & class_mask[None, :]
        target_logit += tl.sum(tl.where(is_target, z, 0.0), axis=1)
        z = tl.where(class_mask[None, :], z, float("-inf"))
        class_weight = _class_weights(
            class_weight_ptr, classes, class_mask, HAS_WEIGHT and LABEL_SMOOTHING, False
        )
        row_max, rest, smooth, weight_seen = _fold_chunk(
            z,
            class_weight,
            class_mask,
            row_mask,
            row_max,
            rest,
            smooth,
            weight_seen,
            LABEL_SMOOTHING,
        )

    stats = split_stats_ptr + split.to(tl.int64) * 5 * n_rows + rows
    tl.store(stats, row_max, mask=row_mask)
    tl.store(stats + n_rows, rest, mask=row_mask)
    tl.store(stats + 2 * n_rows, smooth, mask=row_mask)
    tl.store(stats + 3 * n_rows, weight_seen, mask=row_mask)
    tl.store(stats + 4 * n_rows, target_logit, mask=row_mask)


@triton.jit
def _merge_splits(max_a, rest_a, smooth_a, seen_a, max_b, rest_b, smooth_b, seen_b):
    """Two splits' (max, rest, smoothing sum, weight seen) of the same rows as one.

    Each split has sum_c exp(z_c - m) = 1 + rest. The split holding the larger max keeps its rest
    and takes the other's 1 + rest rescaled to that max: no 1 is added and taken away, so a rest
    below fp32's spacing at 1 survives. The smoothing sums sum_c w_c (m - z_c) move to the new
    max by + (m_new - m) x (weight seen): non-negative terms only.
    """
    new_max = tl.maximum(max_a, max_b)
    a_leads = max_a >= max_b
    rest = tl.where(
        a_leads,
        rest_a + (1.0 + rest_b) * tl.exp(max_b - new_max),
        rest_b + (1.0 + rest_a) * tl.exp(max_a - new_max),
    )
    smooth = smooth_a + smooth_b + (new_max - max_a) * seen_a + (new_max - max_b) * seen_b
    return new_max, rest, smooth, seen_a + seen_b


@triton.jit
def _row_loss_kernel(
    split_stats_ptr,  # (S, 5, N) fp32: _partial_logsumexp_kernel's output
    target_ptr,  # (N,) integer, any stride
    class_weight_ptr,  # (V,) float: per-class weight; read when HAS_WEIGHT
    inverse_denominators_ptr,  # (2,) fp32: 1 / sum of w_y, 1 / count, non-ignored rows; 'mean'
    loss_ptr,  # (N,) fp32 ('mean', 'sum') or the input dtype ('none'): each row's loss
    row_stats_ptr,  # (5, N) fp32: max, log-sum, prob_scale, target_value, class_coef; when
    #                 COMPUTE_GRAD
    n_rows,
    n_classes,
    n_splits,
    stride_target,
    ignore_index,
    label_smoothing,
    z_loss_scale,
    HAS_WEIGHT: tl.constexpr,
    LABEL_SMOOTHING: tl.constexpr,
    Z_LOSS: tl.constexpr,
    REDUCTION: tl.constexpr,
    COMPUTE_GRAD: tl.constexpr,
    BLOCK_ROWS: tl.constexpr,
):
    """Each program merges the splits of BLOCK_ROWS rows and writes their losses (their shares
    of a 'mean') and, when COMPUTE_GRAD, what backward needs of each."""
    rows = tl.program_id(0).to(tl.int64) * BLOCK_ROWS + tl.arange(0, BLOCK_ROWS)
    row_mask = rows < n_rows
    stats = split_stats_ptr + rows
    row_max = tl.load(stats, mask=row_mask, other=0.0)
    rest = tl.load(stats + n_rows, mask=row_mask, other=0.0)
    smooth = tl.load(stats + 2 * n_rows, mask=row_mask, other=0.0)
    weight_seen = tl.load(stats + 3 * n_rows, mask=row_mask, other=0.0)
    target_logit = tl.load(stats + 4 * n_rows, mask=row_mask, other=0.0)
    for _ in range(1, n_splits):
        stats += 5 * n_rows  # the next split (64-bit pointer arithmetic)
        row_max, rest, smooth, weight_seen = _merge_splits(
            row_max,
            rest,
            smooth,
            weight_seen,
            tl.load(stats, mask=row_mask, other=0.0),
            tl.load(stats + n_rows, mask=row_mask, other=0.0),
            tl.load(stats + 2 * n_rows, mask=row_mask, other=0.0),
            tl.load(stats + 3 * n_rows, mask=row_mask, other=0.0),
        )
        # The target lies in one split; the others add 0.
        target_logit += tl.load(stats + 4 * n_rows, mask=row_mask, other=0.0)

    target = tl.load(target_ptr + rows * stride_target, mask=row_mask, other=0).to(tl.int64)
    ignored = target == ignore_index
    in_range = (target >= 0) & (target < n_classes)
    active = row_mask & in_range & ~ignored
    # Out-of-range labels are rejected before launch on the CPU; on a GPU checking would need a
    # host sync, so such a row's loss and gradient become nan (and with them d W and d b).
    out_of_range = ~ignored & ~in_range
    if HAS_WEIGHT:
        target_weight = tl.load(class_weight_ptr + target, mask=active, other=0.0).to(tl.float32)
    else:
        target_weight = tl.full([BLOCK_ROWS], 1.0, tl.float32)
    if REDUCTION == _MEAN:
        no_scale = tl.zeros([BLOCK_ROWS], tl.float32)
        scale_weighted = no_scale + tl.load(inverse_denominators_ptr)
        scale_count = no_scale + tl.load(inverse_denominators_ptr + 1)
    else:
        scale_weighted = tl.full([BLOCK_ROWS], 1.0, tl.float32)
        scale_count = scale_weighted

    log_sum = _log1p(rest)
    # weight_seen is sum_c w_c over all classes (V without a weight): W of the smoothing term.
    loss, true_coef, prob_coef, class_coef, p_minus_one = _row_terms(
        row_max,
        log_sum,
        target_logit,
        target_weight,
        weight_seen,
        smooth,
        scale_weighted,
        scale_count,
        n_classes,
        label_smoothing,
        z_loss_scale,
        0.0,  # gamma: cross-entropy, not focal
        1.0,  # focal alpha
        False,
        LABEL_SMOOTHING,
        Z_LOSS,
    )
    # An ignored row adds 0 x the 'mean' scale: 0 x 1/0 = nan when no row counts, torch's 0/0.
    loss = tl.where(active, loss, tl.where(out_of_range, float("nan"), 0.0 * scale_weighted))
    tl.store(loss_ptr + rows, loss.to(loss_ptr.dtype.element_ty), mask=row_mask)
    if COMPUTE_GRAD:
        prob_scale, target_value, class_coef = _gradient_coefficients(
            true_coef, prob_coef, class_coef, p_minus_one, log_sum, active, out_of_range
        )
        tl.store(row_stats_ptr + rows, row_max, mask=row_mask)
        tl.store(row_stats_ptr + n_rows + rows, log_sum, mask=row_mask)
        tl.store(row_stats_ptr + 2 * n_rows + rows, prob_scale, mask=row_mask)
        tl.store(row_stats_ptr + 3 * n_rows + rows, target_value, mask=row_mask)
        tl.store(row_stats_ptr + 4 * n_rows + rows, class_coef, mask=row_mask)


@triton.jit
def _backward_kernel(
    x_ptr,  # (N, D) fp32/fp16/bf16, any strides: the hidden states
    w_ptr,  # (V, D) x's dtype, any strides: the classifier
    b_ptr,  # (V,) x's dtype, contiguous: the bias; read when HAS_BIAS
    target_ptr,  # (N,) integer, any stride
    class_weight_ptr,  # (V,) x's dtype, contiguous: per-class weight; read when LABEL_SMOOTHING
    row_stats_ptr,  # (5, N) fp32: _row_loss_kernel's max, log-sum and coefficients
    upstream_ptr,  # (N,) or (1,) float: the upstream gradient, per row ('none') or stride 0
    grad_x_ptr,  # (N, D) fp32, contiguous: d input accumulator; when COMPUTE_GRAD_X
    grad_w_ptr,  # (slab_classes, D) fp32, contiguous: d W of classes first_class...; when
    #              COMPUTE_GRAD_W
    grad_b_ptr,  # (slab_classes,) fp32: d b of the same classes; when COMPUTE_GRAD_B
    n_rows,
    n_classes,
    n_features,
    first_class,  # the slab: classes first_class ... first_class + slab_classes - 1
    slab_classes,
    stride_x_n,
    stride_x_d,
    stride_w_v,
    stride_w_d,
    stride_target,
    stride_upstream,  # 0 for the scalar upstream of 'mean' and 'sum'
    softcap,
    filter_eps,
    HAS_BIAS: tl.constexpr,
    HAS_WEIGHT: tl.constexpr,
    LABEL_SMOOTHING: tl.constexpr,
    SOFTCAP: tl.constexpr,
    FILTER: tl.constexpr,  # skip tiles whose probabilities are all below filter_eps
    COMPUTE_GRAD_X: tl.constexpr,
    COMPUTE_GRAD_W: tl.constexpr,
    COMPUTE_GRAD_B: tl.constexpr,
    DOT_PRECISION: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_V: tl.constexpr,
    BLOCK_D: tl.constexpr,
    GRAD_BLOCK_D: tl.constexpr,
    GRAD_SPLITS: tl.constexpr,  # 16-bit terms dz is split into for the products (1 for fp32)
    GROUP_N: tl.constexpr,
):
    """Each program recomputes the logits of BLOCK_N rows x BLOCK_V classes of the slab, and adds
    their share of d input, d W and d b."""
    # Grouped order: GROUP_N row blocks take every class block of the slab in turn, so that
    # programs running together share weight rows (and hidden-state rows) in L2.
    pid = tl.program_id(0)
    n_row_blocks = tl.cdiv(n_rows, BLOCK_N)
    n_class_blocks = tl.cdiv(slab_classes, BLOCK_V)
    programs_per_group = GROUP_N * n_class_blocks
    first_row_block = (pid // programs_per_group) * GROUP_N
    group_rows = tl.minimum(n_row_blocks - first_row_block, GROUP_N)
    row_block = first_row_block + (pid % programs_per_group) % group_rows
    class_block = (pid % programs_per_group) // group_rows

    rows = row_block.to(tl.int64) * BLOCK_N + tl.arange(0, BLOCK_N)
    row_mask = rows < n_rows
    slab_offsets = class_block * BLOCK_V + tl.arange(0, BLOCK_V)
    class_mask = slab_offsets < slab_classes
    classes = first_class + slab_offsets
    z = _logits_tile(
        x_ptr,
        w_ptr,
        b_ptr,
        rows,
        row_mask,
        classes,
        class_mask,
        n_features,
        stride_x_n,
        stride_x_d,
        stride_w_v,
        stride_w_d,
        softcap,
        HAS_BIAS,
        SOFTCAP,
        DOT_PRECISION,
        BLOCK_N,
        BLOCK_V,
        BLOCK_D,
    )
    row_max = tl.load(row_stats_ptr + rows, mask=row_mask, other=0.0)
    prob_scale = tl.load(row_stats_ptr + 2 * n_rows + rows, mask=row_mask, other=0.0)
    target_value = tl.load(row_stats_ptr + 3 * n_rows + rows, mask=row_mask, other=0.0)
    target = tl.load(target_ptr + rows * stride_target, mask=row_mask, other=-1).to(tl.int64)
    upstream = tl.load(upstream_ptr + rows * stride_upstream, mask=row_mask, other=0.0)

    # dL/dz_j = T (p_j - [j == y]) + B p_j - K w_j, folded by _gradient_coefficients into
    # prob_scale exp(z_j - m) off the target, target_value on it, less K w_j (smoothing).
    exp_shifted = tl.exp(z - row_max[:, None])
    is_target = classes[None, :] == target[:, None]
    grad = tl.where(is_target, target_value[:, None], prob_scale[:, None] * exp_shifted)
    if LABEL_SMOOTHING:
        class_coef = tl.load(row_stats_ptr + 4 * n_rows + rows, mask=row_mask, other=0.0)
        class_weight = _class_weights(class_weight_ptr, classes, class_mask, HAS_WEIGHT, False)
        grad -= class_coef[:, None] * class_weight[None, :]
    grad *= upstream.to(tl.float32)[:, None]
    if SOFTCAP:
        # z = c tanh(a / c): dz/da = 1 - tanh^2 = 1 - (z / c)^2.
        capped = z / softcap
        grad *= 1.0 - capped * capped
    # tl.where, not a product: padding rows may hold inf x 0 = nan.
    valid = row_mask[:, None] & class_mask[None, :]
    grad = tl.where(valid, grad, 0.0)

    keep = True
    if FILTER:
        # CCE's gradient filter: a tile whose probabilities all fall below filter_eps adds
        # nothing. Target entries count as probability 1, so a tile holding a target is kept.
        log_sum = tl.load(row_stats_ptr + n_rows + rows, mask=row_mask, other=0.0)
        probability = tl.where(is_target, 1.0, exp_shifted * tl.exp(-log_sum)[:, None])
        largest = tl.max(tl.max(tl.where(valid, probability, 0.0), axis=1), axis=0)
        keep = largest >= filter_eps
    if keep:
        if COMPUTE_GRAD_B:
            tl.atomic_add(
                grad_b_ptr + slab_offsets, tl.sum(grad, axis=0), mask=class_mask, sem="relaxed"
            )
        # The products run on the tensor cores in the operands' dtype. Rounded to bf16 once, dz
        # would carry 2^-9 relative errors into sums that cancel to entries far below their
        # terms (d input_d = sum_j dz_j W_jd): such an entry is then wrong by far more than its
        # own size. So 16-bit dz goes in as the sum of GRAD_SPLITS 16-bit terms (the first
        # dz rounded, each next one the rounded remainder: 2^-9 less each time for bf16), one
        # product each, accumulated in fp32; fp32 dz goes in whole.
        operand_type = x_ptr.dtype.element_ty
        scaled = grad
        if operand_type == tl.float16:
            # fp16's normal numbers stop at 6.1e-5: a smaller dz, or a remainder, would be a
            # subnormal of fixed absolute spacing 6e-8 and lose its low terms. So the tile is
            # scaled to a largest |dz| near 2^14 first (its maximum, 65504, is 2^16 - 2^5), and
            # each partial product scaled back, in fp32.
            largest_dz = tl.max(tl.max(tl.abs(grad), axis=1), axis=0)
            tile_scale = tl.where(largest_dz > 0.0, 16384.0 / largest_dz, 1.0)
            scaled = grad * tile_scale
        dz_high = scaled.to(operand_type)
        remainder = scaled - dz_high.to(tl.float32)
        dz_middle = remainder.to(operand_type)
        dz_low = (remainder - dz_middle.to(tl.float32)).to(operand_type)
        features = tl.arange(0, GRAD_BLOCK_D)
        for start in range(0, n_features, GRAD_BLOCK_D):
            feature = start + features
            feature_mask = feature < n_features
            if COMPUTE_GRAD_X:
                # d input[rows] += dz @ W[classes]
                w = tl.load(
                    w_ptr
                    + classes[:, None].to(tl.int64) * stride_w_v
                    + feature[None, :] * stride_w_d,
                    mask=class_mask[:, None] & feature_mask[None, :],
                    other=0.0,
                )
                part = tl.dot(dz_high, w, input_precision=DOT_PRECISION)
                if GRAD_SPLITS >= 2:
                    part = tl.dot(dz_middle, w, part)
                if GRAD_SPLITS >= 3:
                    part = tl.dot(dz_low, w, part)
                if operand_type == tl.float16:
                    part = part / tile_scale
                tl.atomic_add(
                    grad_x_ptr + rows[:, None] * n_features + feature[None, :],
                    part,
                    mask=row_mask[:, None] & feature_mask[None, :],
                    sem="relaxed",
                )
            if COMPUTE_GRAD_W:
                # d W[classes] += dz^T @ input[rows]
                x = tl.load(
                    x_ptr + rows[:, None] * stride_x_n + feature[None, :] * stride_x_d,
                    mask=row_mask[:, None] & feature_mask[None, :],
                    other=0.0,
                )
                part = tl.dot(tl.trans(dz_high), x, input_precision=DOT_PRECISION)
                if GRAD_SPLITS >= 2:
                    part = tl.dot(tl.trans(dz_middle), x, part)
                if GRAD_SPLITS >= 3:
                    part = tl.dot(tl.trans(dz_low), x, part)
                if operand_type == tl.float16:
                    part = part / tile_scale
                tl.atomic_add(
                    grad_w_ptr + slab_offsets[:, None].to(tl.int64) * n_features + feature[None, :],
                    part,
                    mask=class_mask[:, None] & feature_mask[None, :],
                    sem="relaxed",
                )


# --- Launchers --------------------------------------------------------------------------------


@dataclass(frozen=True)
class _LinearOptions:
    """The non-tensor arguments of one call, checked: the cross-entropy's, as kernels/softmax.py
    takes them, and the linear layer's."""

    loss: _LossOptions
    softcap: float | None
    filter_eps: float | None
    dot_precision: str
    gradient_precision: str


# torch.compile cannot trace the flag's getter: it reads the flag once, when it traces the call,
# and keeps the result (a flag changed afterwards takes effect in eager calls only).
@torch.compiler.assume_constant_result
def _fp32_dot_precision() -> str:
    """How ``tl.dot`` multiplies fp32 operands: as torch's fp32 matmuls on CUDA do.

    "ieee" (fp32 products, torch's default) unless the user allowed TF32 for torch's matmuls:
    ``torch.backends.cuda.matmul.fp32_precision`` where torch has it and it is set (reading the
    legacy flag after setting the new one raises in torch 2.14), else the legacy ``allow_tf32``.
    """
    matmul = torch.backends.cuda.matmul
    precision = getattr(matmul, "fp32_precision", "none")
    if precision in ("ieee", "tf32"):
        return precision
    return "tf32" if matmul.allow_tf32 else "ieee"


def _forward_splits(
    n_rows: int, n_tiles: int, tiles: _Tiles, device: torch.device
) -> tuple[int, int]:
    """(splits, class blocks per split): enough programs for FORWARD_PROGRAMS_PER_SM per SM,
    never an empty split."""
    row_blocks = triton.cdiv(n_rows, tiles.block_n)
    wanted = triton.cdiv(FORWARD_PROGRAMS_PER_SM * multiprocessor_count(device), row_blocks)
    splits = max(1, min(n_tiles, wanted))
    tiles_per_split = triton.cdiv(n_tiles, splits)
    return triton.cdiv(n_tiles, tiles_per_split), tiles_per_split


def _launch_forward(
    x: torch.Tensor,
    linear_weight: torch.Tensor,
    linear_bias: torch.Tensor | None,
    target: torch.Tensor,
    class_weight: torch.Tensor | None,
    options: _LinearOptions,
    loss: torch.Tensor,
    row_stats: torch.Tensor | None,
    inverse_denominators: torch.Tensor | None,
) -> None:
    """Write each row's loss into ``loss`` (N,) and, when given, ``row_stats`` (5, N).

    ``x`` (N, D) and ``linear_weight`` (V, D) with any strides; ``target`` (N,).
    """
    # I/O: the matmul reads x once per class block and W once per row block (2 N D V flops;
    # L2 serves the repeats); writes 20 N S bytes of split statistics, reads them back with N
    # targets, writes N losses (+ 20 N bytes of row statistics). No N x V traffic.
    n_rows, n_features = x.shape
    n_classes = linear_weight.shape[0]
    tiles = _FORWARD_TILES[x.element_size()]
    splits, tiles_per_split = _forward_splits(
        n_rows, triton.cdiv(n_classes, tiles.block_v), tiles, x.device
    )
    split_stats = torch.empty((splits, _SPLIT_FIELDS, n_rows), dtype=torch.float32, device=x.device)
    ce = options.loss
    has_weight = class_weight is not None
    _partial_logsumexp_kernel[(triton.cdiv(n_rows, tiles.block_n), splits)](
        x,
        linear_weight,
        linear_bias,
        target,
        class_weight,
        split_stats,
        n_rows,
        n_classes,
        n_features,
        tiles_per_split,
        *x.stride(),
        *linear_weight.stride(),
        target.stride(0),
        options.softcap,
        HAS_BIAS=linear_bias is not None,
        HAS_WEIGHT=has_weight,
        LABEL_SMOOTHING=ce.label_smoothing > 0,
        SOFTCAP=options.softcap is not None,
        DOT_PRECISION=options.dot_precision,
        BLOCK_N=tiles.block_n,
        BLOCK_V=tiles.block_v,
        BLOCK_D=tiles.block_d,
        num_warps=tiles.num_warps,
        num_stages=tiles.num_stages,
    )
    _row_loss_kernel[(triton.cdiv(n_rows, ROWS_PER_LOSS_PROGRAM),)](
        split_stats,
        target,
        class_weight,
        inverse_denominators,
        loss,
        row_stats,
        n_rows,
        n_classes,
        splits,
        target.stride(0),
        ce.ignore_index,
        ce.label_smoothing,
        ce.z_loss_scale,
        HAS_WEIGHT=has_weight,
        LABEL_SMOOTHING=ce.label_smoothing > 0,
        Z_LOSS=ce.z_loss_scale > 0,
        REDUCTION=REDUCTION_CODES[ce.reduction],
        COMPUTE_GRAD=row_stats is not None,
        BLOCK_ROWS=ROWS_PER_LOSS_PROGRAM,
        num_warps=4,
    )


def weight_slab_classes(n_classes: int, n_features: int) -> int:
    """Classes per slab of the fp32 d W accumulator (weights narrower than fp32): a whole number
    of class blocks within WEIGHT_SLAB_BYTES of fp32 rows of D, at least one block, at most every
    class."""
    block_v = _BACKWARD_TILES[2].block_v
    blocks = max(1, WEIGHT_SLAB_BYTES // (4 * n_features * block_v))
    return min(n_classes, blocks * block_v)


def _launch_backward(
    x: torch.Tensor,
    linear_weight: torch.Tensor,
    linear_bias: torch.Tensor | None,
    target: torch.Tensor,
    class_weight: torch.Tensor | None,
    row_stats: torch.Tensor,
    upstream: torch.Tensor,
    options: _LinearOptions,
    grad_x: torch.Tensor | None,
    grad_w: torch.Tensor | None,
    grad_b: torch.Tensor | None,
) -> None:
    """Write d input (N, D), d linear_weight (V, D) and d linear_bias (V,) into ``grad_x``,
    ``grad_w`` and ``grad_b``, each where given (in the dtype of what it differentiates);
    ``upstream`` (N,) per row, or (1,) for a reduced loss.
    """
    # I/O per slab of C classes: the matmul reads x and W_slab again (2 N D C flops to recompute
    # the logits, 2 N D C for each product), adds N x D to d input and C x D to d W with fp32
    # atomics once per class block and per row block respectively; then reads the slab's fp32
    # accumulator and writes it in W's dtype. Reads 20 N row statistics + N targets.
    n_rows, n_features = x.shape
    n_classes = linear_weight.shape[0]
    device = x.device
    if n_rows == 0:
        for grad in (grad_x, grad_w, grad_b):
            if grad is not None:
                grad.zero_()
        return

    def accumulator(grad: torch.Tensor | None) -> torch.Tensor | None:
        """An fp32 sum to add into: ``grad`` itself when it is fp32."""
        if grad is None:
            return None
        if grad.dtype == torch.float32:
            return grad.zero_()
        return torch.zeros(grad.shape, dtype=torch.float32, device=device)

    grad_x_sum, grad_b_sum = accumulator(grad_x), accumulator(grad_b)
    slab = n_classes
    weight_in_place = grad_w is not None and grad_w.dtype == torch.float32
    grad_w_sum = None
    if weight_in_place:
        grad_w.zero_()
    elif grad_w is not None:
        slab = weight_slab_classes(n_classes, n_features)
        grad_w_sum = torch.empty((slab, n_features), dtype=torch.float32, device=device)
    tiles = _BACKWARD_TILES[x.element_size()]
    ce = options.loss
    for first_class in range(0, n_classes, slab):
        slab_classes = min(slab, n_classes - first_class)
        slab_grad_w = None
        if weight_in_place:
            slab_grad_w = grad_w[first_class : first_class + slab_classes]
        elif grad_w is not None:
            slab_grad_w = grad_w_sum[:slab_classes].zero_()
        grid = (triton.cdiv(n_rows, tiles.block_n) * triton.cdiv(slab_classes, tiles.block_v),)
        _backward_kernel[grid](
            x,
            linear_weight,
            linear_bias,
            target,
            class_weight,
            row_stats,
            upstream,
            grad_x_sum,
            slab_grad_w,
            None if grad_b_sum is None else grad_b_sum[first_class:],
            n_rows,
            n_classes,
            n_features,
            first_class,
            slab_classes,
            *x.stride(),
            *linear_weight.stride(),
            target.stride(0),
            upstream.stride(0) if ce.reduction == "none" else 0,
            options.softcap,
            options.filter_eps,
            HAS_BIAS=linear_bias is not None,
            HAS_WEIGHT=class_weight is not None,
            LABEL_SMOOTHING=ce.label_smoothing > 0,
            SOFTCAP=options.softcap is not None,
            FILTER=options.filter_eps is not None,
            COMPUTE_GRAD_X=grad_x is not None,
            COMPUTE_GRAD_W=grad_w is not None,
            COMPUTE_GRAD_B=grad_b is not None,
            DOT_PRECISION=options.dot_precision,
            BLOCK_N=tiles.block_n,
            BLOCK_V=tiles.block_v,
            BLOCK_D=tiles.block_d,
            GRAD_BLOCK_D=tiles.grad_block_d,
            GRAD_SPLITS=GRAD_SPLITS[x.dtype] if options.gradient_precision == "fp32" else 1,
            GROUP_N=GROUP_ROW_BLOCKS,
            num_warps=tiles.num_warps,
            num_stages=tiles.num_stages,
        )
        if grad_w_sum is not None:
            grad_w[first_class : first_class + slab_classes].copy_(slab_grad_w)
    for grad, total in ((grad_x, grad_x_sum), (grad_b, grad_b_sum)):
        if grad is not None and grad is not total:
            grad.copy_(total)


# --- Custom ops: what torch.compile and CUDA graphs see ----------------------------------------
# As in kernels/softmax.py: each launcher is a torch.library custom op that writes into tensors
# its caller allocated and declares them mutated, so that torch.compile treats it as one opaque
# node (its fake implementation does nothing) and traces the rest without a graph break. The
# options travel as plain values (``_option_values``); the label check, which reads values, runs
# inside the forward op in the interpreter only (on a GPU it would be a host sync).


def _option_values(options: _LinearOptions) -> tuple:
    """The options as the ops take them, in their order."""
    ce = options.loss
    return (
        ce.ignore_index,
        ce.reduction,
        ce.label_smoothing,
        ce.z_loss_scale,
        options.softcap,
        options.filter_eps,
        options.dot_precision,
        options.gradient_precision,
    )


def _options_from_values(
    ignore_index: int,
    reduction: str,
    label_smoothing: float,
    z_loss_scale: float,
    softcap: float | None,
    filter_eps: float | None,
    dot_precision: str,
    gradient_precision: str,
    compute_grad: bool,
) -> _LinearOptions:
    return _LinearOptions(
        loss=_LossOptions(
            focal=False,
            ignore_index=ignore_index,
            reduction=reduction,
            compute_grad=compute_grad,
            label_smoothing=label_smoothing,
            z_loss_scale=z_loss_scale,
        ),
        softcap=softcap,
        filter_eps=filter_eps,
        dot_precision=dot_precision,
        gradient_precision=gradient_precision,
    )


@torch.library.custom_op(
    "lossbench::linear_cross_entropy_forward", mutates_args=("loss", "row_stats")
)
def _linear_forward_op(
    x: torch.Tensor,
    linear_weight: torch.Tensor,
    linear_bias: torch.Tensor | None,
    target: torch.Tensor,
    class_weight: torch.Tensor | None,
    inverse_denominators: torch.Tensor | None,
    loss: torch.Tensor,
    row_stats: torch.Tensor | None,
    ignore_index: int,
    reduction: str,
    label_smoothing: float,
    z_loss_scale: float,
    softcap: float | None,
    filter_eps: float | None,
    dot_precision: str,
    gradient_precision: str,
) -> None:
    """The forward launches; see ``_launch_forward``."""
    if INTERPRETED:
        check_class_index_values(target, linear_weight.shape[0], ignore_index)
    options = _options_from_values(
        ignore_index,
        reduction,
        label_smoothing,
        z_loss_scale,
        softcap,
        filter_eps,
        dot_precision,
        gradient_precision,
        row_stats is not None,
    )
    if x.shape[0]:
        _launch_forward(
            x,
            linear_weight,
            linear_bias,
            target,
            class_weight,
            options,
            loss,
            row_stats,
            inverse_denominators,
        )


@torch.library.custom_op(
    "lossbench::linear_cross_entropy_backward", mutates_args=("grad_x", "grad_w", "grad_b")
)
def _linear_backward_op(
    x: torch.Tensor,
    linear_weight: torch.Tensor,
    linear_bias: torch.Tensor | None,
    target: torch.Tensor,
    class_weight: torch.Tensor | None,
    row_stats: torch.Tensor,
    upstream: torch.Tensor,
    grad_x: torch.Tensor | None,
    grad_w: torch.Tensor | None,
    grad_b: torch.Tensor | None,
    ignore_index: int,
    reduction: str,
    label_smoothing: float,
    z_loss_scale: float,
    softcap: float | None,
    filter_eps: float | None,
    dot_precision: str,
    gradient_precision: str,
) -> None:
    """The backward launches; see ``_launch_backward``."""
    options = _options_from_values(
        ignore_index,
        reduction,
        label_smoothing,
        z_loss_scale,
        softcap,
        filter_eps,
        dot_precision,
        gradient_precision,
        True,
    )
    _launch_backward(
        x,
        linear_weight,
        linear_bias,
        target,
        class_weight,
        row_stats,
        upstream,
        options,
        grad_x,
        grad_w,
        grad_b,
    )


_linear_forward_op.register_fake(writes_only)
_linear_backward_op.register_fake(writes_only)


# --- Autograd ---------------------------------------------------------------------------------


class _LinearCrossEntropyFunction(torch.autograd.Function):
    """Linear cross-entropy; the gradient flows to input, linear_weight and linear_bias."""

    @staticmethod
    def forward(
        ctx: torch.autograd.function.FunctionCtx,
        input: torch.Tensor,
        linear_weight: torch.Tensor,
        linear_bias: torch.Tensor | None,
        target: torch.Tensor,
        class_weight: torch.Tensor | None,
        options: _LinearOptions,
    ) -> torch.Tensor:
        # (..., D) -> (N, D): a view when the leading dimensions merge, else a copy.
        x = input.reshape(-1, input.shape[-1])
        rows_target = target.reshape(-1)
        n_rows = x.shape[0]
        ce = options.loss
        loss_dtype = input.dtype if ce.reduction == "none" else torch.float32
        row_losses = torch.empty(n_rows, dtype=loss_dtype, device=input.device)
        row_stats = None
        if ce.compute_grad:
            row_stats = torch.empty((_ROW_FIELDS, n_rows), dtype=torch.float32, device=x.device)
        inverse_denominators = None
        if ce.reduction == "mean":
            inverse_denominators = _inverse_denominators(
                rows_target, class_weight, ce, torch.float32
            )
        _linear_forward_op(
            x,
            linear_weight,
            linear_bias,
            rows_target,
            class_weight,
            inverse_denominators,
            row_losses,
            row_stats,
            *_option_values(options),
        )
        ctx.options = options
        ctx.input_shape = input.shape
        if ce.compute_grad:
            ctx.save_for_backward(
                x, linear_weight, linear_bias, rows_target, class_weight, row_stats
            )
        if ce.reduction == "none":
            return row_losses.view(target.shape)
        if ce.reduction == "mean" and n_rows == 0:
            return torch.full((), math.nan, dtype=input.dtype, device=input.device)
        return row_losses.sum().to(input.dtype)

    @staticmethod
    @once_differentiable
    def backward(
        ctx: torch.autograd.function.FunctionCtx, grad_output: torch.Tensor
    ) -> tuple[torch.Tensor | None, ...]:
        x, linear_weight, linear_bias, target, class_weight, row_stats = ctx.saved_tensors
        # Contiguous, whatever the layout of what they differentiate: the kernel writes rows.
        grad_x, grad_w, grad_b = (
            torch.empty(tensor.shape, dtype=tensor.dtype, device=tensor.device) if needed else None
            for tensor, needed in zip(
                (x, linear_weight, linear_bias), ctx.needs_input_grad[:3], strict=True
            )
        )
        _linear_backward_op(
            x,
            linear_weight,
            linear_bias,
            target,
            class_weight,
            row_stats,
            grad_output.reshape(-1),
            grad_x,
            grad_w,
            grad_b,
            *_option_values(ctx.options),
        )
        if grad_x is not None:
            grad_x = grad_x.view(ctx.input_shape)
        return grad_x, grad_w, grad_b, None, None, None


# --- Functional API ---------------------------------------------------------------------------


def _check_filter_eps(
    filter_eps: float | str | None, dtype: torch.dtype, label_smoothing: float
) -> float | None:
    """The filter threshold: None, a float in (0, 1), or CCE's "auto" = eps(dtype) / 32."""
    if filter_eps is None:
        return None
    if filter_eps == "auto":
        return torch.finfo(dtype).eps / 32
    if isinstance(filter_eps, str) or not 0.0 < filter_eps < 1.0:
        raise ValueError(
            f"filter_eps must be None, 'auto' or a float in (0, 1), got {filter_eps!r}"
        )
    if label_smoothing > 0:
        raise ValueError(
            "filter_eps with label_smoothing > 0: smoothing gives every class a gradient "
            "-(label_smoothing / V) w_c that no probability bounds, which the filter would drop"
        )
    return float(filter_eps)


def linear_cross_entropy(
    input: torch.Tensor,
    linear_weight: torch.Tensor,
    target: torch.Tensor,
    *,
    linear_bias: torch.Tensor | None = None,
    weight: torch.Tensor | None = None,
    ignore_index: int = -100,
    reduction: str = "mean",
    label_smoothing: float = 0.0,
    z_loss_scale: float = 0.0,
    softcap: float | None = None,
    filter_eps: float | str | None = None,
    gradient_precision: str = "fp32",
) -> torch.Tensor:
    """Fused linear cross-entropy: ``reference.linear_cross_entropy``'s results and gradients
    (``F.linear_cross_entropy``'s, plus z-loss and soft-capping), never materialising the logits.

    Args:
        input: hidden states, fp32, fp16 or bf16, shape (N, D), (..., D) or (D,); any strides
            (a copy is made when the leading dimensions cannot merge into one).
        linear_weight: the classifier (V, D), ``input``'s dtype, any strides.
        target: class indices, integer, ``input``'s shape without D, in [0, V) or equal to
            ``ignore_index``. A floating target of shape (..., V) holds class probabilities: it
            is itself N x V, and runs ``reference.linear_cross_entropy`` (plain torch ops,
            materialised logits), without z-loss or the filter.
        linear_bias: (V,), ``input``'s dtype, or None.
        weight: per-class weight (V,), ``input``'s dtype, or None; a constant (no gradient).
        ignore_index: targets equal to it add 0 and are not counted by 'mean'.
        reduction: 'none' (per-row losses, the target's shape, ``input``'s dtype), 'sum', or
            'mean' = sum / sum_i w_{y_i} over non-ignored rows (their count without weight); nan
            when no row counts, as torch.
        label_smoothing: e in [0, 1], as torch.
        z_loss_scale: z >= 0: + z lse(logits)^2 per non-ignored row, averaged over their count
            under 'mean' (Liger-Kernel's convention), as ``kernels.cross_entropy``.
        softcap: None, or c > 0: logits become c tanh(logits / c) before the loss (Gemma 2).
        filter_eps: None (exact, the default), "auto" (CCE's eps(dtype) / 32: 2.4e-4 for bf16,
            3.1e-5 for fp16, 3.7e-9 for fp32) or a float in (0, 1): backward skips a tile of
            BLOCK_N rows x BLOCK_V classes (128 x 64 for 16-bit inputs, 64 x 64 for fp32) when
            every probability in it is below filter_eps and it holds no target, as CCE's
            ``filter_eps`` does (without CCE's vocabulary sorting). Each skipped gradient entry
            is below filter_eps x |its row's coefficient|, but there can be many: with
            near-uniform probabilities over V > 1 / filter_eps classes (an untrained classifier)
            nearly every tile is skipped, the gradients lose most of their sum_c p_c W_c part,
            and they fail the agreement check. Exact only where the skipped mass is negligible,
            as in a trained model's peaked softmax. Not with label smoothing.
        gradient_precision: how d loss / d logits enters the two backward products with 16-bit
            inputs. "fp32" (the default, exact): as the sum of 3 bf16 (2 fp16) terms, one tensor-
            core product each, so that only the final rounding of each gradient to its dtype
            remains: the backward then executes 2 + 4 x 3 = 14 N D V flops in bf16 (10 in fp16)
            instead of 6. "input": rounded once to the input dtype, as torch's own gradient of
            bf16 logits is, one product each (6 N D V, CCE's count); its gradients pass the
            normwise check but not the elementwise one, where an entry is a sum that cancels far
            below its terms (measured: 339 times the bf16 allowance). fp32 inputs take dz whole
            either way.

    Returns:
        the loss in ``input``'s dtype: a scalar for 'mean' and 'sum', per-row losses for 'none'.

    Memory beyond the inputs and their gradients: O(N) plus a workspace that does not grow with
    N x V. Kept from forward to backward: 20 N bytes. During forward: 20 S N bytes of split
    statistics, S N <= N + FORWARD_PROGRAMS_PER_SM x SMs x BLOCK_N (N + 33792 rows on an
    H200's 132 SMs with 16-bit inputs). During backward: 4 N D bytes of fp32 d input accumulator
    when input is narrower than fp32 (fp32 input accumulates in its own gradient), one fp32 slab
    of d W when linear_weight is narrower than fp32, at most max(WEIGHT_SLAB_BYTES = 64 MiB,
    256 D) bytes, and 4 V bytes of fp32 d b. No logits, and no chunk of N x V probabilities.

    Numerics: fp32 accumulation of the logits and of every gradient (the weight's included,
    whatever the dtype), each gradient rounded once to its tensor's dtype; fp32 operands multiply
    in IEEE fp32 unless torch's fp32 matmuls are allowed TF32 (see the module docstring). fp32
    atomics make the gradients' last bits vary from run to run on a GPU. Labels out of range:
    ``ValueError`` on the CPU (interpreter); on a GPU, checking would need a host sync, so the
    loss and every gradient become nan instead.

    Raises:
        ValueError: shapes that do not fit (named), bad reduction, label_smoothing outside [0, 1],
            z_loss_scale < 0, softcap <= 0, a bad filter_eps, tensors off the kernels' device,
            labels out of range (CPU).
        TypeError: tensors not fp32/fp16/bf16 or of different dtypes, a non-integer index target.
        NotImplementedError: a per-class ``weight`` that requires grad.
    """
    is_probabilities = check_linear_layer(
        input, linear_weight, target, linear_bias, weight, softcap
    )
    if is_probabilities:
        if z_loss_scale != 0.0 or filter_eps is not None:
            raise ValueError(
                "z_loss_scale and filter_eps apply to class-index targets; a floating target "
                "holds class probabilities and runs the reference path"
            )
        return reference_linear.linear_cross_entropy(
            input,
            linear_weight,
            target,
            linear_bias=linear_bias,
            weight=weight,
            ignore_index=ignore_index,
            reduction=reduction,
            label_smoothing=label_smoothing,
            softcap=softcap,
        )
    check_kernel_device(
        input=input,
        linear_weight=linear_weight,
        target=target,
        linear_bias=linear_bias,
        weight=weight,
    )
    if input.dtype not in _KERNEL_DTYPES:
        raise TypeError(
            f"the kernels take fp32, fp16 or bf16 tensors, got {input.dtype}; "
            "reference.linear_cross_entropy computes in any floating dtype"
        )
    check_reduction(reduction)
    if not 0.0 <= label_smoothing <= 1.0:
        raise ValueError(f"label_smoothing must be in [0, 1], got {label_smoothing}")
    if not 0.0 <= z_loss_scale < math.inf:
        raise ValueError(f"z_loss_scale must be finite and >= 0, got {z_loss_scale}")
    filter_eps = _check_filter_eps(filter_eps, input.dtype, label_smoothing)
    if gradient_precision not in ("fp32", "input"):
        raise ValueError(
            f"gradient_precision must be 'fp32' or 'input', got {gradient_precision!r}"
        )
    check_no_gradient_wanted("reference.linear_cross_entropy", weight=weight)
    grad_enabled = torch.is_grad_enabled()
    options = _LinearOptions(
        loss=_LossOptions(
            focal=False,
            ignore_index=int(ignore_index),
            reduction=reduction,
            compute_grad=grad_enabled
            and any(t is not None and t.requires_grad for t in (input, linear_weight, linear_bias)),
            label_smoothing=float(label_smoothing),
            z_loss_scale=float(z_loss_scale),
        ),
        softcap=None if softcap is None else float(softcap),
        filter_eps=filter_eps,
        dot_precision=_fp32_dot_precision() if input.dtype == torch.float32 else "ieee",
        gradient_precision=gradient_precision,
    )
    return _LinearCrossEntropyFunction.apply(
        input, linear_weight, linear_bias, target, weight, options
    )


# --- Module -----------------------------------------------------------------------------------


class LinearCrossEntropyLoss(reference_linear.LinearCrossEntropyLoss):
    """Module form of :func:`linear_cross_entropy`: the classifier ``self.linear``, arguments and
    buffers of reference.linear.LinearCrossEntropyLoss (torch 2.14's module, less ``out_features``
    and ``options``), plus the fused kernel's ``filter_eps`` and ``gradient_precision``."""

    def __init__(
        self,
        in_features: int,
        num_classes: int,
        *,
        bias: bool = False,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
        weight: torch.Tensor | None = None,
        ignore_index: int = -100,
        reduction: str = "mean",
        label_smoothing: float = 0.0,
        z_loss_scale: float = 0.0,
        softcap: float | None = None,
        filter_eps: float | str | None = None,
        gradient_precision: str = "fp32",
    ) -> None:
        super().__init__(
            in_features,
            num_classes,
            bias=bias,
            device=device,
            dtype=dtype,
            weight=weight,
            ignore_index=ignore_index,
            reduction=reduction,
            label_smoothing=label_smoothing,
            z_loss_scale=z_loss_scale,
            softcap=softcap,
        )
        self.filter_eps = filter_eps
        self.gradient_precision = gradient_precision

    def forward(self, input: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return linear_cross_entropy(
            input,
            self.linear.weight,
            target,
            linear_bias=self.linear.bias,
            weight=self.weight,
            ignore_index=self.ignore_index,
            reduction=self.reduction,
            label_smoothing=self.label_smoothing,
            z_loss_scale=self.z_loss_scale,
            softcap=self.softcap,
            filter_eps=self.filter_eps,
            gradient_precision=self.gradient_precision,
        )
