"""Fused softmax cross-entropy and focal loss: the logits read once, the gradient written once.

The same functions as reference/softmax.py, computed by one Triton kernel family. Shapes: logits
``input`` (N, C), (N, C, d1, ...) or unbatched (C,), class dimension 1 (0 when unbatched); target
of class indices with ``input``'s shape without the class dimension. A *row* below is one sample,
one position of N x d1 x ...: the C logits x of that position, its target class y, and
p = softmax(x).

Both losses share one gradient form, per row and class j (w: per-class weight, ones without it):

    d loss / d x_j = T (p_j - [j == y]) + B p_j - K w_j

with per-row T, B, K derived in ``_row_terms``. The kernel reads a row, reduces it to its max m and
log-sum log(sum_c exp(x_c - m)), computes the loss and T, B, K, then writes the gradient row,
already divided by the 'mean' denominator, during the forward pass. Backward only multiplies by the
upstream gradient, and not even that when it is 1 (``kernels._common.scale_unless_one_``).
So forward+backward reads the logits once and writes the gradient once, with no host
synchronisation: the 'mean' denominator is reduced on the device before the launch and read by
pointer.

Paths, chosen from C (constants below):

- C <= MAX_FUSED_C: each program holds ROWS_PER_PROGRAM whole rows in registers (many rows when C
  is small: 1M x 10 runs as 4096 programs of 256 rows, not 1M programs of one short row).
- C > MAX_FUSED_C: one row per program, an online softmax over CHUNK_C-wide chunks (running max,
  rescaled sum), then a second pass that writes the gradient: the logits are read twice, the
  second time last chunk first, so that the most recently read chunks are still in L2.

reduction='none' cannot fold its upstream gradient into the forward pass: forward saves each row's
max and log-sum (O(N)) and backward recomputes p from the logits and scales each row by its own
upstream gradient.

Numerics: fp32 inside whatever the input dtype; the gradient is stored in the input dtype. The
true-class terms use p_y - 1 = expm1(log p_y) and log-sum = log1p(rest), rest being the sum over
the classes below the max, so that p_y close to 1 keeps its precision (the bf16 cancellation trap
of softmax(x_y) - 1). p_j = exp(x_j - m) / sum, never exp(x_j - lse): with logits near 1e4, lse
carries an absolute error of 1e-3 and exp(x_j - lse) a relative one.
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
    scale_unless_one_,
)
from lossbench.reference import softmax as reference_softmax
from lossbench.reference._checks import (
    check_class_index_target,
    check_floating,
    check_per_class,
    check_reduction,
)

# Rows up to this many classes stay in registers, one read. The register file of an H100/H200 SM
# holds 64K 32-bit values, and a program may use at most 64 per thread at 1024 threads (32 warps).
# The row is held in fp32 whatever the input dtype (bf16 is converted after the load), so the
# limit is in elements, not bytes: 16384 classes are 16 fp32 values per thread at 32 warps, which
# leaves room for the exponentials and addresses without spilling; 32768 would need every one of
# the 64 registers for the row and its exponentials alone, and 65536 fp32 values are the whole
# register file. Compiled offline for sm_90 with Triton 3.6 and 3.8 (their ptxas; a subset is
# tests/test_kernels_compile.py): at 16384, 32 warps, bf16 or fp32, every loss, option and
# reduction tried fits in the 64 registers (at most 4 bytes spilled, once per program); at 32768
# cross-entropy with weight, label smoothing and z-loss spills 80 (3.6) to 160 (3.8) bytes.
# Not timed on hardware: no GPU was available when this was written.
MAX_FUSED_C = 16384
# Chunk width of the online softmax above MAX_FUSED_C: 16 KiB of bf16 per program and chunk, 16
# fp32 values per thread at 16 warps, several programs per SM to keep loads in flight.
CHUNK_C = 8192
# Elements per program when rows are short: a few thousand, so that each program moves 8-16 KiB
# (bf16-fp32) like a long row does, instead of one tiny row per program.
TILE_ELEMENTS = 4096
# About 16 fp32 tile values per thread: enough independent loads per thread to cover memory
# latency, few enough registers that programs can share an SM. 32 warps (1024 threads) is CUDA's
# limit per program.
ELEMENTS_PER_THREAD = 16
MAX_NUM_WARPS = 32

_KERNEL_DTYPES = (torch.float32, torch.float16, torch.bfloat16)
_MEAN: tl.constexpr = tl.constexpr(REDUCTION_CODES["mean"])


# --- Math helpers: Triton has no portable expm1 / log1p (libdevice is absent in the interpreter) -


@triton.jit
def _expm1(t):
    """exp(t) - 1, without cancellation when |t| is small."""
    # For |t| < 0.1, the series to t^5/5! leaves a relative error below t^5/6! < 1.4e-8 (fp32
    # spacing is 6e-8); beyond, exp(t) - 1 loses at most a factor 1/0.1 of exp's relative error.
    series = t * (1.0 + t * (0.5 + t * (1.0 / 6.0 + t * (1.0 / 24.0 + t * (1.0 / 120.0)))))
    return tl.where(tl.abs(t) < 0.1, series, tl.exp(t) - 1.0)


@triton.jit
def _log1p(u):
    """log(1 + u) for u >= 0, without the rounding of 1 + u when u is small."""
    # For u < 0.1, the alternating series to u^7/7 leaves a relative error below u^7/8 < 1.3e-8.
    # Beyond, log(1 + u) >= 0.095, so the absolute error of a fast GPU log stays relatively small.
    series = u * (
        1.0
        - u * (0.5 - u * (1.0 / 3.0 - u * (0.25 - u * (0.2 - u * (1.0 / 6.0 - u * (1.0 / 7.0))))))
    )
    return tl.where(u < 0.1, series, tl.log(1.0 + u))


# --- Kernel building blocks -------------------------------------------------------------------


@triton.jit
def _class_weights(class_weight_ptr, classes, class_mask, HAS_WEIGHT: tl.constexpr):
    """The per-class weights of one chunk of classes, fp32 (ones without a weight)."""
    if HAS_WEIGHT:
        return tl.load(class_weight_ptr + classes, mask=class_mask, other=0.0).to(tl.float32)
    return tl.where(class_mask, 1.0, 0.0)


@triton.jit
def _fold_chunk(
    x, class_weight, class_mask, row_max, rest, smooth, weight_seen, LABEL_SMOOTHING: tl.constexpr
):
    """Fold one chunk of logits, x of shape (ROWS, BLOCK_C), into each row's running statistics.

    row_max: the max m so far. rest: sum of exp(x_c - m) over the classes seen, less 1 for one
    class at the max, so that log-sum = log1p(rest) is exact when one class dominates. Every
    update adds non-negative terms, so nothing cancels. smooth: sum_c w_c (m - x_c) over the classes
    seen (LABEL_SMOOTHING), again non-negative terms; weight_seen: their sum_c w_c. Masked lanes
    hold x = -inf: they add exp(-inf) = 0 to rest and nothing to smooth.
    """
    chunk_max = tl.max(x, axis=1)
    new_max = tl.maximum(row_max, chunk_max)
    # A row with no finite logit yet has m = -inf; shift by 0 there so that -inf - -inf never
    # makes a nan (such a row's rest is discarded by the rescaling once a finite logit arrives).
    finite_max = tl.where(new_max == float("-inf"), 0.0, new_max)
    at_max = x == new_max[:, None]
    ties = tl.sum(at_max.to(tl.float32), axis=1)
    below = tl.sum(tl.where(at_max, 0.0, tl.exp(x - finite_max[:, None])), axis=1)
    # A new max turns the old "1 + rest" into (1 + rest) e^(m_old - m_new) and brings its own 1.
    rescaled = (1.0 + rest) * tl.exp(row_max - finite_max)
    rest = tl.where(chunk_max > row_max, rescaled + (ties - 1.0), rest + ties) + below
    if LABEL_SMOOTHING:
        # Rebase sum_c w_c (m - x_c) from the old max to the new one, then add this chunk's terms.
        # A class at -inf contributes +inf (its log p is -inf), as in torch.
        rebase = tl.where(row_max == float("-inf"), 0.0, (new_max - row_max) * weight_seen)
        gap = tl.where(x == float("-inf"), float("inf"), new_max[:, None] - x)
        terms = tl.where(class_mask[None, :], class_weight[None, :] * gap, 0.0)
        smooth = smooth + rebase + tl.sum(terms, axis=1)
        weight_seen = weight_seen + tl.sum(class_weight, axis=0)
    return new_max, rest, smooth, weight_seen


@triton.jit
def _row_terms(
    row_max,
    log_sum,
    target_logit,
    target_weight,
    weight_total,
    smooth,
    scale_weighted,
    scale_count,
    n_classes,
    label_smoothing,
    z_loss_scale,
    gamma,
    focal_alpha,
    FOCAL: tl.constexpr,
    LABEL_SMOOTHING: tl.constexpr,
    Z_LOSS: tl.constexpr,
):
    """Each row's loss and its gradient coefficients T, B, K; see the derivations inline.

    scale_weighted multiplies what torch's 'mean' divides by sum_i w_{y_i} (the weighted
    cross-entropy and smoothing terms); scale_count what it divides by the count of non-ignored
    rows (z-loss, focal). Both are 1 for 'sum', the inverse denominators for 'mean', and the row's
    upstream gradient in 'none' backward. Returns (loss, T, B, K, p_y - 1), each of shape (ROWS,).
    """
    nll = (row_max - target_logit) + log_sum  # -log p_y = logsumexp(x) - x_y >= 0
    log_p = -nll
    p_minus_one = _expm1(log_p)  # p_y - 1, exact near p_y = 1 where softmax(x_y) - 1 cancels
    prob_coef = tl.zeros_like(nll)
    class_coef = tl.zeros_like(nll)
    if FOCAL:
        # L = -a (1-p)^g log p with p = p_y and a = alpha_y; dp/dx_j = p ([j == y] - p_j), so
        #   dL/dx_j = a [(1-p)^g - g p (1-p)^(g-1) log p] (p_j - [j == y])
        #           = a (1-p)^g [1 - g p log(p) / (1-p)] (p_j - [j == y]).
        # The second form avoids (1-p)^(g-1), infinite at p = 1 when g < 1; there
        # log(p) / (1-p) -> -1 and T -> a 0^g (1 + g): 0 for g > 0, a for g = 0 (plain CE).
        one_minus_p = -p_minus_one
        has_mass = one_minus_p > 0.0
        safe_base = tl.where(has_mass, one_minus_p, 1.0)
        zero_power = tl.where(gamma == 0.0, 1.0, 0.0)  # 0^g
        modulating = tl.where(has_mass, tl.exp(gamma * tl.log(safe_base)), zero_power)
        log_ratio = tl.where(has_mass, log_p / safe_base, -1.0)  # log(p) / (1-p)
        alpha = target_weight * focal_alpha
        loss = alpha * modulating * nll * scale_count
        true_coef = alpha * modulating * (1.0 - gamma * tl.exp(log_p) * log_ratio) * scale_count
    else:
        # Torch's cross-entropy with weight w and label smoothing e over C classes, per row:
        #   L = (1-e) w_y (lse - x_y) + (e/C) sum_c w_c (lse - x_c)
        #   dL/dx_j = (1-e) w_y (p_j - [j == y]) + (e/C) (W p_j - w_j),   W = sum_c w_c,
        # both divided by sum_i w_{y_i} under 'mean'. z-loss (PaLM; Liger-Kernel and
        # flash-attention): + z lse^2 per non-ignored row, unweighted, divided by the count of
        # non-ignored rows under 'mean' (Liger-Kernel's choice; flash-attention has no weights);
        # d/dx_j = 2 z lse p_j.
        uniform = label_smoothing / n_classes
        nll_weight = (1.0 - label_smoothing) * target_weight
        loss = nll_weight * nll
        true_coef = nll_weight * scale_weighted
        if LABEL_SMOOTHING:
            # sum_c w_c (lse - x_c) = sum_c w_c (m - x_c) + W log-sum: non-negative terms only.
            loss += uniform * (smooth + weight_total * log_sum)
            prob_coef += uniform * weight_total * scale_weighted
            class_coef += uniform * scale_weighted
        loss = loss * scale_weighted
        if Z_LOSS:
            lse = row_max + log_sum
            loss += z_loss_scale * lse * lse * scale_count
            prob_coef += 2.0 * z_loss_scale * lse * scale_count
    return loss, true_coef, prob_coef, class_coef, p_minus_one


@triton.jit
def _gradient_coefficients(
    true_coef, prob_coef, class_coef, p_minus_one, log_sum, active, out_of_range
):
    """Fold 1/sum and the row's fate into T, B, K, so that the gradient pass keeps few per-row
    values live: grad_j = prob_scale exp(x_j - m) (j != y), target_value (j == y), less K w_j.

    Ignored rows get 0 and rows with a label outside [0, C) (possible only on a GPU) nan, through
    the coefficients: nan x exp(...) is nan even where exp(...) is 0.
    """
    fill = tl.where(out_of_range, float("nan"), 0.0)
    # At j == y: T (p_y - 1) + B p_y with p_y - 1 from expm1, exact near p_y = 1 where
    # softmax(x_y) - 1 cancels.
    target_value = tl.where(active, true_coef * p_minus_one + prob_coef * (1.0 + p_minus_one), fill)
    prob_scale = tl.where(active, (true_coef + prob_coef) * tl.exp(-log_sum), fill)
    class_coef = tl.where(active, class_coef, fill)
    return prob_scale, target_value, class_coef


@triton.jit
def _store_gradient(
    grad_ptr,
    grad_row,
    stride_grad_c,
    x,
    classes,
    class_mask,
    class_weight,
    row_mask,
    target,
    finite_max,
    prob_scale,
    target_value,
    class_coef,
    LABEL_SMOOTHING: tl.constexpr,
):
    """Write T (p_j - [j == y]) + B p_j - K w_j for one chunk of classes of each row."""
    scaled_p = prob_scale[:, None] * tl.exp(x - finite_max[:, None])
    grad = tl.where(classes[None, :] == target[:, None], target_value[:, None], scaled_p)
    if LABEL_SMOOTHING:
        grad -= class_coef[:, None] * class_weight[None, :]
    offsets = grad_row[:, None] + classes[None, :].to(tl.int64) * stride_grad_c
    tl.store(
        grad_ptr + offsets,
        grad.to(grad_ptr.dtype.element_ty),
        mask=row_mask[:, None] & class_mask[None, :],
    )


@triton.jit
def _softmax_loss_kernel(
    logits_ptr,  # (N, C, S) fp32/fp16/bf16, any strides: the logits
    target_ptr,  # (N, S) integer: class indices, or ignore_index
    class_weight_ptr,  # (C,) float: CE weight or focal alpha per class; read when HAS_WEIGHT
    class_weight_total_ptr,  # () fp32: sum of class_weight; when HAS_WEIGHT and LABEL_SMOOTHING
    inverse_denominators_ptr,  # (2,) fp32: 1 / sum of w_y, 1 / count, non-ignored rows; 'mean'
    upstream_ptr,  # (N*S,) float, any stride: each row's upstream gradient; when BACKWARD
    row_stats_ptr,  # (N*S, 2) fp32: row max, log-sum; written when SAVE_STATS, read when BACKWARD
    loss_ptr,  # (N*S,) fp32 or input dtype: each row's loss (its share of a 'mean'); forward only
    grad_ptr,  # (N, C, S) input dtype, its own strides: d loss / d logits, when COMPUTE_GRAD
    n_rows,  # N*S
    n_classes,  # C
    n_spatial,  # S = d1 x d2 x ..., 1 for (N, C) input
    stride_logits_n,
    stride_logits_c,
    stride_logits_s,
    stride_target_n,
    stride_target_s,
    stride_grad_n,
    stride_grad_c,
    stride_grad_s,
    stride_upstream,  # 0 for the expanded ones of loss.sum().backward()
    ignore_index,
    label_smoothing,
    z_loss_scale,
    gamma,
    focal_alpha,  # a float alpha of the focal loss, multiplying every class (1.0 otherwise)
    FOCAL: tl.constexpr,  # focal loss (else cross-entropy)
    HAS_WEIGHT: tl.constexpr,  # class_weight given (CE weight, focal alpha tensor)
    LABEL_SMOOTHING: tl.constexpr,  # label_smoothing > 0 (CE only)
    Z_LOSS: tl.constexpr,  # z_loss_scale > 0 (CE only)
    REDUCTION: tl.constexpr,  # REDUCTION_CODES; 'mean' reads inverse_denominators_ptr
    COMPUTE_GRAD: tl.constexpr,  # write the gradient
    SAVE_STATS: tl.constexpr,  # write each row's max and log-sum for a later backward
    BACKWARD: tl.constexpr,  # 'none' backward: statistics and upstream from memory, no loss
    HAS_SPATIAL: tl.constexpr,  # S > 1: a row index splits into (sample, position)
    SINGLE_CHUNK: tl.constexpr,  # C <= BLOCK_C: whole rows in registers, one read
    ROWS_PER_PROGRAM: tl.constexpr,
    BLOCK_C: tl.constexpr,
):
    """Each program handles ROWS_PER_PROGRAM rows, BLOCK_C classes at a time (all at once when
    SINGLE_CHUNK): their losses, and their gradient rows when COMPUTE_GRAD."""
    # int64 before any multiplication by a stride: row * stride exceeds 2^31 once N x C does, and
    # an int32 product would wrap and read or write another part of memory.
    rows = tl.program_id(0).to(tl.int64) * ROWS_PER_PROGRAM + tl.arange(0, ROWS_PER_PROGRAM)
    row_mask = rows < n_rows
    if HAS_SPATIAL:
        # Row r is position s of sample n: element (n, c, s) sits at n*sN + c*sC + s*sS, so
        # (N, C, d1, ...) inputs need no transposed copy.
        sample = rows // n_spatial
        position = rows % n_spatial
        logits_row = sample * stride_logits_n + position * stride_logits_s
        target_at = sample * stride_target_n + position * stride_target_s
        grad_row = sample * stride_grad_n + position * stride_grad_s
    else:
        logits_row = rows * stride_logits_n
        target_at = rows * stride_target_n
        grad_row = rows * stride_grad_n

    target = tl.load(target_ptr + target_at, mask=row_mask, other=0).to(tl.int64)
    ignored = target == ignore_index
    in_range = (target >= 0) & (target < n_classes)
    active = row_mask & in_range & ~ignored
    # Out-of-range labels are rejected before launch on the CPU; on a GPU checking would need a
    # host sync, so such a row's loss and gradient become nan. They are never used as an index:
    # every load below that takes the target as an offset is masked by `active`.
    out_of_range = ~ignored & ~in_range
    target_logit = tl.load(
        logits_ptr + logits_row + target * stride_logits_c, mask=active, other=0.0
    ).to(tl.float32)
    if HAS_WEIGHT:
        target_weight = tl.load(class_weight_ptr + target, mask=active, other=0.0).to(tl.float32)
    else:
        target_weight = tl.full([ROWS_PER_PROGRAM], 1.0, tl.float32)
    if HAS_WEIGHT and LABEL_SMOOTHING:
        weight_total = tl.load(class_weight_total_ptr)
    else:
        weight_total = n_classes * 1.0

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

    classes = tl.arange(0, BLOCK_C)
    if SINGLE_CHUNK:
        # The only read of these rows: everything below works on the registers.
        class_mask = classes < n_classes
        x = tl.load(
            logits_ptr + logits_row[:, None] + classes[None, :].to(tl.int64) * stride_logits_c,
            mask=row_mask[:, None] & class_mask[None, :],
            other=float("-inf"),
        ).to(tl.float32)
        class_weight = _class_weights(
            class_weight_ptr, classes, class_mask, HAS_WEIGHT and LABEL_SMOOTHING
        )

    smooth = tl.zeros([ROWS_PER_PROGRAM], tl.float32)
    if BACKWARD:
        row_max = tl.load(row_stats_ptr + 2 * rows, mask=row_mask, other=0.0)
        log_sum = tl.load(row_stats_ptr + 2 * rows + 1, mask=row_mask, other=0.0)
    else:
        row_max = tl.full([ROWS_PER_PROGRAM], float("-inf"), tl.float32)
        rest = tl.zeros([ROWS_PER_PROGRAM], tl.float32)
        weight_seen = tl.zeros([ROWS_PER_PROGRAM], tl.float32)
        if SINGLE_CHUNK:
            row_max, rest, smooth, weight_seen = _fold_chunk(
                x, class_weight, class_mask, row_max, rest, smooth, weight_seen, LABEL_SMOOTHING
            )
        else:
            for start in range(0, n_classes, BLOCK_C):
                chunk = start + classes
                class_mask = chunk < n_classes
                x = tl.load(
                    logits_ptr
                    + logits_row[:, None]
                    + chunk[None, :].to(tl.int64) * stride_logits_c,
                    mask=row_mask[:, None] & class_mask[None, :],
                    other=float("-inf"),
                ).to(tl.float32)
                class_weight = _class_weights(
                    class_weight_ptr, chunk, class_mask, HAS_WEIGHT and LABEL_SMOOTHING
                )
                row_max, rest, smooth, weight_seen = _fold_chunk(
                    x, class_weight, class_mask, row_max, rest, smooth, weight_seen, LABEL_SMOOTHING
                )
        log_sum = _log1p(rest)

    loss, true_coef, prob_coef, class_coef, p_minus_one = _row_terms(
        row_max,
        log_sum,
        target_logit,
        target_weight,
        weight_total,
        smooth,
        scale_weighted,
        scale_count,
        n_classes,
        label_smoothing,
        z_loss_scale,
        gamma,
        focal_alpha,
        FOCAL,
        LABEL_SMOOTHING,
        Z_LOSS,
    )

    if not BACKWARD:
        # An ignored row adds 0 x the 'mean' scale: 0 x 1/0 = nan when no row counts, which is
        # torch's 0/0 for a 'mean' over nothing.
        ignored_loss = 0.0 * scale_count if FOCAL else 0.0 * scale_weighted
        loss = tl.where(active, loss, tl.where(out_of_range, float("nan"), ignored_loss))
        tl.store(loss_ptr + rows, loss.to(loss_ptr.dtype.element_ty), mask=row_mask)
        if SAVE_STATS:
            tl.store(row_stats_ptr + 2 * rows, row_max, mask=row_mask)
            tl.store(row_stats_ptr + 2 * rows + 1, log_sum, mask=row_mask)

    if COMPUTE_GRAD:
        finite_max = tl.where(row_max == float("-inf"), 0.0, row_max)
        prob_scale, target_value, class_coef = _gradient_coefficients(
            true_coef, prob_coef, class_coef, p_minus_one, log_sum, active, out_of_range
        )
        if SINGLE_CHUNK:
            _store_gradient(
                grad_ptr,
                grad_row,
                stride_grad_c,
                x,
                classes,
                class_mask,
                class_weight,
                row_mask,
                target,
                finite_max,
                prob_scale,
                target_value,
                class_coef,
                LABEL_SMOOTHING,
            )
        else:
            n_chunks = tl.cdiv(n_classes, BLOCK_C)
            for chunk_from_end in range(0, n_chunks):
                # Last chunk first: the first pass read it last, so it is the likeliest in L2.
                chunk = (n_chunks - 1 - chunk_from_end) * BLOCK_C + classes
                class_mask = chunk < n_classes
                x = tl.load(
                    logits_ptr
                    + logits_row[:, None]
                    + chunk[None, :].to(tl.int64) * stride_logits_c,
                    mask=row_mask[:, None] & class_mask[None, :],
                    other=float("-inf"),
                ).to(tl.float32)
                class_weight = _class_weights(
                    class_weight_ptr, chunk, class_mask, HAS_WEIGHT and LABEL_SMOOTHING
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
                    target,
                    finite_max,
                    prob_scale,
                    target_value,
                    class_coef,
                    LABEL_SMOOTHING,
                )


# --- Launcher ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class _LossOptions:
    """The non-tensor arguments of one call, checked."""

    focal: bool
    ignore_index: int
    reduction: str
    # Whether autograd will want the input's gradient: decided outside Function.forward, where
    # grad mode is always off, so that torch.no_grad() writes no gradient (nor over the logits).
    compute_grad: bool
    label_smoothing: float = 0.0
    z_loss_scale: float = 0.0
    gamma: float = 0.0
    focal_alpha: float = 1.0
    inplace_backward: bool = False


@dataclass(frozen=True)
class _BlockShape:
    rows_per_program: int
    block_c: int
    single_chunk: bool
    num_warps: int


def _block_shape(n_rows: int, n_classes: int) -> _BlockShape:
    """Rows per program, classes per chunk and warps for a (n_rows, n_classes) problem."""
    if n_classes <= MAX_FUSED_C:
        block_c = triton.next_power_of_2(n_classes)
        # Short rows: stack them to TILE_ELEMENTS per program, but no more rows than exist.
        rows = min(max(1, TILE_ELEMENTS // block_c), triton.next_power_of_2(n_rows))
        single_chunk = True
    else:
        block_c, rows, single_chunk = CHUNK_C, 1, False
    num_warps = min(MAX_NUM_WARPS, max(4, rows * block_c // (32 * ELEMENTS_PER_THREAD)))
    return _BlockShape(rows, block_c, single_chunk, num_warps)


def _as_rows(input: torch.Tensor, target: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Views (N, C, S) of the logits and (N, S) of the target; a row is one (n, s).

    (C,) becomes (1, C, 1); (N, C) becomes (N, C, 1) with any strides; (N, C, d1, ...) flattens
    d1, ... into S, a view unless their strides cannot merge (then a copy).
    """
    if input.dim() == 1:
        return input[None, :, None], target.reshape(1, 1)
    if input.dim() == 2:
        return input.unsqueeze(-1), target.unsqueeze(-1)
    return input.flatten(2), target.flatten(1)


def _inverse_denominators(
    target: torch.Tensor, class_weight: torch.Tensor | None, options: _LossOptions
) -> torch.Tensor:
    """(2,) fp32 on the device: 1 / sum of w_{y_i} and 1 / count, over non-ignored targets.

    Torch ops over the (N,) targets, no host sync; 1/0 = inf makes a 'mean' over nothing nan.
    Focal loss and unweighted cross-entropy divide by the count in both slots.
    """
    counted = target != options.ignore_index
    count = counted.sum(dtype=torch.float32)
    if class_weight is None or options.focal:
        weight_sum = count
    else:
        # clamp: a label out of range (a nan row on the GPU) must not index outside the weight.
        safe_target = target.clamp(0, class_weight.shape[0] - 1)
        weight_sum = torch.where(counted, class_weight[safe_target].float(), 0.0).sum()
    return torch.stack((weight_sum, count)).reciprocal()


def _launch(
    logits: torch.Tensor,
    target: torch.Tensor,
    class_weight: torch.Tensor | None,
    options: _LossOptions,
    *,
    loss: torch.Tensor | None = None,
    grad: torch.Tensor | None = None,
    row_stats: torch.Tensor | None = None,
    upstream: torch.Tensor | None = None,
    inverse_denominators: torch.Tensor | None = None,
    backward: bool = False,
) -> None:
    """Launch ``_softmax_loss_kernel`` over the rows of ``logits`` (N, C, S), ``target`` (N, S).

    Forward (``backward=False``) writes ``loss`` (N*S,), and ``grad`` (N, C, S) when given,
    ``row_stats`` (N*S, 2) when given. Backward reads ``row_stats`` and ``upstream`` (N*S,),
    any stride, and writes ``grad``. ``grad`` may be ``logits`` itself (inplace_backward).
    """
    # I/O, with b bytes per logit and N the number of rows (N*S for (N, C, S) inputs):
    #   C <= MAX_FUSED_C, forward: read N*C*b logits once + N targets + N*b for the true-class
    #     logit (a gather in the row just read: cache); write N losses (+ N*C*b gradient when
    #     computing it, + 8N row statistics for a later 'none' backward).
    #   C > MAX_FUSED_C: the same, but with the gradient the logits are read twice (2 N*C*b):
    #     the row does not fit on chip; the second pass runs last chunk first to hit L2.
    #   'none' backward: read N*C*b logits + 8N statistics + N targets + N upstream, write N*C*b.
    # 'mean' adds torch ops over the N targets for the denominators (no host sync).
    n_samples, n_classes, n_spatial = logits.shape
    n_rows = n_samples * n_spatial
    if n_rows == 0:
        return
    shape = _block_shape(n_rows, n_classes)
    weight_total = None
    if class_weight is not None and options.label_smoothing > 0:
        weight_total = class_weight.sum(dtype=torch.float32)
    grad_strides = grad.stride() if grad is not None else (0, 0, 0)
    grid = (triton.cdiv(n_rows, shape.rows_per_program),)
    _softmax_loss_kernel[grid](
        logits,
        target,
        class_weight,
        weight_total,
        inverse_denominators,
        upstream,
        row_stats,
        loss,
        grad,
        n_rows,
        n_classes,
        n_spatial,
        *logits.stride(),
        *target.stride(),
        *grad_strides,
        upstream.stride(0) if upstream is not None else 0,
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
        SAVE_STATS=row_stats is not None and not backward,
        BACKWARD=backward,
        HAS_SPATIAL=n_spatial > 1,
        SINGLE_CHUNK=shape.single_chunk,
        ROWS_PER_PROGRAM=shape.rows_per_program,
        BLOCK_C=shape.block_c,
        num_warps=shape.num_warps,
    )


# --- Autograd ---------------------------------------------------------------------------------

_SPENT_GRADIENT = (
    "this loss's gradient was computed in the forward pass and handed out by the first backward "
    "(it may have been scaled in place, or written over the logits); call the loss again to "
    "differentiate it again"
)


class _SoftmaxLossFunction(torch.autograd.Function):
    """Cross-entropy or focal loss of logits; the gradient flows to ``input`` only."""

    @staticmethod
    def forward(
        ctx: torch.autograd.function.FunctionCtx,
        input: torch.Tensor,
        target: torch.Tensor,
        class_weight: torch.Tensor | None,
        options: _LossOptions,
    ) -> torch.Tensor:
        logits, rows_target = _as_rows(input, target)
        n_rows = rows_target.numel()
        reduction = options.reduction
        wants_grad = options.compute_grad
        grad = None
        if wants_grad and reduction != "none":
            grad = (
                input.detach()
                if options.inplace_backward
                else torch.empty(input.shape, dtype=input.dtype, device=input.device)
            )
        row_stats = None
        if wants_grad and reduction == "none":
            row_stats = torch.empty((n_rows, 2), dtype=torch.float32, device=input.device)
        loss_dtype = input.dtype if reduction == "none" else torch.float32
        row_losses = torch.empty(n_rows, dtype=loss_dtype, device=input.device)
        inverse_denominators = None
        if reduction == "mean":
            inverse_denominators = _inverse_denominators(rows_target, class_weight, options)
        _launch(
            logits,
            rows_target,
            class_weight,
            options,
            loss=row_losses,
            grad=None if grad is None else grad.view(logits.shape),
            row_stats=row_stats,
            inverse_denominators=inverse_denominators,
        )
        ctx.options = options
        ctx.gradient = grad
        ctx.spent = False
        if grad is not None and options.inplace_backward:
            # The logits now hold the gradient: make autograd refuse, loudly, any other use of
            # the old values that it saved.
            torch.autograd.graph.increment_version(input)
        if reduction == "none":
            if wants_grad:
                ctx.save_for_backward(input, target, class_weight, row_stats)
            return row_losses.view(target.shape)
        if reduction == "mean" and n_rows == 0:
            return torch.full((), math.nan, dtype=input.dtype, device=input.device)
        return row_losses.sum().to(input.dtype)

    @staticmethod
    @once_differentiable
    def backward(
        ctx: torch.autograd.function.FunctionCtx, grad_output: torch.Tensor
    ) -> tuple[torch.Tensor, None, None, None]:
        options = ctx.options
        if options.reduction != "none":
            grad = ctx.gradient
            if grad is None:
                raise RuntimeError(f"backward called twice: {_SPENT_GRADIENT}")
            ctx.gradient = None
            return scale_unless_one_(grad, grad_output), None, None, None
        if ctx.spent:
            raise RuntimeError(
                "backward called twice on a loss with inplace_backward=True: the first backward "
                "wrote the gradient over the logits it would need; call the loss again"
            )
        input, target, class_weight, row_stats = ctx.saved_tensors
        logits, rows_target = _as_rows(input, target)
        if options.inplace_backward:
            grad = input.detach()
            ctx.spent = True
        else:
            grad = torch.empty(input.shape, dtype=input.dtype, device=input.device)
        _launch(
            logits,
            rows_target,
            class_weight,
            options,
            grad=grad.view(logits.shape),
            row_stats=row_stats,
            upstream=grad_output.reshape(-1),
            backward=True,
        )
        if options.inplace_backward:
            torch.autograd.graph.increment_version(input)
        return grad, None, None, None


# --- Functional API ---------------------------------------------------------------------------


def _check_logits_and_target(
    input: torch.Tensor,
    target: torch.Tensor,
    ignore_index: int,
    reduction: str,
    **per_class: torch.Tensor | None,
) -> None:
    """Raise before any launch unless input, target and per-class tensors suit the kernel."""
    check_kernel_device(input=input, target=target, **per_class)
    check_floating("input", input)
    if input.dtype not in _KERNEL_DTYPES:
        raise TypeError(
            f"the kernels take fp32, fp16 or bf16 logits, got {input.dtype}; "
            "reference.softmax computes in any floating dtype"
        )
    check_reduction(reduction)
    if input.dim() == 0 or input.shape[0 if input.dim() == 1 else 1] == 0:
        raise ValueError(
            f"input needs a class dimension with at least one class, got shape {tuple(input.shape)}"
        )
    for name, tensor in per_class.items():
        if tensor is not None:
            check_per_class(name, tensor, input)
    check_no_gradient_wanted("reference.softmax", **per_class)
    # Shape and dtype of the target on every device; the range of its values only where reading
    # them is free (the CPU): on a GPU it would be a host sync, and a bad label gives a nan row.
    check_class_index_target(input, target, ignore_index, check_values=INTERPRETED)


def _check_inplace(input: torch.Tensor) -> None:
    """Raise unless the gradient may be written over ``input``."""
    if not input.is_contiguous():
        raise ValueError(
            "inplace_backward=True writes the gradient over the logits element by element, so "
            f"they must be contiguous; got strides {input.stride()} for shape {tuple(input.shape)}"
        )
    if input.is_leaf and input.requires_grad:
        raise ValueError(
            "inplace_backward=True would overwrite a leaf tensor that requires grad, which torch "
            "forbids; pass the logits as computed by a layer, or use inplace_backward=False"
        )


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
    process_group: torch.distributed.ProcessGroup | None = None,
    class_offset: int | None = None,
) -> torch.Tensor:
    """Fused softmax cross-entropy; the results and gradients of ``F.cross_entropy``.

    Args:
        input: logits, fp32, fp16 or bf16, shape (N, C), (N, C, d1, ...) or (C,); any strides.
        target: class indices, integer, ``input``'s shape without dim 1 (() for (C,) input), in
            [0, C) or equal to ``ignore_index``. A floating target of ``input``'s shape holds
            class probabilities: that case runs ``reference.softmax.cross_entropy`` (plain torch
            ops, not the kernel), without z-loss or inplace_backward.
        weight: per-class weight (C,), ``input``'s dtype, or None; a constant (no gradient).
        ignore_index: targets equal to it add 0 to the loss and are not counted by 'mean'.
        reduction: 'none' (per-row losses, the target's shape, in ``input``'s dtype), 'sum', or
            'mean' = sum / sum_i w_{y_i} over non-ignored targets (their count without weight);
            nan when no target counts, as torch. N = 0 gives nan, 0 or an empty tensor.
        label_smoothing: e in [0, 1], as torch: (1-e) * CE + (e/C) * sum_c w_c (-log p_c).
        z_loss_scale: z >= 0; adds z * logsumexp(x)^2 per non-ignored row (PaLM's z-loss, as in
            Liger-Kernel and flash-attention), unweighted: 'mean' divides it by the count of
            non-ignored targets even with a weight (Liger-Kernel's convention).
        inplace_backward: write the gradient into ``input``'s storage instead of a new tensor,
            so that forward+backward allocates only O(N). This DESTROYS the logits: with 'mean'
            or 'sum' they are overwritten during the forward pass, with 'none' during backward.
            Anything else that saved them, or reads them afterwards, sees the gradient; autograd
            raises for what it saved (the version counter is bumped). Needs contiguous logits
            that are not a leaf requiring grad, and allows one backward only.
        process_group: None, or the group over whose ranks the classes are split (vocabulary
            parallelism): ``input`` is this rank's slice, ``target`` and ``weight`` are global,
            every rank returns the loss of all classes and gets its slice of the gradient, with
            two all-reduces of O(N) in forward and none in backward (kernels.vocab_parallel).
        class_offset: with ``process_group``, this rank's first class; None works it out with
            one all-gather and a host sync per call (reference.vocab_parallel.class_slices).

    Returns:
        the loss in ``input``'s dtype: a scalar for 'mean' and 'sum', per-row losses for 'none'.

    Numerics: fp32 inside; the gradient in ``input``'s dtype. A label outside [0, C) other than
    ``ignore_index`` raises ``ValueError`` on the CPU (interpreter); on a GPU, checking would need
    a host sync, so that row's loss and gradient are nan instead (and so is a reduced loss).
    'mean' and 'sum' compute the gradient in the forward pass, so backward can run once per call.

    Raises:
        ValueError: bad reduction, label_smoothing outside [0, 1], z_loss_scale < 0, shapes that
            do not match (both named), weight not of shape (C,), tensors not on the kernels'
            device, labels out of range (CPU), inplace_backward on unsuitable logits.
        TypeError: logits not fp32/fp16/bf16, non-integer index target, weight of another dtype.
    """
    if process_group is not None:
        from lossbench.kernels import vocab_parallel

        return vocab_parallel.cross_entropy(
            input,
            target,
            weight,
            ignore_index=ignore_index,
            reduction=reduction,
            label_smoothing=label_smoothing,
            z_loss_scale=z_loss_scale,
            inplace_backward=inplace_backward,
            process_group=process_group,
            class_offset=class_offset,
        )
    if target.shape == input.shape:
        if z_loss_scale != 0.0 or inplace_backward:
            raise ValueError(
                "z_loss_scale and inplace_backward apply to class-index targets; a target of "
                "input's shape holds class probabilities and runs the reference path"
            )
        return reference_softmax.cross_entropy(
            input,
            target,
            weight,
            ignore_index=ignore_index,
            reduction=reduction,
            label_smoothing=label_smoothing,
        )
    _check_logits_and_target(input, target, ignore_index, reduction, weight=weight)
    if not 0.0 <= label_smoothing <= 1.0:
        raise ValueError(f"label_smoothing must be in [0, 1], got {label_smoothing}")
    if not 0.0 <= z_loss_scale < math.inf:
        raise ValueError(f"z_loss_scale must be finite and >= 0, got {z_loss_scale}")
    compute_grad = input.requires_grad and torch.is_grad_enabled()
    if inplace_backward and compute_grad:
        _check_inplace(input)
    options = _LossOptions(
        focal=False,
        ignore_index=int(ignore_index),
        reduction=reduction,
        compute_grad=compute_grad,
        label_smoothing=float(label_smoothing),
        z_loss_scale=float(z_loss_scale),
        inplace_backward=inplace_backward,
    )
    return _SoftmaxLossFunction.apply(input, target, weight, options)


def softmax_focal_loss(
    input: torch.Tensor,
    target: torch.Tensor,
    alpha: float | torch.Tensor | None = None,
    gamma: float = 2.0,
    ignore_index: int = -100,
    reduction: str = "mean",
    *,
    process_group: torch.distributed.ProcessGroup | None = None,
    class_offset: int | None = None,
) -> torch.Tensor:
    """Fused multi-class focal loss ``-alpha_y (1 - p_y)^gamma log p_y``, p = softmax(input).

    Args:
        input: logits, fp32, fp16 or bf16, shape (N, C), (N, C, d1, ...) or (C,); any strides.
        target: class indices, integer, ``input``'s shape without dim 1 (() for (C,) input).
        alpha: None, a float >= 0 for every class, or a per-class (C,) tensor of ``input``'s dtype
            (a constant: no gradient). Negative entries of a tensor raise on the CPU only
            (checking them on a GPU would be a host sync).
        gamma: focusing parameter >= 0; gamma = 0 with alpha None is cross-entropy.
        ignore_index: targets equal to it add 0 and are not counted by 'mean'.
        reduction: 'none' (per-row, the target's shape), 'sum', or 'mean' = sum / the count of
            non-ignored targets (alpha does not enter it; nan if none).
        process_group, class_offset: classes split over the group's ranks, as
            :func:`cross_entropy`'s; a tensor ``alpha`` is then the full (C,) vector.

    1 - p_y is computed as -expm1(log p_y), exact near p_y = 1; the gradient is derived and
    written out in ``_row_terms`` and has no (1 - p)^(gamma - 1), so gamma < 1 gives 0, not nan,
    where p_y rounds to 1. Labels out of range: as :func:`cross_entropy`.

    Raises:
        ValueError: bad reduction, gamma < 0, alpha < 0, alpha tensor not of shape (C,),
            mismatched shapes, tensors off the kernels' device, labels out of range (CPU).
        TypeError: logits not fp32/fp16/bf16, non-integer target, alpha of another dtype.
    """
    if process_group is not None:
        from lossbench.kernels import vocab_parallel

        return vocab_parallel.softmax_focal_loss(
            input,
            target,
            alpha,
            gamma,
            ignore_index,
            reduction,
            process_group=process_group,
            class_offset=class_offset,
        )
    alpha_tensor = alpha if isinstance(alpha, torch.Tensor) else None
    _check_logits_and_target(input, target, ignore_index, reduction, alpha=alpha_tensor)
    if not 0.0 <= gamma < math.inf:
        raise ValueError(f"gamma must be finite and >= 0, got {gamma}")
    if alpha_tensor is None and alpha is not None and not alpha >= 0:
        raise ValueError(f"alpha must be >= 0, got {alpha}; use alpha=None for no weighting")
    if alpha_tensor is not None and INTERPRETED and bool((alpha_tensor < 0).any()):
        raise ValueError("alpha must be >= 0 for every class; use alpha=None for no weighting")
    options = _LossOptions(
        focal=True,
        ignore_index=int(ignore_index),
        reduction=reduction,
        compute_grad=input.requires_grad and torch.is_grad_enabled(),
        gamma=float(gamma),
        focal_alpha=1.0 if alpha is None or alpha_tensor is not None else float(alpha),
    )
    return _SoftmaxLossFunction.apply(input, target, alpha_tensor, options)


# --- Modules ----------------------------------------------------------------------------------


class CrossEntropyLoss(reference_softmax.CrossEntropyLoss):
    """Module form of :func:`cross_entropy`: the arguments and buffers of
    reference.softmax.CrossEntropyLoss (torch's, less the deprecated ones), plus the fused
    kernel's ``z_loss_scale`` and ``inplace_backward``."""

    def __init__(
        self,
        weight: torch.Tensor | None = None,
        *,
        ignore_index: int = -100,
        reduction: str = "mean",
        label_smoothing: float = 0.0,
        z_loss_scale: float = 0.0,
        inplace_backward: bool = False,
    ) -> None:
        super().__init__(
            weight,
            ignore_index=ignore_index,
            reduction=reduction,
            label_smoothing=label_smoothing,
        )
        self.z_loss_scale = z_loss_scale
        self.inplace_backward = inplace_backward

    def forward(self, input: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return cross_entropy(
            input,
            target,
            self.weight,
            ignore_index=self.ignore_index,
            reduction=self.reduction,
            label_smoothing=self.label_smoothing,
            z_loss_scale=self.z_loss_scale,
            inplace_backward=self.inplace_backward,
        )


class SoftmaxFocalLoss(reference_softmax.SoftmaxFocalLoss):
    """Module form of :func:`softmax_focal_loss`: the constructor and buffers of
    reference.softmax.SoftmaxFocalLoss, the fused kernel."""

    function = staticmethod(softmax_focal_loss)
