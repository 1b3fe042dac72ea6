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
already divided by the 'mean' denominator, during the forward pass. Backward launches the kernel
again, and its programs leave at once when the upstream gradient is 1 (what ``loss.backward()``
passes): no traffic. Any other upstream gradient rewrites the gradient from the saved logits and
row statistics with the upstream folded in, so that it is rounded once (a stored 16-bit gradient
multiplied in place would be rounded twice). So forward+backward reads the logits once and
writes the gradient once, with no host synchronisation, in one launch: its programs sum the
'mean' denominator over the targets first (``_mean_denominators``) and the loss last
(``kernels._common.finish_reduction``). With ``loss.backward()`` a call is three device
launches: this kernel, autograd's ones_like for the upstream gradient, and this kernel again,
whose programs find that upstream to be 1. The loss keeps a reference to its logits until
backward; inplace_backward=True writes the gradient over them instead (no memory beyond O(N)),
and then an upstream gradient other than 1 scales it in place (``_common.scale_unless_one_``),
rounding it a second time.

Paths, chosen from C (constants below; ``lossbench static`` shows what each compiles to):

- C <= SMALL_C: each thread holds two whole rows (C a compile-time constant, no padding lanes),
  so a row's max, sums and per-row math run once per row, not once per thread sharing it; 1M x 10
  runs as 4096 programs of 256 rows.
- C <= MAX_FUSED_C: a row sits in registers as SPAN-wide tiles spread over at most
  MAX_THREADS_PER_ROW threads, at least ROW_VALUES_PER_THREAD classes each, several rows per
  program when C is small. 16-byte accesses whenever the launcher proves the rows allow them
  (``_alignment``; C = 1000 included).
- C > MAX_FUSED_C: one row per program, an online softmax over CHUNK_C-wide chunks (running max,
  rescaled sums), then a second pass that writes the gradient: the logits are read twice, the
  second time last chunk first, so that the most recently read chunks are still in L2.

Above MAX_FUSED_C the second read is the design's one extra cost: 1.5x the ideal traffic for bf16
(2 reads and a write of the logits' size, against 1 and 1). How much of it hits L2 depends on the
rows in flight: at four programs of one row per SM, 528 rows of 32768 bf16 classes are 33 MiB and
fit in an H200's 50 MiB L2, 528 rows of 131072 classes (132 MiB) do not, so most of their second
read comes from DRAM. Not measured (no GPU was available). What to try on a GPU, in order:

- fewer resident rows, so that the second read hits L2: one program per SM (a grid of 132
  persistent programs, each looping over rows) holds 132 rows, 33 MiB at 131072 classes;
- the single-read design: a row split across the CTAs of a thread-block cluster (sm_90: up to 16),
  each holding its slice in registers, exchanging the slices' (max, sum) through distributed
  shared memory and a cluster barrier, then writing its slice's gradient. One read and one write
  at any C, but it needs cluster barriers and DSMEM, which Triton's tl language does not expose
  (Gluon, or CUDA); compare it against the two-read kernel at 32768 and 131072 classes.

reduction='none' cannot fold its upstream gradient into the forward pass: forward saves each row's
max and log-sum (O(N)) and backward recomputes p from the logits and scales each row by its own
upstream gradient. Under torch.compile 'mean' and 'sum' do the same (see _SoftmaxLossFunction).

Targets of class probabilities (``input``'s shape) have a kernel of their own,
``_softmax_probability_loss_kernel``: logits and probabilities read once, the gradients with
respect to both written once, with the same paths and the same backward.

Numerics: fp32 inside for fp16, bf16 and fp32 logits, fp64 for fp64 ones (so that
``torch.autograd.gradcheck`` applies); the gradient is stored in the input dtype. The true-class
terms use p_y - 1 = expm1(log p_y) and log-sum = log1p(rest), rest being the sum over the classes
below the max, so that p_y close to 1 keeps its precision (the bf16 cancellation trap of
softmax(x_y) - 1). p_j = exp(x_j - m) / sum, never exp(x_j - lse): with logits near 1e4, lse
carries an absolute error of 1e-3 and exp(x_j - lse) a relative one. Non-finite logits give
torch's results (see reference/softmax.py): a row with +inf, or with no finite logit, is nan,
loss and gradient; -inf elsewhere is a masked class. In fp32 the logarithms, the reciprocals and
the focal power take the fast forms of kernels/_common.py (``APPROX``; their error bounds there).

Every launch is a torch.library custom op (below the launchers): torch.compile sees opaque ops
and traces the rest without a graph break, and forward and backward capture in a CUDA graph.
Gradients are first order: backward with ``create_graph=True`` raises.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import triton
import triton.language as tl

from lossbench.kernels._common import (
    APPROXIMATE_MATH,
    CLAIMED_CHUNKS,
    FINISHED_CHUNKS,
    INTERPRETED,
    REDUCTION_CODES,
    check_first_order,
    check_kernel_device,
    check_no_gradient_wanted,
    exp,
    expm1,
    finish_reduction,
    launch_workspace,
    log1p,
    log2,
    scalar_in_compute_dtype,
    scale_unless_one_,
    to_compute_dtype,
    writes_only,
)
from lossbench.reference import softmax as reference_softmax
from lossbench.reference._checks import (
    check_alpha_values,
    check_class_index_target,
    check_class_index_values,
    check_floating,
    check_focal_options,
    check_no_ignore_index_for_probabilities,
    check_per_class,
    check_reduction,
    compute_dtype,
)

# Rows up to this many classes stay in registers, one read. The register file of an H100/H200 SM
# holds 64K 32-bit values; the row is held in fp32 whatever the input dtype (bf16 is converted
# after the load), so the limit is in elements: 16384 classes are 64 fp32 values per thread at 8
# warps, which with the addresses and row statistics fits below 128 registers, the most that lets
# two programs share an SM. Compiled offline for sm_90 (lossbench static, Triton 3.8): every
# option and reduction fits without spilling at 16384; 32768 classes would need 128 values per
# thread at 8 warps, or 16 warps at 64 values (one program per SM). Not timed on hardware: no GPU
# was available when this was written.
MAX_FUSED_C = 16384
# Chunk width of the online softmax above MAX_FUSED_C: 16 KiB of bf16 per program and chunk, 32
# fp32 values per thread at 8 warps, four programs per SM (compiled: 48-60 registers).
CHUNK_C = 8192
# Registers per thread at most where a row takes all 8 warps of a program and 64 values per
# thread (above 8192 classes): two such programs fit on an SM (65536 registers). The plain losses
# compile to 127 registers there, cross-entropy with a weight and label smoothing to 162 (sm_90,
# Triton 3.8), which would halve the programs per SM; capped, ptxas fits it without spilling
# (lossbench static). Elsewhere no cap: with one, ptxas spends registers up to it (the chunked
# path grows from 63 to 95 registers, four programs per SM to two).
MAX_ROW_REGISTERS = 128
# Registers per thread at most where threads hold whole rows (C <= SMALL_C). Left to itself,
# ptxas holds these programs at 48-64 registers and parks a value or two in a stack frame (8
# bytes for plain bf16 cross-entropy at C = 10, 16 with a weight, label smoothing and z-loss);
# under a cap of 96 it takes the registers instead (64-96) and spills nothing with any option,
# fp32, fp16 and bf16, at one to two fewer instructions per element, still five to eight
# programs per SM (lossbench static, sm_90, Triton 3.8). Caps of 56 to 80 spilled again
# (8-104 bytes) for some of those options.
SMALL_ROW_REGISTERS = 96
# Up to this many classes the class count is a compile-time constant and each thread holds whole
# rows: the row's max, sums and scalar work (a log, an expm1, the coefficients) run once per row
# instead of once per thread sharing it, and no lane is padding (C = 10 is ten values, not 16).
SMALL_C = 32
# Values each thread holds per row in registers, at least: the per-row work (about 150 SASS
# instructions, repeated by every thread that shares the row) is then a few instructions per
# element. At most MAX_THREADS_PER_ROW threads share a row, so 16384 classes are 64 per thread.
ROW_VALUES_PER_THREAD = 32
MAX_THREADS_PER_ROW = 256
TILE_NUM_WARPS = 4  # at least; a row of more than 128 threads takes its warps
# Rows per thread when a thread holds whole rows: two rows of independent loads and math.
SMALL_ROWS_PER_THREAD = 2
# Tiles per row at most under Triton's interpreter (see _tile_shape).
INTERPRETED_TILES = 4
# 'mean': the denominators are summed over chunks of the targets that programs claim in turn
# (lossbench.kernels._common's workspace). A chunk is TARGET_BLOCK x steps targets, at most
# MAX_TARGET_CHUNKS chunks, so that every program can add all chunks' sums from L2 (2 KiB).
TARGET_BLOCK = 1024
MIN_TARGET_STEPS = 4
MAX_TARGET_CHUNKS = 256
# The probability-target kernel and the vocabulary-parallel kernels loop over BLOCK_C-wide chunks
# of a (ROWS, BLOCK_C) tile (_block_shape): a few thousand elements per program, so that each
# program moves 8-16 KiB (bf16-fp32) like a long row does; about 16 fp32 tile values per thread,
# enough independent loads to cover memory latency, few enough registers that programs share an
# SM; 32 warps (1024 threads) is CUDA's limit per program.
TILE_ELEMENTS = 4096
ELEMENTS_PER_THREAD = 16
MAX_NUM_WARPS = 32

_KERNEL_DTYPES = (torch.float32, torch.float16, torch.bfloat16, torch.float64)
_MEAN: tl.constexpr = tl.constexpr(REDUCTION_CODES["mean"])
_NONE: tl.constexpr = tl.constexpr(REDUCTION_CODES["none"])
_MAX_TARGET_CHUNKS: tl.constexpr = tl.constexpr(MAX_TARGET_CHUNKS)
_TARGET_BLOCK: tl.constexpr = tl.constexpr(TARGET_BLOCK)


# --- Kernel building blocks -------------------------------------------------------------------


@triton.jit
def _class_weights(
    class_weight_ptr,
    classes,
    class_mask,
    HAS_WEIGHT: tl.constexpr,
    FP64: tl.constexpr,
    AGAIN: tl.constexpr = False,
):
    """The per-class weights of one chunk of classes in the compute dtype (ones without a
    weight), 0 on masked lanes.

    AGAIN: a second read of weights this program read before (from L1: the weight is C values),
    marked .ca so that the compiler does not merge it with the first and keep every weight in
    registers in between (64 more per thread at 16384 classes: half the programs per SM,
    compiled for sm_90).
    """
    if HAS_WEIGHT:
        weights = tl.load(
            class_weight_ptr + classes,
            mask=class_mask,
            other=0.0,
            cache_modifier=".ca" if AGAIN else "",
        )
        return to_compute_dtype(weights, FP64)
    return to_compute_dtype(tl.where(class_mask, 1.0, 0.0), FP64)


@triton.jit
def _mean_denominators(
    target_ptr,
    class_weight_ptr,
    partials_ptr,
    workspace_ptr,
    n_rows,
    n_classes,
    n_spatial,
    stride_target_n,
    stride_target_s,
    ignore_index,
    n_target_chunks,
    target_steps,
    WEIGHTED: tl.constexpr,
    HAS_SPATIAL: tl.constexpr,
):
    """The 'mean' denominators, the same in every program: (sum of w_y, count) over the
    non-ignored targets, in the compute dtype (partials_ptr's; w = 1 without WEIGHTED).

    Programs claim chunks of TARGET_BLOCK x target_steps targets in turn and write each chunk's
    sums to partials_ptr[2 * chunk + (0, 1)]; once every chunk is written, each program adds them
    in chunk order (deterministic). A program waits only for chunks already claimed, by programs
    that are running and never wait before finishing them, so the wait always ends; under the
    interpreter, which runs programs one after another, the first program claims every chunk.
    """
    dtype = partials_ptr.dtype.element_ty
    claim = tl.atomic_add(workspace_ptr + CLAIMED_CHUNKS, 1, sem="relaxed")
    while claim < n_target_chunks:  # runs n_target_chunks times per launch
        weight_sum = tl.zeros([_TARGET_BLOCK], dtype)
        count = tl.zeros([_TARGET_BLOCK], dtype)
        first = claim.to(tl.int64) * target_steps * _TARGET_BLOCK
        for step in range(0, target_steps):
            rows = first + step * _TARGET_BLOCK + tl.arange(0, _TARGET_BLOCK)
            if HAS_SPATIAL:
                at = (rows // n_spatial) * stride_target_n + (rows % n_spatial) * stride_target_s
            else:
                at = rows * stride_target_n
            exists = rows < n_rows
            # int64: a target of any integer dtype compares with ignore_index as a number.
            target = tl.load(target_ptr + at, mask=exists, other=0).to(tl.int64)
            counted = exists & (target != ignore_index)
            count += counted.to(dtype)
            if WEIGHTED:
                # A label out of range (a nan row on the GPU) must not index outside the weight.
                safe = tl.minimum(tl.maximum(target, 0), n_classes - 1)
                weight = tl.load(class_weight_ptr + safe, mask=counted, other=0.0)
                weight_sum += weight.to(dtype)
        tl.store(partials_ptr + 2 * claim, tl.sum(weight_sum, axis=0))
        tl.store(partials_ptr + 2 * claim + 1, tl.sum(count, axis=0))
        # The sums are stored before the chunk counts as finished (release), and read after every
        # chunk has (acquire), from L2 (.cg).
        tl.debug_barrier()
        tl.atomic_add(workspace_ptr + FINISHED_CHUNKS, 1, sem="release")
        claim = tl.atomic_add(workspace_ptr + CLAIMED_CHUNKS, 1, sem="relaxed")
    finished = tl.atomic_add(workspace_ptr + FINISHED_CHUNKS, 0, sem="acquire")
    while finished < n_target_chunks:  # runs 0 times per program: a wait, not work
        finished = tl.atomic_add(workspace_ptr + FINISHED_CHUNKS, 0, sem="acquire")
    chunks = tl.arange(0, _MAX_TARGET_CHUNKS)
    written = chunks < n_target_chunks
    sums = tl.load(partials_ptr + 2 * chunks, mask=written, other=0.0, cache_modifier=".cg")
    counts = tl.load(partials_ptr + 2 * chunks + 1, mask=written, other=0.0, cache_modifier=".cg")
    count = tl.sum(counts, axis=0)
    if WEIGHTED:
        return tl.sum(sums, axis=0), count
    return count, count


@triton.jit
def _load_logits(logits_ptr, logits_row, classes, stride_logits_c, row_mask, class_mask):
    """One (ROWS, width) tile of logits as loaded, -inf in masked lanes."""
    offsets = logits_row[:, None] + classes[None, :].to(tl.int64) * stride_logits_c
    return tl.load(
        logits_ptr + offsets, mask=row_mask[:, None] & class_mask[None, :], other=float("-inf")
    )


@triton.jit
def _exponentials(x, finite_max):
    """e = exp(x - m) of one tile, and per element what each row's "below" sums: e, or 0 at the
    max. The caller adds them up over its tiles before reducing each row once: one cross-thread
    reduction per row, not one per tile.

    below sums to the exact "rest" of log-sum = log1p(rest) when one class holds the max: the
    max's own e = 1 is left out rather than subtracted, so a row with p_y close to 1 keeps its
    precision. t = x - m is exactly 0 at the max, so e is exactly 1 there; masked lanes hold
    x = -inf, e = 0.
    """
    t = x - finite_max[:, None]
    e = exp(t)
    return e, tl.where(t < 0.0, e, 0.0)


@triton.jit
def _rest(below, total):
    """sum of exp(x_c - m) less one class at the max: ``below`` when one class holds the max,
    ``total - 1`` when several do (then rest >= 1, and subtracting loses nothing). A nan in total
    (a nan logit) stays nan."""
    return tl.where(total - below <= 1.5, below, total - 1.0)


@triton.jit
def _fold_gaps(x, weights, mask, row_max, new_max, gap_sum, weight_sum):
    """Fold one chunk into each row's sum_c v_c (m - x_c) and sum_c v_c: label smoothing's sum
    (v = the class weights w) and a probability target's (v = w q').

    x: (ROWS, BLOCK_C) logits; weights: v, (1 or ROWS, BLOCK_C); mask: (ROWS, BLOCK_C), the lanes
    that exist. Every term is non-negative, so nothing cancels; a rising max rebases the sum,
    sum v (m_new - x) = sum v (m_old - x) + (m_new - m_old) sum v. A class at -inf contributes
    +inf (its log p is -inf), as in torch; a lane that does not exist contributes 0, and never
    as 0 x inf (which would make a nan, and a numpy warning in the interpreter).
    """
    finite_new = tl.where(new_max == float("-inf"), 0.0, new_max)
    finite_old = tl.where(row_max == float("-inf"), finite_new, row_max)
    gap = tl.where(mask, finite_new[:, None] - x, 0.0)  # m - x, +inf where x = -inf
    gap_sum = gap_sum + (finite_new - finite_old) * weight_sum + tl.sum(weights * gap, axis=1)
    weight_sum = weight_sum + tl.sum(tl.where(mask, weights, 0.0), axis=1)
    return gap_sum, weight_sum


@triton.jit
def _fold_chunk(
    x,
    class_weight,
    class_mask,
    row_mask,
    row_max,
    rest,
    smooth,
    weight_seen,
    LABEL_SMOOTHING: tl.constexpr,
):
    """Fold one chunk of logits, x of shape (ROWS, BLOCK_C), into each row's running statistics.

    row_max: the max m so far. rest: sum of exp(x_c - m) over the classes seen, less 1 for one
    class at the max, so that log-sum = log1p(rest) is exact when one class dominates. Every
    update adds non-negative terms, so nothing cancels. smooth: sum_c w_c (m - x_c) over the classes
    seen (LABEL_SMOOTHING), again non-negative terms; weight_seen: their sum_c w_c. Masked lanes
    hold x = -inf: they add exp(-inf) = 0 to rest and nothing to smooth. (The chunked path, the
    probability-target kernel and kernels.vocab_parallel fold their chunks with it.)
    """
    chunk_max = tl.max(x, axis=1)
    new_max = tl.maximum(row_max, chunk_max)
    # A row with no finite logit yet has m = -inf; shift by 0 there so that -inf - -inf never
    # makes a nan (such a row's rest is discarded by the rescaling once a finite logit arrives).
    finite_max = tl.where(new_max == float("-inf"), 0.0, new_max)
    e, below_terms = _exponentials(x, finite_max)
    below = tl.sum(below_terms, axis=1)
    total = tl.sum(e, axis=1)
    # A new max (in this chunk) turns the old 1 + rest into (1 + rest) e^(m_old - m_new), and
    # this chunk's own rest (one of its classes at the new max left out) joins it; otherwise the
    # chunk's classes all add to rest, a class tied with the max adding its 1.
    rescaled = (1.0 + rest) * exp(row_max - finite_max)
    rest = tl.where(chunk_max > row_max, rescaled + _rest(below, total), rest + total)
    if LABEL_SMOOTHING:
        smooth, weight_seen = _fold_gaps(
            x,
            class_weight[None, :],
            row_mask[:, None] & class_mask[None, :],
            row_max,
            new_max,
            smooth,
            weight_seen,
        )
    return new_max, rest, smooth, weight_seen


@triton.jit
def _row_terms(
    finite_max,
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
    APPROX: tl.constexpr = False,
):
    """Each row's loss and its gradient coefficients T, B, K; see the derivations inline.

    scale_weighted multiplies what torch's 'mean' divides by sum_i w_{y_i} (the weighted
    cross-entropy and smoothing terms); scale_count what it divides by the count of non-ignored
    rows (z-loss, focal). Both are 1 for 'sum', the inverse denominators for 'mean', and the row's
    upstream gradient in backward. finite_max: the row's max, 0 for a row with no finite logit
    (whose results the caller replaces). Returns (loss, T, B, K, p_y - 1), each of shape (ROWS,).
    """
    nll = (finite_max - target_logit) + log_sum  # -log p_y = logsumexp(x) - x_y >= 0
    log_p = -nll
    p_minus_one = expm1(log_p, APPROX)  # p_y - 1, exact near p_y = 1 (softmax(x_y) - 1 cancels)
    prob_coef = tl.zeros_like(nll)
    class_coef = tl.zeros_like(nll)
    if FOCAL:
        # L = -a (1-p)^g log p with p = p_y and a = alpha_y; dp/dx_j = p ([j == y] - p_j), so
        #   dL/dx_j = a [(1-p)^g - g p (1-p)^(g-1) log p] (p_j - [j == y])
        #           = a (1-p)^g [1 - g p log(p) / (1-p)] (p_j - [j == y]).
        # The second form avoids (1-p)^(g-1), infinite at p = 1 when g < 1; there
        # p log(p) / (1-p) -> -1 and T -> a 0^g (1 + g): 0 for g > 0, a for g = 0 (plain CE).
        # At p = 0 (a true logit at -inf) p log(p) / (1-p) -> 0 and T -> a: the gradient's limit
        # a (p_j - [j == y]), not the 0 x -inf of the formula.
        one_minus_p = -p_minus_one
        has_mass = one_minus_p > 0.0
        safe_base = tl.where(has_mass, one_minus_p, 1.0)
        zero_power = tl.where(gamma == 0.0, 1.0, 0.0)  # 0^g
        modulating = tl.where(has_mass, tl.exp2(gamma * log2(safe_base, APPROX)), zero_power)
        finite_log_p = tl.where(log_p == float("-inf"), 0.0, log_p)
        p = exp(finite_log_p)
        p_log_ratio = tl.where(has_mass, p * finite_log_p / safe_base, -1.0)
        alpha = target_weight * focal_alpha
        loss = alpha * modulating * nll * scale_count
        true_coef = alpha * modulating * (1.0 - gamma * p_log_ratio) * scale_count
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
            lse = finite_max + log_sum
            loss += z_loss_scale * lse * lse * scale_count
            prob_coef += 2.0 * z_loss_scale * lse * scale_count
    return loss, true_coef, prob_coef, class_coef, p_minus_one


@triton.jit
def _gradient_coefficients(true_coef, prob_coef, class_coef, p_minus_one, log_sum, active, nan_row):
    """Fold 1/sum and the row's fate into T, B, K, so that the gradient pass keeps few per-row
    values live: grad_j = prob_scale exp(x_j - m) (j != y), target_value (j == y), less K w_j.

    Ignored rows get 0; ``nan_row`` rows nan (a label outside [0, C), possible only on a GPU,
    or logits without a softmax, ignored or not, as torch), through the coefficients:
    nan x exp(...) is nan even where exp(...) is 0.
    """
    computed = active & ~nan_row
    fill = tl.where(nan_row, float("nan"), 0.0)
    # At j == y: T (p_y - 1) + B p_y with p_y - 1 from expm1, exact near p_y = 1 where
    # softmax(x_y) - 1 cancels.
    target_value = tl.where(
        computed, true_coef * p_minus_one + prob_coef * (1.0 + p_minus_one), fill
    )
    prob_scale = tl.where(computed, (true_coef + prob_coef) * exp(-log_sum), fill)
    class_coef = tl.where(computed, class_coef, fill)
    return prob_scale, target_value, class_coef


@triton.jit
def _store_tile_gradient(
    grad_ptr,
    grad_row,
    stride_grad_c,
    e,
    classes,
    class_mask,
    class_weight,
    row_mask,
    target_class,
    prob_scale,
    target_value,
    class_coef,
    LABEL_SMOOTHING: tl.constexpr,
):
    """Write T (p_j - [j == y]) + B p_j - K w_j for one tile of classes of each row, from
    e = exp(x_j - m). target_class: int32 (one instruction per compare, not int64's three)."""
    grad = tl.where(
        classes[None, :] == target_class[:, None], target_value[:, None], prob_scale[:, None] * e
    )
    if LABEL_SMOOTHING:
        grad -= class_coef[:, None] * class_weight[None, :]
    offsets = grad_row[:, None] + classes[None, :].to(tl.int64) * stride_grad_c
    tl.store(
        grad_ptr + offsets,
        grad.to(grad_ptr.dtype.element_ty),
        mask=row_mask[:, None] & class_mask[None, :],
    )


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
    """_store_tile_gradient from the logits x of the tile and each row's max (kernels.vocab_parallel
    writes its slices with it). target: the class in [-C, C) to compare, -1 or any other where
    none is the target."""
    e, _ = _exponentials(x, finite_max)
    _store_tile_gradient(
        grad_ptr,
        grad_row,
        stride_grad_c,
        e,
        classes,
        class_mask,
        class_weight,
        row_mask,
        target.to(tl.int32),
        prob_scale,
        target_value,
        class_coef,
        LABEL_SMOOTHING,
    )


@triton.jit
def _softmax_loss_kernel(
    logits_ptr,  # (N, C, S) fp32/fp16/bf16/fp64, any strides: the logits
    target_ptr,  # (N, S) integer: class indices, or ignore_index
    class_weight_ptr,  # (C,) float: CE weight or focal alpha per class; read when HAS_WEIGHT
    class_weight_total_ptr,  # () compute dtype: sum of class_weight; HAS_WEIGHT, LABEL_SMOOTHING
    inverse_denominators_ptr,  # (2,) compute dtype: 1 / sum of w_y, 1 / count ('mean'): the
    #                            forward pass writes them, backward reads them
    upstream_ptr,  # (N*S,) float, any stride (0: a reduced loss's one value): when BACKWARD
    row_stats_ptr,  # (N*S, 2) compute dtype: row max, log-sum; SAVE_STATS writes, LOAD_STATS reads
    loss_ptr,  # 'none': (N*S,) input dtype, each row's loss; 'mean'/'sum': () input dtype; forward
    grad_ptr,  # (N, C, S) input dtype, its own strides: d loss / d logits, when COMPUTE_GRAD
    partials_ptr,  # forward 'mean'/'sum': (2 MAX_TARGET_CHUNKS + grid,) compute dtype: the
    #                denominators' chunk sums, then each program's share of the loss
    workspace_ptr,  # forward 'mean'/'sum': (WORKSPACE_COUNTERS,) int32, zero between launches
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
    # Floats declared float64 so that a float64 kernel gets them exact (scalar_in_compute_dtype).
    label_smoothing: tl.float64,
    z_loss_scale: tl.float64,
    gamma: tl.float64,
    focal_alpha: tl.float64,  # a float alpha of the focal loss, multiplying every class (else 1)
    n_target_chunks,  # forward 'mean': chunks of the targets for the denominators
    target_steps,  # forward 'mean': TARGET_BLOCK-target steps per chunk
    FOCAL: tl.constexpr,  # focal loss (else cross-entropy)
    HAS_WEIGHT: tl.constexpr,  # class_weight given (CE weight, focal alpha tensor)
    LABEL_SMOOTHING: tl.constexpr,  # label_smoothing > 0 (CE only)
    Z_LOSS: tl.constexpr,  # z_loss_scale > 0 (CE only)
    REDUCTION: tl.constexpr,  # REDUCTION_CODES
    COMPUTE_GRAD: tl.constexpr,  # write the gradient
    SAVE_STATS: tl.constexpr,  # write each row's max and log-sum for a later backward
    BACKWARD: tl.constexpr,  # backward: the upstream from memory, the gradient, no loss
    LOAD_STATS: tl.constexpr,  # BACKWARD reads each row's statistics (else computes them again)
    SKIP_IF_UPSTREAM_ONE: tl.constexpr,  # BACKWARD of a gradient already written for upstream 1
    HAS_SPATIAL: tl.constexpr,  # S > 1: a row index splits into (sample, position)
    SINGLE_CHUNK: tl.constexpr,  # C <= BLOCK_C: whole rows in registers, one read
    SMALL_C: tl.constexpr,  # C itself when C <= kernels.softmax.SMALL_C (else 0)
    ROWS_PER_PROGRAM: tl.constexpr,
    BLOCK_C: tl.constexpr,  # classes per row held (SINGLE_CHUNK), or per loop step
    SPAN: tl.constexpr,  # classes per tile: BLOCK_C = tiles x SPAN (SINGLE_CHUNK)
    ALIGN: tl.constexpr,  # elements per access the row layout allows (a power of two)
    FP64: tl.constexpr,  # compute in float64 (float64 logits), else in float32
    APPROX: tl.constexpr,  # kernels._common's fast reciprocal and logarithms (fp32 only)
):
    """Each program handles ROWS_PER_PROGRAM rows, BLOCK_C classes at a time (all at once when
    SINGLE_CHUNK): their losses, and their gradient rows when COMPUTE_GRAD.

    SINGLE_CHUNK holds a row as a tuple of (ROWS_PER_PROGRAM, SPAN) tiles, SPAN = (threads per
    row) x ALIGN: Triton then lays each tile out with ALIGN consecutive classes per thread and a
    row's threads in one warp, or in as few warps as it takes, so that reducing a row needs few
    shuffles and no shared memory below 1024 classes (a single (ROWS, BLOCK_C) tile would spread
    a row of 1000 bf16 classes over four warps).
    """
    # lossbench static: the rest runs 1 - SKIP_IF_UPSTREAM_ONE * upstream_is_one times per program
    if SKIP_IF_UPSTREAM_ONE:  # noqa: SIM102 (a constexpr: upstream_ptr may be None without it)
        # The forward pass wrote the gradient for an upstream gradient of 1: with that upstream
        # (what loss.backward() passes) there is nothing to do, and no byte to move. Any other
        # upstream recomputes the gradient with it folded in, rounded once.
        if tl.load(upstream_ptr).to(tl.float32) == 1.0:
            return
    label_smoothing = scalar_in_compute_dtype(label_smoothing, FP64)
    z_loss_scale = scalar_in_compute_dtype(z_loss_scale, FP64)
    gamma = scalar_in_compute_dtype(gamma, FP64)
    focal_alpha = scalar_in_compute_dtype(focal_alpha, FP64)
    # int64 before any multiplication by a stride: row * stride exceeds 2^31 once N x C does, and
    # an int32 product would wrap and read or write another part of memory.
    rows = tl.program_id(0).to(tl.int64) * ROWS_PER_PROGRAM + tl.arange(0, ROWS_PER_PROGRAM)
    row_mask = rows < n_rows
    if SMALL_C > 0:
        n_classes = SMALL_C
    elif ALIGN > 1:
        n_classes = n_classes // ALIGN * ALIGN  # the launcher proved C % ALIGN == 0
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
    if ALIGN > 1:
        # The launcher proved it (contiguous classes, strides and addresses multiples of ALIGN
        # elements): Triton then moves ALIGN elements per instruction, up to 16 bytes, even when
        # C is not a multiple of 16 (C = 1000).
        logits_row = tl.multiple_of(logits_row, ALIGN)
        grad_row = tl.multiple_of(grad_row, ALIGN)

    target = tl.load(target_ptr + target_at, mask=row_mask, other=0).to(tl.int64)
    ignored = target == ignore_index
    in_range = (target >= 0) & (target < n_classes)
    active = row_mask & in_range & ~ignored
    # Out-of-range labels are rejected before launch on the CPU; on a GPU checking would need a
    # host sync, so such a row's loss and gradient become nan. They are never used as an index:
    # every load below that takes the target as an offset is masked by `active`, and the class
    # compared per element is an int32 that is -1 unless the row is active.
    out_of_range = ~ignored & ~in_range
    target_class = tl.where(active, target, -1).to(tl.int32)
    target_logit = to_compute_dtype(
        tl.load(logits_ptr + logits_row + target * stride_logits_c, mask=active, other=0.0), FP64
    )
    zeros = tl.zeros_like(target_logit)  # (ROWS,) in the compute dtype
    if HAS_WEIGHT:
        target_weight = to_compute_dtype(
            tl.load(class_weight_ptr + target, mask=active, other=0.0), FP64
        )
    else:
        target_weight = zeros + 1.0
    if HAS_WEIGHT and LABEL_SMOOTHING:
        weight_total = tl.load(class_weight_total_ptr)
    else:
        weight_total = n_classes * 1.0

    if BACKWARD:
        upstream = tl.load(upstream_ptr + rows * stride_upstream, mask=row_mask, other=0.0)
        scale_weighted = to_compute_dtype(upstream, FP64)
        scale_count = scale_weighted
        if REDUCTION == _MEAN:
            scale_weighted = scale_weighted * tl.load(inverse_denominators_ptr)
            scale_count = scale_count * tl.load(inverse_denominators_ptr + 1)
    elif REDUCTION == _MEAN:
        weight_sum, count = _mean_denominators(
            target_ptr,
            class_weight_ptr,
            partials_ptr,
            workspace_ptr,
            n_rows,
            n_classes,
            n_spatial,
            stride_target_n,
            stride_target_s,
            ignore_index,
            n_target_chunks,
            target_steps,
            HAS_WEIGHT and not FOCAL,
            HAS_SPATIAL,
        )
        # 1/0 = inf makes a 'mean' over no counted row nan (0 x inf), as torch's.
        inverse_weighted = 1.0 / weight_sum
        inverse_count = 1.0 / count
        if tl.program_id(0) == 0:  # runs once per launch
            # For backward, which scales by them again at an upstream gradient other than 1.
            tl.store(inverse_denominators_ptr, inverse_weighted)
            tl.store(inverse_denominators_ptr + 1, inverse_count)
        scale_weighted = zeros + inverse_weighted
        scale_count = zeros + inverse_count
    else:
        scale_weighted = zeros + 1.0
        scale_count = scale_weighted

    smooth = zeros
    if SINGLE_CHUNK:
        # The only read of these rows: everything below works on the registers. Tuples grow by
        # concatenation: Triton's frontend has no starred unpacking.
        xs = ()
        for tile in tl.static_range(BLOCK_C // SPAN):
            classes = tile * SPAN + tl.arange(0, SPAN)
            x = _load_logits(
                logits_ptr, logits_row, classes, stride_logits_c, row_mask, classes < n_classes
            )
            xs = xs + (to_compute_dtype(x, FP64),)  # noqa: RUF005
        if LOAD_STATS:
            row_max = tl.load(row_stats_ptr + 2 * rows, mask=row_mask, other=0.0)
            log_sum = tl.load(row_stats_ptr + 2 * rows + 1, mask=row_mask, other=0.0)
        else:
            widest = xs[0]
            for tile in tl.static_range(1, BLOCK_C // SPAN):
                widest = tl.maximum(widest, xs[tile])
            row_max = tl.max(widest, axis=1)
        # A row with no finite logit (a padding row among them) has m = -inf: shift by 0 there,
        # so that no -inf - -inf or 0 x -inf is evaluated (its loss and gradient are decided
        # below).
        finite_max = tl.where(row_max == float("-inf"), 0.0, row_max)
        es = ()
        for tile in tl.static_range(BLOCK_C // SPAN):
            e, tile_below = _exponentials(xs[tile], finite_max)
            es = es + (e,)  # noqa: RUF005
            if not LOAD_STATS:
                # Summed per element over the tiles, reduced once per row below.
                if tile == 0:
                    below_terms, total_terms = tile_below, e
                else:
                    below_terms += tile_below
                    total_terms += e
                if LABEL_SMOOTHING:
                    # sum_c w_c (m - x_c): non-negative terms, +inf for a class at -inf (its
                    # log p is -inf), as torch's; a lane that does not exist adds 0.
                    classes = tile * SPAN + tl.arange(0, SPAN)
                    class_mask = classes < n_classes
                    weights = _class_weights(
                        class_weight_ptr, classes, class_mask, HAS_WEIGHT, FP64
                    )
                    lanes = row_mask[:, None] & class_mask[None, :]
                    gaps = weights[None, :] * tl.where(lanes, finite_max[:, None] - xs[tile], 0.0)
                    if tile == 0:
                        smooth_terms = gaps
                    else:
                        smooth_terms += gaps
        if not LOAD_STATS:
            rest = _rest(tl.sum(below_terms, axis=1), tl.sum(total_terms, axis=1))
            log_sum = log1p(rest, APPROX)
            if LABEL_SMOOTHING:
                smooth = tl.sum(smooth_terms, axis=1)
    else:
        classes = tl.arange(0, BLOCK_C)
        if LOAD_STATS:
            row_max = tl.load(row_stats_ptr + 2 * rows, mask=row_mask, other=0.0)
            log_sum = tl.load(row_stats_ptr + 2 * rows + 1, mask=row_mask, other=0.0)
        else:
            # Online softmax over the chunks (_fold_chunk).
            row_max = zeros + float("-inf")
            rest = zeros
            weight_seen = zeros
            for start in range(0, n_classes, BLOCK_C):
                chunk = start + classes
                class_mask = chunk < n_classes
                x = _load_logits(
                    logits_ptr, logits_row, chunk, stride_logits_c, row_mask, class_mask
                )
                x = to_compute_dtype(x, FP64)
                class_weight = _class_weights(
                    class_weight_ptr, chunk, class_mask, HAS_WEIGHT and LABEL_SMOOTHING, FP64
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
            log_sum = log1p(rest, APPROX)
        finite_max = tl.where(row_max == float("-inf"), 0.0, row_max)

    loss, true_coef, prob_coef, class_coef, p_minus_one = _row_terms(
        finite_max,
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
        APPROX,
    )

    # A row without a softmax (a logit at +inf, or none finite: its max is not finite) has a nan
    # loss and a nan gradient, as in torch, even when ignored (torch's log_softmax backward is
    # nan there whatever flows into it). A nan logit makes the row's sums nan by itself.
    no_softmax = (row_max == float("inf")) | (row_max == float("-inf"))
    nan_row = out_of_range | no_softmax

    if COMPUTE_GRAD:
        prob_scale, target_value, class_coef = _gradient_coefficients(
            true_coef, prob_coef, class_coef, p_minus_one, log_sum, active, nan_row
        )
        if SINGLE_CHUNK:
            for tile in tl.static_range(BLOCK_C // SPAN):
                classes = tile * SPAN + tl.arange(0, SPAN)
                class_mask = classes < n_classes
                _store_tile_gradient(
                    grad_ptr,
                    grad_row,
                    stride_grad_c,
                    es[tile],
                    classes,
                    class_mask,
                    _class_weights(
                        class_weight_ptr,
                        classes,
                        class_mask,
                        HAS_WEIGHT and LABEL_SMOOTHING,
                        FP64,
                        True,
                    ),
                    row_mask,
                    target_class,
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
                x = _load_logits(
                    logits_ptr, logits_row, chunk, stride_logits_c, row_mask, class_mask
                )
                e, _ = _exponentials(to_compute_dtype(x, FP64), finite_max)
                _store_tile_gradient(
                    grad_ptr,
                    grad_row,
                    stride_grad_c,
                    e,
                    chunk,
                    class_mask,
                    _class_weights(
                        class_weight_ptr,
                        chunk,
                        class_mask,
                        HAS_WEIGHT and LABEL_SMOOTHING,
                        FP64,
                        True,
                    ),
                    row_mask,
                    target_class,
                    prob_scale,
                    target_value,
                    class_coef,
                    LABEL_SMOOTHING,
                )

    if not BACKWARD:
        # An ignored row adds 0 x the 'mean' scale: 0 x 1/0 = nan when no row counts, which is
        # torch's 0/0 for a 'mean' over nothing.
        ignored_loss = 0.0 * scale_count if FOCAL else 0.0 * scale_weighted
        loss = tl.where(
            active & ~no_softmax,
            loss,
            tl.where(out_of_range | (active & no_softmax), float("nan"), ignored_loss),
        )
        if SAVE_STATS:
            tl.store(row_stats_ptr + 2 * rows, row_max, mask=row_mask)
            tl.store(row_stats_ptr + 2 * rows + 1, log_sum, mask=row_mask)
        if REDUCTION == _NONE:
            tl.store(loss_ptr + rows, loss.to(loss_ptr.dtype.element_ty), mask=row_mask)
        else:
            share = tl.sum(tl.where(row_mask, loss, 0.0), axis=0)
            finish_reduction(partials_ptr + 2 * _MAX_TARGET_CHUNKS, workspace_ptr, loss_ptr, share)


# --- Probability targets ------------------------------------------------------------------------
# A target q of the logits' shape holds class probabilities (soft labels: distillation, mixup).
# With class weights w, label smoothing e and q' = (1 - e) q + e / C (torch's), per row:
#
#     L = -sum_c v_c log p_c = sum_c v_c (m - x_c) + V log-sum,    v = w q',  V = sum_c v_c
#     dL/dx_j = V p_j - v_j                       dL/dq_j = -(1 - e) w_j log p_j
#
# and 'mean' divides by the number of rows N*S whatever the weights (torch's convention for
# probability targets). Both sums of the loss have non-negative terms when q >= 0 (no
# cancellation), gathered by _fold_gaps as label smoothing's are.


@triton.jit
def _probability_weights(
    target_ptr,
    target_offsets,
    mask,
    class_weight_ptr,
    classes,
    class_mask,
    n_classes,
    label_smoothing,
    HAS_WEIGHT: tl.constexpr,
    LABEL_SMOOTHING: tl.constexpr,
    FP64: tl.constexpr,
):
    """v = w q' for one chunk of rows (0 where ``mask`` is off), and w, (1, BLOCK_C)."""
    q = to_compute_dtype(tl.load(target_ptr + target_offsets, mask=mask, other=0.0), FP64)
    w = _class_weights(class_weight_ptr, classes, class_mask, HAS_WEIGHT, FP64)[None, :]
    if LABEL_SMOOTHING:
        q = (1.0 - label_smoothing) * q + label_smoothing / n_classes
    return tl.where(mask, w * q, 0.0), w


@triton.jit
def _store_probability_gradients(
    grad_ptr,
    target_grad_ptr,
    grad_offsets,
    target_grad_offsets,
    mask,
    x,
    v,
    w,
    finite_max,
    log_sum,
    row_scale,
    prob_scale,
    target_scale,
    COMPUTE_GRAD: tl.constexpr,
    COMPUTE_TARGET_GRAD: tl.constexpr,
):
    """Write s (V p_j - v_j) and -s (1 - e) w_j log p_j for one chunk of each row (s: the row's
    scale; prob_scale = s V / sum, target_scale = s (1 - e), both nan on rows without a
    softmax)."""
    if COMPUTE_GRAD:
        grad = prob_scale[:, None] * tl.exp(x - finite_max[:, None]) - row_scale[:, None] * v
        tl.store(grad_ptr + grad_offsets, grad.to(grad_ptr.dtype.element_ty), mask=mask)
    if COMPUTE_TARGET_GRAD:
        # -log p_j = (m - x_j) + log-sum: +inf for a class at -inf, as torch's.
        minus_log_p = tl.where(mask, finite_max[:, None] - x, 0.0) + log_sum[:, None]
        target_grad = target_scale[:, None] * w * minus_log_p
        tl.store(
            target_grad_ptr + target_grad_offsets,
            target_grad.to(target_grad_ptr.dtype.element_ty),
            mask=mask,
        )


@triton.jit
def _probability_chunk(
    logits_ptr,
    logits_row,
    stride_logits_c,
    target_ptr,
    target_row,
    stride_target_c,
    class_weight_ptr,
    chunk,
    row_mask,
    n_classes,
    label_smoothing,
    HAS_WEIGHT: tl.constexpr,
    LABEL_SMOOTHING: tl.constexpr,
    FP64: tl.constexpr,
):
    """One (rows, chunk) tile of _softmax_probability_loss_kernel's rows: the logits x in the
    compute dtype (-inf on masked lanes), v and w of ``_probability_weights``, and the masks and
    class offsets the tile's stores reuse."""
    class_mask = chunk < n_classes
    mask = row_mask[:, None] & class_mask[None, :]
    class_offsets = chunk[None, :].to(tl.int64)
    x = tl.load(
        logits_ptr + logits_row[:, None] + class_offsets * stride_logits_c,
        mask=mask,
        other=float("-inf"),
    )
    x = to_compute_dtype(x, FP64)
    v, w = _probability_weights(
        target_ptr,
        target_row[:, None] + class_offsets * stride_target_c,
        mask,
        class_weight_ptr,
        chunk,
        class_mask,
        n_classes,
        label_smoothing,
        HAS_WEIGHT,
        LABEL_SMOOTHING,
        FP64,
    )
    return x, v, w, class_mask, mask, class_offsets


@triton.jit
def _softmax_probability_loss_kernel(
    logits_ptr,  # (N, C, S) fp32/fp16/bf16/fp64, any strides: the logits
    target_ptr,  # (N, C, S) any float dtype, any strides: the class probabilities q
    class_weight_ptr,  # (C,) float: per-class weight w; read when HAS_WEIGHT
    upstream_ptr,  # (N*S,) float, any stride (0: a reduced loss's one value): when BACKWARD
    row_stats_ptr,  # (N*S, 3) compute dtype: max, log-sum, V; SAVE_STATS writes, LOAD_STATS reads
    loss_ptr,  # (N*S,) compute or result dtype: each row's loss (times scale); forward only
    grad_ptr,  # (N, C, S) logits' dtype, its own strides: d loss / d logits; COMPUTE_GRAD
    target_grad_ptr,  # (N, C, S) target's dtype, its own strides: d loss / d q; COMPUTE_TARGET_GRAD
    n_rows,  # N*S
    n_classes,  # C
    n_spatial,  # S = d1 x d2 x ..., 1 for (N, C) input
    stride_logits_n,
    stride_logits_c,
    stride_logits_s,
    stride_target_n,
    stride_target_c,
    stride_target_s,
    stride_grad_n,
    stride_grad_c,
    stride_grad_s,
    stride_target_grad_n,
    stride_target_grad_c,
    stride_target_grad_s,
    stride_upstream,
    label_smoothing: tl.float64,  # float64 so that a float64 kernel gets it exact
    HAS_WEIGHT: tl.constexpr,
    LABEL_SMOOTHING: tl.constexpr,  # label_smoothing > 0
    COMPUTE_GRAD: tl.constexpr,  # write d loss / d logits
    COMPUTE_TARGET_GRAD: tl.constexpr,  # write d loss / d target
    SAVE_STATS: tl.constexpr,  # write each row's max, log-sum and V for a later backward
    BACKWARD: tl.constexpr,  # backward: the upstream from memory, the gradients, no loss
    LOAD_STATS: tl.constexpr,  # BACKWARD reads each row's statistics (else computes them again)
    SKIP_IF_UPSTREAM_ONE: tl.constexpr,  # BACKWARD of gradients already written for upstream 1
    HAS_SPATIAL: tl.constexpr,  # S > 1: a row index splits into (sample, position)
    SINGLE_CHUNK: tl.constexpr,  # C <= BLOCK_C: whole rows in registers, one read
    ROWS_PER_PROGRAM: tl.constexpr,
    BLOCK_C: tl.constexpr,
    MEAN: tl.constexpr,  # 'mean': every row's loss and gradients divided by N*S
    FP64: tl.constexpr,  # compute in float64, else in float32
):
    """Each program handles ROWS_PER_PROGRAM rows and their target probabilities, BLOCK_C classes
    at a time (all at once when SINGLE_CHUNK): their losses, and their gradients with respect to
    the logits and to the target when asked."""
    if SKIP_IF_UPSTREAM_ONE:  # noqa: SIM102 (as in _softmax_loss_kernel)
        if tl.load(upstream_ptr).to(tl.float32) == 1.0:
            return
    # int64 before any multiplication by a stride (see _softmax_loss_kernel).
    rows = tl.program_id(0).to(tl.int64) * ROWS_PER_PROGRAM + tl.arange(0, ROWS_PER_PROGRAM)
    row_mask = rows < n_rows
    if HAS_SPATIAL:
        sample = rows // n_spatial
        position = rows % n_spatial
        logits_row = sample * stride_logits_n + position * stride_logits_s
        target_row = sample * stride_target_n + position * stride_target_s
        grad_row = sample * stride_grad_n + position * stride_grad_s
        target_grad_row = sample * stride_target_grad_n + position * stride_target_grad_s
    else:
        logits_row = rows * stride_logits_n
        target_row = rows * stride_target_n
        grad_row = rows * stride_grad_n
        target_grad_row = rows * stride_target_grad_n

    zeros = to_compute_dtype(tl.zeros([ROWS_PER_PROGRAM], tl.float32), FP64)
    label_smoothing = scalar_in_compute_dtype(label_smoothing, FP64)
    # torch's 'mean' for probability targets: the sum over the N*S rows, whatever the weights.
    row_scale = 1.0 / (zeros + n_rows) if MEAN else zeros + 1.0
    if BACKWARD:
        upstream = tl.load(upstream_ptr + rows * stride_upstream, mask=row_mask, other=0.0)
        row_scale = to_compute_dtype(upstream, FP64) * row_scale

    classes = tl.arange(0, BLOCK_C)
    if SINGLE_CHUNK:
        # The only read of these rows and their targets.
        x, v, w, class_mask, mask, class_offsets = _probability_chunk(
            logits_ptr,
            logits_row,
            stride_logits_c,
            target_ptr,
            target_row,
            stride_target_c,
            class_weight_ptr,
            classes,
            row_mask,
            n_classes,
            label_smoothing,
            HAS_WEIGHT,
            LABEL_SMOOTHING,
            FP64,
        )

    if LOAD_STATS:
        row_max = tl.load(row_stats_ptr + 3 * rows, mask=row_mask, other=0.0)
        log_sum = tl.load(row_stats_ptr + 3 * rows + 1, mask=row_mask, other=0.0)
        weight_sum = tl.load(row_stats_ptr + 3 * rows + 2, mask=row_mask, other=0.0)
    else:
        row_max = zeros + float("-inf")
        rest = zeros
        gap_sum = zeros
        weight_sum = zeros
        if SINGLE_CHUNK:
            new_max, rest, _, _ = _fold_chunk(
                x, w, class_mask, row_mask, row_max, rest, zeros, zeros, False
            )
            gap_sum, weight_sum = _fold_gaps(x, v, mask, row_max, new_max, gap_sum, weight_sum)
            row_max = new_max
        else:
            for start in range(0, n_classes, BLOCK_C):
                chunk = start + classes
                x, v, w, class_mask, mask, class_offsets = _probability_chunk(
                    logits_ptr,
                    logits_row,
                    stride_logits_c,
                    target_ptr,
                    target_row,
                    stride_target_c,
                    class_weight_ptr,
                    chunk,
                    row_mask,
                    n_classes,
                    label_smoothing,
                    HAS_WEIGHT,
                    LABEL_SMOOTHING,
                    FP64,
                )
                new_max, rest, _, _ = _fold_chunk(
                    x, w, class_mask, row_mask, row_max, rest, zeros, zeros, False
                )
                gap_sum, weight_sum = _fold_gaps(x, v, mask, row_max, new_max, gap_sum, weight_sum)
                row_max = new_max
        log_sum = log1p(rest)

    # No softmax (a logit at +inf, or none finite): a nan loss and nan gradients, as in torch.
    no_softmax = (row_max == float("inf")) | (row_max == float("-inf"))
    finite_max = tl.where(row_max == float("-inf"), 0.0, row_max)
    if not BACKWARD:
        loss = (gap_sum + weight_sum * log_sum) * row_scale
        loss = tl.where(no_softmax, float("nan"), loss)
        tl.store(loss_ptr + rows, loss.to(loss_ptr.dtype.element_ty), mask=row_mask)
        if SAVE_STATS:
            tl.store(row_stats_ptr + 3 * rows, row_max, mask=row_mask)
            tl.store(row_stats_ptr + 3 * rows + 1, log_sum, mask=row_mask)
            tl.store(row_stats_ptr + 3 * rows + 2, weight_sum, mask=row_mask)

    if COMPUTE_GRAD or COMPUTE_TARGET_GRAD:
        prob_scale = tl.where(no_softmax, float("nan"), row_scale * weight_sum * tl.exp(-log_sum))
        target_scale = tl.where(no_softmax, float("nan"), row_scale * (1.0 - label_smoothing))
        if SINGLE_CHUNK:
            _store_probability_gradients(
                grad_ptr,
                target_grad_ptr,
                grad_row[:, None] + class_offsets * stride_grad_c,
                target_grad_row[:, None] + class_offsets * stride_target_grad_c,
                mask,
                x,
                v,
                w,
                finite_max,
                log_sum,
                row_scale,
                prob_scale,
                target_scale,
                COMPUTE_GRAD,
                COMPUTE_TARGET_GRAD,
            )
        else:
            n_chunks = tl.cdiv(n_classes, BLOCK_C)
            for chunk_from_end in range(0, n_chunks):
                # Last chunk first: the first pass read it last, so it is the likeliest in L2.
                chunk = (n_chunks - 1 - chunk_from_end) * BLOCK_C + classes
                x, v, w, class_mask, mask, class_offsets = _probability_chunk(
                    logits_ptr,
                    logits_row,
                    stride_logits_c,
                    target_ptr,
                    target_row,
                    stride_target_c,
                    class_weight_ptr,
                    chunk,
                    row_mask,
                    n_classes,
                    label_smoothing,
                    HAS_WEIGHT,
                    LABEL_SMOOTHING,
                    FP64,
                )
                _store_probability_gradients(
                    grad_ptr,
                    target_grad_ptr,
                    grad_row[:, None] + class_offsets * stride_grad_c,
                    target_grad_row[:, None] + class_offsets * stride_target_grad_c,
                    mask,
                    x,
                    v,
                    w,
                    finite_max,
                    log_sum,
                    row_scale,
                    prob_scale,
                    target_scale,
                    COMPUTE_GRAD,
                    COMPUTE_TARGET_GRAD,
                )


# --- Launchers ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class _LossOptions:
    """The non-tensor arguments of one call with class-index targets, checked."""

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
    # Whether a 'mean' or 'sum' loss writes its gradient in the forward pass (eager) or in
    # backward (under torch.compile); see _SoftmaxLossFunction.
    gradient_in_forward: bool = True


@dataclass(frozen=True)
class _BlockShape:
    rows_per_program: int
    block_c: int
    single_chunk: bool
    num_warps: int


def _block_shape(n_rows: int, n_classes: int, max_fused_c: int | None = None) -> _BlockShape:
    """Rows per program, classes per chunk and warps for a (n_rows, n_classes) problem; rows
    of up to ``max_fused_c`` classes (MAX_FUSED_C by default) are held in registers."""
    if max_fused_c is None:
        max_fused_c = MAX_FUSED_C
    if n_classes <= max_fused_c:
        block_c = triton.next_power_of_2(n_classes)
        # Short rows: stack them to TILE_ELEMENTS per program, but no more rows than exist.
        rows = min(max(1, TILE_ELEMENTS // block_c), triton.next_power_of_2(n_rows))
        single_chunk = True
    else:
        block_c, rows, single_chunk = min(CHUNK_C, max_fused_c), 1, False
    num_warps = min(MAX_NUM_WARPS, max(4, rows * block_c // (32 * ELEMENTS_PER_THREAD)))
    return _BlockShape(rows, block_c, single_chunk, num_warps)


@dataclass(frozen=True)
class _TileShape:
    """How _softmax_loss_kernel holds rows (see its docstring)."""

    rows_per_program: int
    block_c: int  # classes held per row (single chunk) or per loop step
    span: int  # classes per tile: threads per row x align
    align: int  # elements per access
    single_chunk: bool
    small_c: int  # C when it is a compile-time constant, else 0
    num_warps: int
    max_registers: int | None = None  # ptxas's cap per thread, None for none


def _alignment(logits: torch.Tensor, grad: torch.Tensor | None) -> int:
    """Elements per access that every row allows, up to 16 bytes: the largest power of two
    dividing the class count, the row starts (strides and storage offsets of the logits and the
    gradient) and the base addresses, with classes contiguous. 1 otherwise (and for (N, C, S)
    inputs, whose classes are S apart)."""
    n_samples, n_classes, n_spatial = logits.shape
    if n_spatial > 1 or logits.stride(1) != 1 or (grad is not None and grad.stride(1) != 1):
        return 1
    align = 16 // logits.element_size()
    sizes = [n_classes]
    for tensor in (logits, grad):
        if tensor is not None:
            if tensor.data_ptr() % tensor.element_size():
                return 1
            sizes.append(tensor.stride(0) if n_samples > 1 else 0)
            sizes.append(tensor.data_ptr() // tensor.element_size())
    while align > 1 and any(size % align for size in sizes):
        align //= 2
    return align


def _tile_shape(n_rows: int, n_classes: int, align: int) -> _TileShape:
    """Rows per program, tiles and warps of _softmax_loss_kernel for a (n_rows, n_classes)
    problem whose rows allow ``align`` elements per access."""
    if n_classes > MAX_FUSED_C:
        # One row per program, 8 warps along it, CHUNK_C classes per step: 32 per thread.
        return _TileShape(1, CHUNK_C, CHUNK_C, align, False, 0, 8)
    if n_classes <= SMALL_C:
        # Whole rows per thread: tiles of `align` classes, as many as the row needs.
        threads_per_row, block_c = 1, triton.cdiv(n_classes, align) * align
        rows_per_thread = SMALL_ROWS_PER_THREAD
    else:
        block_c = triton.next_power_of_2(n_classes)
        threads_per_row = min(max(1, block_c // ROW_VALUES_PER_THREAD), MAX_THREADS_PER_ROW)
        align = min(align, block_c // threads_per_row)
        rows_per_thread = 1
    num_warps = max(TILE_NUM_WARPS, threads_per_row // 32)
    rows = 32 * num_warps * rows_per_thread // threads_per_row
    rows = min(rows, triton.next_power_of_2(n_rows))
    small_c = n_classes if n_classes <= SMALL_C else 0
    span = threads_per_row * align
    if INTERPRETED and not small_c:
        # Layouts mean nothing to the interpreter, which runs every tile's operations in Python:
        # at most INTERPRETED_TILES tiles (of a power-of-two row), still more than one.
        span = max(span, block_c // INTERPRETED_TILES)
    max_registers = None
    if small_c:
        max_registers = SMALL_ROW_REGISTERS
    elif threads_per_row == MAX_THREADS_PER_ROW:
        max_registers = MAX_ROW_REGISTERS
    return _TileShape(rows, block_c, span, align, True, small_c, num_warps, max_registers)


def _target_chunks(n_rows: int) -> tuple[int, int]:
    """(chunks, TARGET_BLOCK steps per chunk) covering n_rows targets, at most MAX_TARGET_CHUNKS."""
    steps = max(MIN_TARGET_STEPS, triton.cdiv(triton.cdiv(n_rows, TARGET_BLOCK), MAX_TARGET_CHUNKS))
    return triton.cdiv(n_rows, steps * TARGET_BLOCK), steps


def _class_rows(tensor: torch.Tensor) -> torch.Tensor:
    """A (N, C, S) view of a tensor of the logits' shape; a row is one (n, s).

    (C,) becomes (1, C, 1); (N, C) becomes (N, C, 1) with any strides; (N, C, d1, ...) flattens
    d1, ... into S, a view unless their strides cannot merge (then a copy).
    """
    if tensor.dim() == 1:
        return tensor[None, :, None]
    if tensor.dim() == 2:
        return tensor.unsqueeze(-1)
    return tensor.flatten(2)


def _as_rows(input: torch.Tensor, target: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Views (N, C, S) of the logits and (N, S) of a class-index target (see _class_rows)."""
    if input.dim() == 1:
        return _class_rows(input), target.reshape(1, 1)
    if input.dim() == 2:
        return _class_rows(input), target.unsqueeze(-1)
    return _class_rows(input), target.flatten(1)


def _inverse_denominators(
    target: torch.Tensor,
    class_weight: torch.Tensor | None,
    options: _LossOptions,
    dtype: torch.dtype,
) -> torch.Tensor:
    """(2,) ``dtype`` on the device: 1 / sum of w_{y_i} and 1 / count, over non-ignored targets.

    Torch ops over the (N,) targets, no host sync; 1/0 = inf makes a 'mean' over nothing nan.
    Focal loss and unweighted cross-entropy divide by the count in both slots. For
    kernels.vocab_parallel, whose collectives separate its launches anyway; the single-device
    kernel sums the same within its one launch (_mean_denominators).
    """
    counted = target != options.ignore_index
    count = counted.sum(dtype=dtype)
    if class_weight is None or options.focal:
        weight_sum = count
    else:
        # clamp: a label out of range (a nan row on the GPU) must not index outside the weight.
        safe_target = target.clamp(0, class_weight.shape[0] - 1).long()
        weight_sum = torch.where(counted, class_weight[safe_target].to(dtype), 0.0).sum()
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
    skip_if_upstream_is_one: bool = False,
) -> None:
    """Launch ``_softmax_loss_kernel`` over the rows of ``logits`` (N, C, S), ``target`` (N, S).

    Forward (``backward=False``) writes ``loss``: (N*S,) per-row losses for 'none', the () loss
    for 'mean' and 'sum'; ``grad`` (N, C, S) when given, ``row_stats`` (N*S, 2) when given, and
    for 'mean' ``inverse_denominators`` (2,). One launch: 'mean' sums its denominators and every
    reduction its loss inside it (kernels._common's workspace). Backward reads ``upstream``
    (N*S,), any stride (0 for a reduced loss's one value), ``inverse_denominators`` for 'mean',
    and ``row_stats`` when given (else it computes them again from the logits), and writes
    ``grad``; with ``skip_if_upstream_is_one`` every program leaves at once when that value is 1.
    ``grad`` may be ``logits`` itself (inplace_backward).
    """
    # I/O, with b bytes per logit and N the number of rows (N*S for (N, C, S) inputs):
    #   C <= MAX_FUSED_C, forward: read N*C*b logits once + N targets + N*b for the true-class
    #     logit (a gather in the row just read: cache); write N losses ('none') or one share
    #     per program and the loss (+ N*C*b gradient when computing it, or 8N (fp32) row
    #     statistics for a backward that will). 'mean' reads the N targets once more for its
    #     denominators.
    #   C > MAX_FUSED_C: the same, but with the gradient the logits are read twice (2 N*C*b):
    #     the row does not fit on chip; the second pass runs last chunk first to hit L2. A
    #     forward that a backward will follow writes the 8N row statistics for it.
    #   backward: read N*C*b logits (+ 8N statistics, when saved) + N targets + N upstream,
    #     write N*C*b; with skip_if_upstream_is_one and an upstream of 1: read one scalar per
    #     program.
    n_samples, n_classes, n_spatial = logits.shape
    n_rows = n_samples * n_spatial
    if n_rows == 0:
        return
    shape = _tile_shape(n_rows, n_classes, _alignment(logits, grad))
    fp64 = logits.dtype == torch.float64
    dtype = compute_dtype(logits.dtype)
    weight_total = None
    if class_weight is not None and options.label_smoothing > 0:
        weight_total = class_weight.sum(dtype=dtype)
    grad_strides = grad.stride() if grad is not None else (0, 0, 0)
    n_programs = triton.cdiv(n_rows, shape.rows_per_program)
    n_target_chunks, target_steps = _target_chunks(n_rows)
    partials = workspace = None
    if options.reduction != "none" and not backward:
        partials = torch.empty(
            2 * MAX_TARGET_CHUNKS + n_programs, dtype=dtype, device=logits.device
        )
        workspace = launch_workspace(logits.device)
    _softmax_loss_kernel[(n_programs,)](
        logits,
        target,
        class_weight,
        weight_total,
        inverse_denominators,
        upstream,
        row_stats,
        loss,
        grad,
        partials,
        workspace,
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
        n_target_chunks,
        target_steps,
        FOCAL=options.focal,
        HAS_WEIGHT=class_weight is not None,
        LABEL_SMOOTHING=options.label_smoothing > 0,
        Z_LOSS=options.z_loss_scale > 0,
        REDUCTION=REDUCTION_CODES[options.reduction],
        COMPUTE_GRAD=grad is not None,
        SAVE_STATS=row_stats is not None and not backward,
        BACKWARD=backward,
        LOAD_STATS=backward and row_stats is not None,
        SKIP_IF_UPSTREAM_ONE=skip_if_upstream_is_one,
        HAS_SPATIAL=n_spatial > 1,
        SINGLE_CHUNK=shape.single_chunk,
        SMALL_C=shape.small_c,
        ROWS_PER_PROGRAM=shape.rows_per_program,
        BLOCK_C=shape.block_c,
        SPAN=shape.span,
        ALIGN=shape.align,
        FP64=fp64,
        APPROX=APPROXIMATE_MATH and not fp64,
        num_warps=shape.num_warps,
        maxnreg=shape.max_registers,
    )


# Rows of probability targets up to this many classes stay in registers. Such a row holds two
# tiles where a row of class indices holds one (the logits and the weighted probabilities v, plus
# the weights when there are any), so the limit is half of MAX_FUSED_C for the same registers
# per thread. Derived, and checked by compiling for sm_90 offline (tests/test_kernels_compile.py
# and its spill limit); not timed on hardware.
PROBABILITY_MAX_FUSED_C = MAX_FUSED_C // 2


@dataclass(frozen=True)
class _ProbabilityOptions:
    """The non-tensor arguments of one call with a probability target, checked."""

    reduction: str
    label_smoothing: float
    compute_grad: bool  # d loss / d input wanted (see _LossOptions.compute_grad)
    compute_target_grad: bool  # d loss / d target wanted
    inplace_backward: bool = False
    gradient_in_forward: bool = True


def _launch_probabilities(
    logits: torch.Tensor,
    target: torch.Tensor,
    class_weight: torch.Tensor | None,
    label_smoothing: float,
    reduction: str,
    *,
    loss: torch.Tensor | None = None,
    grad: torch.Tensor | None = None,
    target_grad: torch.Tensor | None = None,
    row_stats: torch.Tensor | None = None,
    upstream: torch.Tensor | None = None,
    backward: bool = False,
    skip_if_upstream_is_one: bool = False,
) -> None:
    """Launch ``_softmax_probability_loss_kernel`` over ``logits`` and ``target``, both (N, C, S).

    As ``_launch``, plus ``target_grad`` (N, C, S); ``row_stats`` is (N*S, 3).
    """
    # I/O, with b bytes per logit, t per target probability, N rows:
    #   C <= PROBABILITY_MAX_FUSED_C, forward: read N*C*b logits + N*C*t targets once; write N
    #     losses (+ N*C*b gradient, + N*C*t target gradient, when asked).
    #   Longer rows: with gradients, the logits and targets are read twice; a forward that a
    #     backward will follow writes 12N (fp32) statistics for it.
    #   backward: read N*C*b + N*C*t (+ 12N statistics for long rows) + N upstream, write the
    #     gradients asked; with skip_if_upstream_is_one and an upstream of 1, one scalar.
    n_samples, n_classes, n_spatial = logits.shape
    n_rows = n_samples * n_spatial
    if n_rows == 0:
        return
    shape = _block_shape(n_rows, n_classes, PROBABILITY_MAX_FUSED_C)
    grad_strides = grad.stride() if grad is not None else (0, 0, 0)
    target_grad_strides = target_grad.stride() if target_grad is not None else (0, 0, 0)
    grid = (triton.cdiv(n_rows, shape.rows_per_program),)
    _softmax_probability_loss_kernel[grid](
        logits,
        target,
        class_weight,
        upstream,
        row_stats,
        loss,
        grad,
        target_grad,
        n_rows,
        n_classes,
        n_spatial,
        *logits.stride(),
        *target.stride(),
        *grad_strides,
        *target_grad_strides,
        upstream.stride(0) if upstream is not None else 0,
        label_smoothing,
        HAS_WEIGHT=class_weight is not None,
        LABEL_SMOOTHING=label_smoothing > 0,
        COMPUTE_GRAD=grad is not None,
        COMPUTE_TARGET_GRAD=target_grad is not None,
        SAVE_STATS=row_stats is not None and not backward,
        BACKWARD=backward,
        LOAD_STATS=backward and row_stats is not None,
        SKIP_IF_UPSTREAM_ONE=skip_if_upstream_is_one,
        HAS_SPATIAL=n_spatial > 1,
        SINGLE_CHUNK=shape.single_chunk,
        ROWS_PER_PROGRAM=shape.rows_per_program,
        BLOCK_C=shape.block_c,
        MEAN=reduction == "mean",
        FP64=compute_dtype(torch.promote_types(logits.dtype, target.dtype)) == torch.float64,
        num_warps=shape.num_warps,
    )


# --- Custom ops: what torch.compile and CUDA graphs see ----------------------------------------
# Every launch is a torch.library custom op: torch.compile treats it as one opaque node (dynamo
# does not trace the launcher; inductor places the op and plans memory around it) and runs its
# fake implementation to learn what it does to shapes, which is nothing: each op writes into
# outputs its caller allocated, and declares them mutated (quack's and flash-attention's
# pattern). The same op then writes a new buffer, or, with inplace_backward, the logits' own
# storage. The argument checks that read tensor values (labels in range, alpha in [0, 1]) run
# inside the ops, where reading is free (the interpreter's CPU tensors); on a GPU they would be a
# host synchronisation, so they are skipped there.


@torch.library.custom_op(
    "lossbench::softmax_loss_forward",
    mutates_args=("inverse_denominators", "loss", "grad", "row_stats"),
)
def _softmax_loss_forward(
    logits: torch.Tensor,
    target: torch.Tensor,
    class_weight: torch.Tensor | None,
    inverse_denominators: torch.Tensor | None,
    loss: torch.Tensor,
    grad: torch.Tensor | None,
    row_stats: torch.Tensor | None,
    focal: bool,
    ignore_index: int,
    reduction: str,
    label_smoothing: float,
    z_loss_scale: float,
    gamma: float,
    focal_alpha: float,
) -> None:
    """The forward launch of the class-index losses; see ``_launch``."""
    if INTERPRETED:
        check_class_index_values(target, logits.shape[1], ignore_index)
        if focal and class_weight is not None:
            check_alpha_values(class_weight)
    options = _LossOptions(
        focal=focal,
        ignore_index=ignore_index,
        reduction=reduction,
        compute_grad=grad is not None,
        label_smoothing=label_smoothing,
        z_loss_scale=z_loss_scale,
        gamma=gamma,
        focal_alpha=focal_alpha,
    )
    _launch(
        logits,
        target,
        class_weight,
        options,
        loss=loss,
        grad=grad,
        row_stats=row_stats,
        inverse_denominators=inverse_denominators,
    )


@torch.library.custom_op("lossbench::softmax_loss_backward", mutates_args=("grad",))
def _softmax_loss_backward(
    logits: torch.Tensor,
    target: torch.Tensor,
    class_weight: torch.Tensor | None,
    inverse_denominators: torch.Tensor | None,
    row_stats: torch.Tensor | None,
    upstream: torch.Tensor,
    grad: torch.Tensor,
    focal: bool,
    ignore_index: int,
    reduction: str,
    label_smoothing: float,
    z_loss_scale: float,
    gamma: float,
    focal_alpha: float,
    skip_if_upstream_is_one: bool,
) -> None:
    """The backward launch of the class-index losses; see ``_launch``."""
    options = _LossOptions(
        focal=focal,
        ignore_index=ignore_index,
        reduction=reduction,
        compute_grad=True,
        label_smoothing=label_smoothing,
        z_loss_scale=z_loss_scale,
        gamma=gamma,
        focal_alpha=focal_alpha,
    )
    _launch(
        logits,
        target,
        class_weight,
        options,
        grad=grad,
        row_stats=row_stats,
        upstream=upstream,
        inverse_denominators=inverse_denominators,
        backward=True,
        skip_if_upstream_is_one=skip_if_upstream_is_one,
    )


@torch.library.custom_op(
    "lossbench::softmax_probability_loss_forward",
    mutates_args=("loss", "grad", "target_grad", "row_stats"),
)
def _softmax_probability_loss_forward(
    logits: torch.Tensor,
    target: torch.Tensor,
    class_weight: torch.Tensor | None,
    loss: torch.Tensor,
    grad: torch.Tensor | None,
    target_grad: torch.Tensor | None,
    row_stats: torch.Tensor | None,
    label_smoothing: float,
    reduction: str,
) -> None:
    """The forward launch with probability targets; see ``_launch_probabilities``."""
    _launch_probabilities(
        logits,
        target,
        class_weight,
        label_smoothing,
        reduction,
        loss=loss,
        grad=grad,
        target_grad=target_grad,
        row_stats=row_stats,
    )


@torch.library.custom_op(
    "lossbench::softmax_probability_loss_backward", mutates_args=("grad", "target_grad")
)
def _softmax_probability_loss_backward(
    logits: torch.Tensor,
    target: torch.Tensor,
    class_weight: torch.Tensor | None,
    row_stats: torch.Tensor | None,
    upstream: torch.Tensor,
    grad: torch.Tensor | None,
    target_grad: torch.Tensor | None,
    label_smoothing: float,
    reduction: str,
    skip_if_upstream_is_one: bool,
) -> None:
    """The backward launch with probability targets; see ``_launch_probabilities``."""
    _launch_probabilities(
        logits,
        target,
        class_weight,
        label_smoothing,
        reduction,
        grad=grad,
        target_grad=target_grad,
        row_stats=row_stats,
        upstream=upstream,
        backward=True,
        skip_if_upstream_is_one=skip_if_upstream_is_one,
    )


for _op in (
    _softmax_loss_forward,
    _softmax_loss_backward,
    _softmax_probability_loss_forward,
    _softmax_probability_loss_backward,
):
    _op.register_fake(writes_only)


# --- Autograd ---------------------------------------------------------------------------------

_SPENT_LOGITS = (
    "backward called twice on a loss with inplace_backward=True: the gradient was written over "
    "the logits, which a second backward would need, and the first backward handed it out; "
    "call the loss again"
)


def _reduced_upstream(grad_output: torch.Tensor, n_rows: int) -> torch.Tensor:
    """A reduced loss's one upstream value as (n_rows,) of stride 0: every row reads it."""
    return grad_output.reshape(1).expand(n_rows)


class _SoftmaxLossFunction(torch.autograd.Function):
    """Cross-entropy or focal loss of logits and class indices; the gradient flows to ``input``.

    Where the gradient is written:

    - eager, 'mean' and 'sum': in the forward pass, as for an upstream gradient of 1, so that
      forward+backward reads the logits once and writes the gradient once. Backward then does
      nothing at an upstream of 1 (what ``loss.backward()`` passes), and otherwise rewrites the
      gradient from the saved logits (and row statistics) with the upstream folded in, so that it
      is rounded once (multiplying a stored 16-bit gradient would round it twice). A second
      backward (``retain_graph=True``, gradcheck) computes the gradient anew in a new buffer.
      With inplace_backward the logits hold the gradient: backward scales it in place instead,
      and a second backward raises.
    - 'none', and 'mean' and 'sum' under torch.compile: in backward, from the saved logits and
      row statistics (O(N)), with the upstream folded in. A
      compiled backward cannot scale a buffer saved by its forward in place (inductor copies a
      saved tensor before an op mutates it: one more read and write of the gradient);
      recomputing reads the logits a second time and writes the gradient once, the cheapest a
      functional graph allows.
    """

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
        dtype = compute_dtype(input.dtype)
        grad = None
        if options.compute_grad and reduction != "none" and options.gradient_in_forward:
            grad = (
                input.detach()
                if options.inplace_backward
                else torch.empty(input.shape, dtype=input.dtype, device=input.device)
            )
        # Whether backward computes the gradient from the logits: all but a gradient already
        # written over them.
        recomputes = options.compute_grad and not (grad is not None and options.inplace_backward)
        row_stats = None
        if recomputes and (grad is None or logits.shape[1] > MAX_FUSED_C):
            # Each row's max and log-sum (O(N)) for backward. Rows too long for registers save
            # them rather than have backward read the logits a third time; so does a forward
            # that leaves the gradient to backward ('none', torch.compile), whose backward then
            # needs fewer registers. A forward that writes the gradient, in registers, does not:
            # storing them costs it registers (compiled offline for sm_90, Triton 3.8: 140
            # against 128 for 256 rows of 10 classes, one program per SM instead of two), and
            # its backward computes them only at an upstream gradient other than 1.
            row_stats = torch.empty((n_rows, 2), dtype=dtype, device=input.device)
        if reduction == "none":
            loss = torch.empty(n_rows, dtype=input.dtype, device=input.device)
        elif n_rows == 0:
            # torch's empty mean is nan, its empty sum 0; no row, no launch.
            empty = math.nan if reduction == "mean" else 0.0
            loss = torch.full((), empty, dtype=input.dtype, device=input.device)
        else:
            loss = torch.empty((), dtype=input.dtype, device=input.device)
        # 'mean': written by the forward launch, which sums them over the targets; read again by
        # a backward that recomputes the gradient.
        inverse_denominators = None
        if reduction == "mean":
            inverse_denominators = torch.empty(2, dtype=dtype, device=input.device)
        _softmax_loss_forward(
            logits,
            rows_target,
            class_weight,
            inverse_denominators,
            loss,
            None if grad is None else grad.view(logits.shape),
            row_stats,
            **_op_options(options),
        )
        ctx.options = options
        ctx.gradient = grad
        ctx.spent = False
        if recomputes:
            ctx.save_for_backward(input, target, class_weight, row_stats, inverse_denominators)
        if reduction == "none":
            return loss.view(target.shape)
        return loss

    @staticmethod
    def backward(
        ctx: torch.autograd.function.FunctionCtx, grad_output: torch.Tensor
    ) -> tuple[torch.Tensor, None, None, None]:
        check_first_order("reference.softmax")
        options = ctx.options
        reduced = options.reduction != "none"
        # The gradient the forward pass wrote, handed out by the first backward only.
        grad = ctx.gradient
        ctx.gradient = None
        if options.inplace_backward:
            if ctx.spent:
                raise RuntimeError(_SPENT_LOGITS)
            ctx.spent = True
            if grad is not None:
                return scale_unless_one_(grad, grad_output), None, None, None
        input, target, class_weight, row_stats, inverse_denominators = ctx.saved_tensors
        logits, rows_target = _as_rows(input, target)
        written_in_forward = grad is not None
        if not written_in_forward:
            grad = (
                input.detach()
                if options.inplace_backward
                else torch.empty(input.shape, dtype=input.dtype, device=input.device)
            )
        n_rows = rows_target.numel()
        upstream = _reduced_upstream(grad_output, n_rows) if reduced else grad_output.reshape(-1)
        _softmax_loss_backward(
            logits,
            rows_target,
            class_weight,
            inverse_denominators,
            row_stats,
            upstream,
            grad.view(logits.shape),
            **_op_options(options),
            skip_if_upstream_is_one=written_in_forward,
        )
        return grad, None, None, None


def _op_options(options: _LossOptions) -> dict[str, object]:
    """The scalar arguments of the class-index ops, from ``options``."""
    return {
        "focal": options.focal,
        "ignore_index": options.ignore_index,
        "reduction": options.reduction,
        "label_smoothing": options.label_smoothing,
        "z_loss_scale": options.z_loss_scale,
        "gamma": options.gamma,
        "focal_alpha": options.focal_alpha,
    }


class _ProbabilityLossFunction(torch.autograd.Function):
    """Cross-entropy of logits against class probabilities; gradients to ``input`` and
    ``target``. Where they are written: as in _SoftmaxLossFunction."""

    @staticmethod
    def forward(
        ctx: torch.autograd.function.FunctionCtx,
        input: torch.Tensor,
        target: torch.Tensor,
        class_weight: torch.Tensor | None,
        options: _ProbabilityOptions,
    ) -> torch.Tensor:
        logits, rows_target = _class_rows(input), _class_rows(target)
        n_rows = logits.shape[0] * logits.shape[2]
        reduction = options.reduction
        result_dtype = torch.promote_types(input.dtype, target.dtype)
        dtype = compute_dtype(result_dtype)
        wants_grads = options.compute_grad or options.compute_target_grad
        in_forward = wants_grads and reduction != "none" and options.gradient_in_forward
        grad = target_grad = None
        if in_forward and options.compute_grad:
            grad = (
                input.detach()
                if options.inplace_backward
                else torch.empty(input.shape, dtype=input.dtype, device=input.device)
            )
        if in_forward and options.compute_target_grad:
            target_grad = torch.empty(target.shape, dtype=target.dtype, device=target.device)
        recomputes = wants_grads and not (in_forward and options.inplace_backward)
        row_stats = None
        if recomputes and (not in_forward or logits.shape[1] > PROBABILITY_MAX_FUSED_C):
            # Saved by the same rule as in _SoftmaxLossFunction.
            row_stats = torch.empty((n_rows, 3), dtype=dtype, device=input.device)
        loss_dtype = result_dtype if reduction == "none" else dtype
        row_losses = torch.empty(n_rows, dtype=loss_dtype, device=input.device)
        _softmax_probability_loss_forward(
            logits,
            rows_target,
            class_weight,
            row_losses,
            None if grad is None else _class_rows(grad),
            None if target_grad is None else _class_rows(target_grad),
            row_stats,
            options.label_smoothing,
            options.reduction,
        )
        ctx.options = options
        ctx.gradients = (grad, target_grad) if in_forward else None
        ctx.spent = False
        if recomputes:
            ctx.save_for_backward(input, target, class_weight, row_stats)
        if reduction == "none":
            return row_losses.view(input.shape[:1] + input.shape[2:] if input.dim() > 1 else ())
        if reduction == "mean" and n_rows == 0:
            return torch.full((), math.nan, dtype=result_dtype, device=input.device)
        return row_losses.sum().to(result_dtype)

    @staticmethod
    def backward(
        ctx: torch.autograd.function.FunctionCtx, grad_output: torch.Tensor
    ) -> tuple[torch.Tensor | None, torch.Tensor | None, None, None]:
        check_first_order("reference.softmax")
        options = ctx.options
        reduced = options.reduction != "none"
        # The gradients the forward pass wrote, handed out by the first backward only.
        gradients, ctx.gradients = ctx.gradients, None
        written_in_forward = gradients is not None
        grad, target_grad = gradients if written_in_forward else (None, None)
        if options.inplace_backward:
            if ctx.spent:
                raise RuntimeError(_SPENT_LOGITS)
            ctx.spent = True
            if written_in_forward:
                for gradient in (grad, target_grad):
                    if gradient is not None:
                        scale_unless_one_(gradient, grad_output)
                return grad, target_grad, None, None
        input, target, class_weight, row_stats = ctx.saved_tensors
        logits = _class_rows(input)
        n_rows = logits.shape[0] * logits.shape[2]
        if not written_in_forward:
            grad = target_grad = None
            if options.compute_grad:
                grad = (
                    input.detach()
                    if options.inplace_backward
                    else torch.empty(input.shape, dtype=input.dtype, device=input.device)
                )
            if options.compute_target_grad:
                target_grad = torch.empty(target.shape, dtype=target.dtype, device=target.device)
        upstream = _reduced_upstream(grad_output, n_rows) if reduced else grad_output.reshape(-1)
        _softmax_probability_loss_backward(
            logits,
            _class_rows(target),
            class_weight,
            row_stats,
            upstream,
            None if grad is None else _class_rows(grad),
            None if target_grad is None else _class_rows(target_grad),
            options.label_smoothing,
            options.reduction,
            written_in_forward,
        )
        return grad, target_grad, None, None


# --- Functional API ---------------------------------------------------------------------------


def _check_logits(input: torch.Tensor, reduction: str, **per_class: torch.Tensor | None) -> None:
    """Raise before any launch unless the logits and per-class tensors suit the kernels."""
    check_floating("input", input)
    if input.dtype not in _KERNEL_DTYPES:
        raise TypeError(
            f"the kernels take fp32, fp16, bf16 or fp64 logits, got {input.dtype}; "
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


def _check_logits_and_target(
    input: torch.Tensor,
    target: torch.Tensor,
    ignore_index: int,
    reduction: str,
    **per_class: torch.Tensor | None,
) -> None:
    """Raise before any launch unless input, class-index target and per-class tensors suit the
    kernel. The target's values are checked by the op (see the custom ops above)."""
    check_kernel_device(input=input, target=target, **per_class)
    _check_logits(input, reduction, **per_class)
    check_class_index_target(input, target, ignore_index, check_values=False)


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


def _check_label_smoothing(label_smoothing: float) -> None:
    if not 0.0 <= label_smoothing <= 1.0:
        raise ValueError(f"label_smoothing must be in [0, 1], got {label_smoothing}")


def _cross_entropy_probabilities(
    input: torch.Tensor,
    target: torch.Tensor,
    weight: torch.Tensor | None,
    ignore_index: int,
    reduction: str,
    label_smoothing: float,
    z_loss_scale: float,
    inplace_backward: bool,
) -> torch.Tensor:
    """``cross_entropy`` with a target of class probabilities (``input``'s shape)."""
    check_kernel_device(input=input, target=target, weight=weight)
    _check_logits(input, reduction, weight=weight)
    check_floating("target of class probabilities", target)
    if z_loss_scale != 0.0:
        raise ValueError(
            "z_loss_scale applies to class-index targets; a target of input's shape holds class "
            "probabilities"
        )
    check_no_ignore_index_for_probabilities(ignore_index)
    _check_label_smoothing(label_smoothing)
    grad_enabled = torch.is_grad_enabled()
    options = _ProbabilityOptions(
        reduction=reduction,
        label_smoothing=float(label_smoothing),
        compute_grad=input.requires_grad and grad_enabled,
        compute_target_grad=target.requires_grad and grad_enabled,
        inplace_backward=inplace_backward,
        gradient_in_forward=not torch.compiler.is_compiling(),
    )
    if inplace_backward and options.compute_grad:
        _check_inplace(input)
    return _ProbabilityLossFunction.apply(input, target, weight, options)


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
        input: logits, fp32, fp16, bf16 or fp64, shape (N, C), (N, C, d1, ...) or (C,); any
            strides.
        target: class indices, of any integer dtype (torch's int64 and uint8 among them),
            ``input``'s shape without dim 1 (() for (C,) input), in [0, C) or equal to
            ``ignore_index``; or class probabilities, floating, of ``input``'s shape (soft
            labels), which a kernel of their own reads once with the logits. A probability
            target that requires grad gets its gradient too.
        weight: per-class weight (C,), ``input``'s dtype, or None; a constant (no gradient).
        ignore_index: targets equal to it add 0 to the loss and are not counted by 'mean'. With
            probability targets it must be negative (and is unused), as in torch.
        reduction: 'none' (per-row losses, the target's shape, in ``input``'s dtype), 'sum', or
            'mean' = sum / sum_i w_{y_i} over non-ignored targets (their count without weight);
            nan when no target counts, as torch. Probability targets: 'mean' = sum / rows. N = 0
            gives nan, 0 or an empty tensor.
        label_smoothing: e in [0, 1], as torch: (1-e) * CE + (e/C) * sum_c w_c (-log p_c).
        z_loss_scale: z >= 0; adds z * logsumexp(x)^2 per non-ignored row (PaLM's z-loss, as in
            Liger-Kernel and flash-attention), unweighted: 'mean' divides it by the count of
            non-ignored targets even with a weight (Liger-Kernel's convention). Class-index
            targets only.
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
        the loss in ``input``'s dtype (torch's promotion of input and target for probability
        targets): a scalar for 'mean' and 'sum', per-row losses for 'none'.

    Numerics: fp32 inside for fp16, bf16 and fp32 logits, fp64 for fp64 (so that
    ``torch.autograd.gradcheck`` works); gradients in their tensor's dtype, rounded once, whatever
    the upstream gradient (except with inplace_backward, see the module docstring). Non-finite
    logits as torch (see reference/softmax.py). A label outside [0, C) other than
    ``ignore_index`` raises ``ValueError`` on the CPU (interpreter); on a GPU, checking would
    need a host sync, so that row's loss and gradient are nan instead (and so is a reduced loss).
    'mean' and 'sum' compute the gradient in the forward pass, so backward can run once per
    call. Gradients are first order: backward with ``create_graph=True`` raises.

    Raises:
        ValueError: bad reduction, label_smoothing outside [0, 1], z_loss_scale < 0 (or given
            with probability targets), ignore_index >= 0 with probability targets, shapes that
            do not match (both named), weight not of shape (C,), tensors not on the kernels'
            device, labels out of range (CPU), inplace_backward on unsuitable logits.
        TypeError: logits not fp32/fp16/bf16/fp64, index target not of an integer dtype,
            probability target not floating, weight of another dtype.
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
        return _cross_entropy_probabilities(
            input,
            target,
            weight,
            ignore_index,
            reduction,
            label_smoothing,
            z_loss_scale,
            inplace_backward,
        )
    _check_logits_and_target(input, target, ignore_index, reduction, weight=weight)
    _check_label_smoothing(label_smoothing)
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
        gradient_in_forward=not torch.compiler.is_compiling(),
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
        input: logits, fp32, fp16, bf16 or fp64, shape (N, C), (N, C, d1, ...) or (C,); any
            strides.
        target: class indices, integer, ``input``'s shape without dim 1 (() for (C,) input).
        alpha: None, a float in [0, 1] for every class, or a per-class (C,) tensor of
            ``input``'s dtype (a constant: no gradient) with entries in [0, 1], which raise
            otherwise on the CPU only (checking them on a GPU would be a host sync).
        gamma: focusing parameter, finite and >= 0; gamma = 0 with alpha None is cross-entropy.
        ignore_index: targets equal to it add 0 and are not counted by 'mean'.
        reduction: 'none' (per-row, the target's shape), 'sum', or 'mean' = sum / the count of
            non-ignored targets (alpha does not enter it; nan if none).
        process_group, class_offset: classes split over the group's ranks, as
            :func:`cross_entropy`'s; a tensor ``alpha`` is then the full (C,) vector.

    1 - p_y is computed as -expm1(log p_y), exact near p_y = 1; the gradient is derived and
    written out in ``_row_terms`` and has no (1 - p)^(gamma - 1), so gamma < 1 gives 0, not nan,
    where p_y rounds to 1. Labels out of range, non-finite logits, dtypes: as
    :func:`cross_entropy`.

    Raises:
        ValueError: bad reduction, gamma or alpha outside the rule of
            ``reference._checks.check_focal_options``, alpha tensor not of shape (C,),
            mismatched shapes, tensors off the kernels' device, labels out of range (CPU).
        TypeError: logits not fp32/fp16/bf16/fp64, non-integer target, alpha of another dtype.
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
    check_focal_options(alpha, gamma, negative_alpha_means_none=False)
    options = _LossOptions(
        focal=True,
        ignore_index=int(ignore_index),
        reduction=reduction,
        compute_grad=input.requires_grad and torch.is_grad_enabled(),
        gamma=float(gamma),
        focal_alpha=1.0 if alpha is None or alpha_tensor is not None else float(alpha),
        gradient_in_forward=not torch.compiler.is_compiling(),
    )
    return _SoftmaxLossFunction.apply(input, target, alpha_tensor, options)


# --- Modules ----------------------------------------------------------------------------------


class CrossEntropyLoss(reference_softmax.CrossEntropyLoss):
    """Module form of :func:`cross_entropy`: the arguments and buffers of
    reference.softmax.CrossEntropyLoss (torch's, less the deprecated ones, with
    ``process_group`` and ``class_offset``), plus the fused kernel's ``z_loss_scale`` and
    ``inplace_backward``."""

    def __init__(
        self,
        weight: torch.Tensor | None = None,
        *,
        ignore_index: int = -100,
        reduction: str = "mean",
        label_smoothing: float = 0.0,
        z_loss_scale: float = 0.0,
        inplace_backward: bool = False,
        process_group: torch.distributed.ProcessGroup | None = None,
        class_offset: int | None = None,
    ) -> None:
        super().__init__(
            weight,
            ignore_index=ignore_index,
            reduction=reduction,
            label_smoothing=label_smoothing,
            process_group=process_group,
            class_offset=class_offset,
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
            process_group=self.process_group,
            class_offset=self.class_offset,
        )


class SoftmaxFocalLoss(reference_softmax.SoftmaxFocalLoss):
    """Module form of :func:`softmax_focal_loss`: the constructor and buffers of
    reference.softmax.SoftmaxFocalLoss, the fused kernel."""

    function = staticmethod(softmax_focal_loss)
