"""Fused Triton sigmoid losses: BCE with logits and sigmoid focal loss, forward and backward.

Same names and semantics as reference/sigmoid.py (read the two side by side):
``binary_cross_entropy_with_logits`` (torch's function, with ``weight`` and ``pos_weight``),
``sigmoid_focal_loss`` (``torchvision.ops.sigmoid_focal_loss``) and their modules. Both losses
are elementwise, so one kernel streams the flattened input once, with sigma = sigmoid and
sp = softplus::

    BCE:   loss = w * [(1 - t) * sp(x) + pw * t * sp(-x)]
    focal: loss = a_t * ce * m ** gamma,   ce = (1 - t) * sp(x) + t * sp(-x),
           m = 1 - p_t = t * sigma(-x) + (1 - t) * sigma(x),   a_t = alpha t + (1 - alpha)(1 - t)

How the reductions move memory (the whole point of fusing):

* ``"mean"`` / ``"sum"``: one pass. When a gradient is wanted, the forward kernel already writes
  it (as if the upstream gradient were 1, times 1/numel for "mean") while it sums the loss, so
  forward + backward reads the inputs once and writes the gradient once. Backward launches a
  kernel whose programs read the upstream gradient and leave at once when it is 1 (what
  ``loss.backward()`` passes): no traffic, no host sync. Any other upstream recomputes the
  gradients from the saved input and target with it folded in (read x, t; write the gradient),
  so that a 16-bit gradient is rounded once, never stored and then scaled and rounded again;
  a second backward (``retain_graph=True``, gradcheck) recomputes them likewise. The loss is
  summed in the same launch: each program writes its share and the last to finish adds them
  (``kernels._common.finish_reduction``), so a ``loss.backward()`` call is three device launches
  (this kernel, autograd's ones_like, this kernel again). Extra memory: the gradient and one
  share per program (numel / 8192 of them, numel / 2048 in fp64: 0.01 % of an fp32 gradient);
  the loss keeps a reference to its input and target until backward. The gradient
  is written whenever grad mode is on and the input requires grad, whether or not backward
  follows: evaluate under ``torch.no_grad()`` to read the inputs only. Under torch.compile the
  gradients are computed in backward instead, as for "none" (see kernels/softmax.py).
* ``"none"``: forward writes the elementwise loss; backward recomputes from the saved input and
  target and the upstream gradient (read x, t, upstream; write the gradient), so nothing is kept
  between the passes but the inputs themselves. An upstream gradient that is one value expanded
  to the input's shape (``loss.sum().backward()``) is read as that one value.

Bytes per element (X = input: 4 fp32, 2 fp16/bf16; T = target: 4 fp32, 2 fp16/bf16, 1 bool or
uint8; L = loss, in the loss dtype; G = gradient = X)::

    mean / sum, forward only          X + T                    bf16 + uint8: 3 B    fp32: 8 B
    mean / sum, forward + backward    X + T + G                bf16 + uint8: 5 B    fp32: 12 B
    none, forward only                X + T + L                bf16 + uint8: 5 B    fp32: 12 B
    none, forward + backward          2X + 2T + L + G + L(up)  bf16 + uint8: 12 B   fp32: 28 B

A bool or uint8 target (multi-label targets are 0/1) reads 1 byte per element instead of 2 or 4:
for bf16 logits that is 5 instead of 6 bytes per element forward+backward (-17 %), against fp32
targets 5 instead of 8 (-37 %); fp32 logits with bool targets move 9 instead of 12 (-25 %).
Adding a target gradient (a float target that requires grad) writes T more per element.

Weights: ``weight`` and ``pos_weight`` that repeat with a simple period over the flattened input
((C,) over the last dimension, (N, 1) per row, (1, C, 1, 1) per channel, a scalar, or the full
shape) are read in place by index arithmetic; the repeating ones stay in cache (no traffic per
element), a full-shape one is read once (+ W per element, W its element size). Any other
broadcast (or a full-shape weight that is not contiguous) is materialised at the input's shape
first: + 3 W per element (the copy written, then read by the kernel, plus W for a non-contiguous
source read). A non-contiguous input or target is copied to a contiguous one first: + 2 X or
+ 2 T per element.

Dtypes: logits fp32, fp16, bf16 or fp64; arithmetic in fp32 (its logarithms and reciprocal in
the fast forms of kernels/_common.py, ``APPROX``), or in fp64 when the logits or the target are
fp64 (so that torch.autograd.gradcheck works); the input gradient in the input's
dtype. Targets: any float dtype (soft targets welcome), bool, or uint8 (read as its numeric
value, as ``target.float()`` would be: 0/1 labels expected; a check would need a host sync). The
loss dtype is torch's: the target's dtype for BCE with a float target (torch computes in place
in a tensor of that dtype) and ``torch.result_type(input, target)`` for focal; the input's
dtype for a bool or uint8 target, which torch does not accept at all.

Non-finite logits give what torch gives (torchvision for the focal loss), loss and gradients:
see reference/sigmoid.py.

Gradients: d loss / d input, first order only (``create_graph=True`` raises). A float target that
requires grad gets d loss / d target too (knowledge distillation with soft targets); ``weight``
or ``pos_weight`` that require grad raise ``NotImplementedError`` before any launch.

Every launch is the custom op ``lossbench::sigmoid_loss``: torch.compile sees one opaque op, and
forward and backward capture in a CUDA graph (no host synchronisation).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import triton
import triton.language as tl
from torch import Tensor

from lossbench.kernels._common import (
    APPROXIMATE_MATH,
    INTERPRETED,
    LOG2E,
    REDUCTION_CODES,
    check_first_order,
    check_kernel_device,
    check_no_gradient_wanted,
    finish_reduction,
    launch_workspace,
    log1p,
    log1p_unit,
    log2,
    reciprocal,
    scalar_in_compute_dtype,
    to_compute_dtype,
    writes_only,
)
from lossbench.reference import sigmoid as reference_sigmoid
from lossbench.reference._checks import (
    check_broadcasts_to,
    check_floating,
    check_focal_options,
    check_reduction,
    compute_dtype,
)

# Elements per program step: num_warps=8 gives 256 threads, each with 8 elements per step (one
# 16-byte access of bf16 logits, two of fp32: 16 bytes is the widest global access); few enough
# live fp32 values per element (the focal path keeps about ten) for several programs per SM to
# overlap their memory latency. A program runs STEPS steps, unrolled (no loop counters; the
# compiler interleaves them), so that what it does once (its share of the loss, its ticket) is
# spread over 32 elements per thread; "mean" and "sum" keep numel / 8192 shares (0.01 % of an
# fp32 gradient). Triton's interpreter runs the same code in two steps of 256 elements: it
# executes every operation of every step in Python, masked lanes included, and the tests' inputs
# are small. float64 runs one step per program: four unrolled fp64 steps, with a weight, a
# pos_weight and a target gradient, spill 1 KiB per thread on sm_90 (one step fits in registers).
NUM_WARPS = 8
STEPS = 2 if INTERPRETED else 4
FP64_STEPS = 1
BLOCK = 256 if INTERPRETED else NUM_WARPS * 32 * 8
PROGRAM_ELEMENTS = STEPS * BLOCK  # below float64

# Integer gammas up to this value are compile-time constants: (1 - p_t) ** 2 (the default) costs
# one multiply instead of a log2 and an exp2, which matters where the kernel must stay memory-bound.
MAX_CONSTANT_GAMMA = 4

INPUT_DTYPES = (torch.float32, torch.float16, torch.bfloat16, torch.float64)
INTEGER_TARGET_DTYPES = (torch.bool, torch.uint8)

# Broadcast weights are indexed in int32 within one period (see _load_broadcast): the period span
# plus one step must stay below 2^31.
INT32_INDEX_LIMIT = 2**31 - BLOCK


@triton.jit
def _load_broadcast(
    pointer,
    offsets,
    mask,
    block_start,
    inner,
    period,
    BROADCAST: tl.constexpr,
    BLOCK: tl.constexpr,
    FP64: tl.constexpr,
):
    """Load a weight for each flattened input offset, in the compute dtype.

    BROADCAST: the weight holds ``period`` values, each repeated for ``inner`` consecutive input
    elements, the whole pattern repeated along the input: value (i // inner) % period. One int64
    modulo per program brings the block's phase into [0, inner * period), so the per-element
    index arithmetic runs in int32 (the launcher guarantees inner * period + BLOCK < 2^31).
    Otherwise the weight is laid out like the flattened input: value i.
    """
    if BROADCAST:
        phase = (block_start % (inner * period)).to(tl.int32)
        index = ((phase + tl.arange(0, BLOCK)) // inner) % period
    else:
        index = offsets
    return to_compute_dtype(tl.load(pointer + index, mask=mask, other=0.0), FP64)


@triton.jit
def _product_excess(a, b):
    """(1 + a)(1 + b) - 1, of non-negative a and b: nothing cancels."""
    return a + b + a * b


@triton.jit
def _group_excess(e, GROUP: tl.constexpr):
    """prod (1 + e) - 1 over each GROUP consecutive elements of e (BLOCK,): (BLOCK // GROUP,).

    Halves of each group are combined pairwise (tl.split, then _product_excess elementwise)
    rather than by tl.reduce with a custom combine, which Triton's interpreter runs one element
    at a time in Python. A group is one thread's 16-byte access, so compiled this moves nothing
    between threads.
    """
    excess = tl.reshape(e, [e.shape[0] // GROUP, GROUP])
    for _ in tl.static_range(GROUP.bit_length() - 1):
        halves = tl.reshape(excess, [excess.shape[0], excess.shape[1] // 2, 2])
        first, second = tl.split(halves)
        excess = _product_excess(first, second)
    return tl.reshape(excess, [e.shape[0] // GROUP])


@triton.jit
def _sigmoid_loss_kernel(
    input_ptr,  # (n_elements,) logits, fp32/fp16/bf16
    target_ptr,  # (n_elements,) targets: any float dtype, or uint8 (bool targets viewed as uint8)
    weight_ptr,  # weight, any float dtype: (period,) pattern or (n_elements,); None without
    pos_weight_ptr,  # pos_weight, any float dtype, laid out like weight_ptr; None without
    upstream_ptr,  # REDUCTION none + gradients: (n_elements,) or (1,) upstream gradient
    loss_ptr,  # none: (n_elements,) loss dtype; mean/sum: () the loss, in the loss dtype
    grad_input_ptr,  # (n_elements,) input dtype, written when COMPUTE_GRAD
    grad_target_ptr,  # (n_elements,) target dtype, written when COMPUTE_TARGET_GRAD
    partials_ptr,  # forward mean/sum: (grid,) compute dtype, each program's share of the loss
    workspace_ptr,  # forward mean/sum: (WORKSPACE_COUNTERS,) int32, zero between launches
    n_elements,
    weight_inner,
    weight_period,
    pos_weight_inner,
    pos_weight_period,
    alpha: tl.float64,  # floats declared float64: a float64 kernel gets them exact
    gamma: tl.float64,
    BLOCK: tl.constexpr,  # elements per step: 8 per thread
    STEPS: tl.constexpr,  # steps per program
    GROUP: tl.constexpr,  # elements per thread and access (16 bytes of logits)
    REDUCTION: tl.constexpr,  # kernels._common.REDUCTION_CODES
    COMPUTE_GRAD: tl.constexpr,
    COMPUTE_TARGET_GRAD: tl.constexpr,
    UPSTREAM_IS_SCALAR: tl.constexpr,
    HAS_WEIGHT: tl.constexpr,
    WEIGHT_BROADCAST: tl.constexpr,
    HAS_POS_WEIGHT: tl.constexpr,
    POS_WEIGHT_BROADCAST: tl.constexpr,
    FOCAL: tl.constexpr,
    HAS_ALPHA: tl.constexpr,
    GAMMA_INT: tl.constexpr,  # gamma when it is an integer <= MAX_CONSTANT_GAMMA, else -1
    MEAN: tl.constexpr,  # 'mean': the loss and the gradients divided by n_elements
    SKIP_IF_UPSTREAM_ONE: tl.constexpr,  # backward of gradients already written for upstream 1
    FP64: tl.constexpr,  # compute in float64, else in float32
    APPROX: tl.constexpr,  # kernels._common's fast reciprocal and logarithms (fp32 only)
):
    """Each program handles STEPS x BLOCK consecutive elements of the flattened input.

    REDUCTION none without gradients: the forward pass, writing the elementwise loss.
    REDUCTION none with gradients: the backward pass (of any reduction), writing
    scale * upstream * d loss / d input (and d loss / d target), not the loss. REDUCTION
    mean/sum: scale * the loss, summed in the launch (kernels._common.finish_reduction), and
    with gradients scale * d loss / d input (and target) for every element.
    """
    # lossbench static: the rest runs 1 - SKIP_IF_UPSTREAM_ONE * upstream_is_one times per program
    if SKIP_IF_UPSTREAM_ONE:  # noqa: SIM102 (a constexpr: upstream_ptr may be None without it)
        # The forward pass wrote the gradients for an upstream gradient of 1: with that upstream
        # (what loss.backward() passes) there is nothing to do, and no byte to move. Any other
        # upstream recomputes them with it folded in, rounded once.
        if tl.load(upstream_ptr).to(tl.float32) == 1.0:
            return
    alpha = scalar_in_compute_dtype(alpha, FP64)
    gamma = scalar_in_compute_dtype(gamma, FP64)
    # 1/numel for 'mean', else 1: applied to the shares and the gradients.
    one = scalar_in_compute_dtype(1.0, FP64)
    scale = one / n_elements if MEAN else one
    # sum of log1p(e) over the GROUP consecutive elements of one thread in every step = log1p of
    # the excess of prod (1 + e) over 1, accumulated as q + e + q e: one log per thread and
    # program instead of one per element, exact (positive terms only). Only where the log enters
    # the sum unweighted.
    LOG_OF_PRODUCT: tl.constexpr = (
        REDUCTION != 0 and not FOCAL and not HAS_WEIGHT and not HAS_POS_WEIGHT
    )
    loss_sum = tl.zeros([BLOCK], alpha.dtype)
    excess = tl.zeros([BLOCK // GROUP], alpha.dtype)  # of prod (1 + e) over 1, per thread group
    for step in tl.static_range(STEPS):
        # int64: the flattened input may hold more than 2^31 elements.
        block_start = (tl.program_id(0).to(tl.int64) * STEPS + step) * BLOCK
        offsets = block_start + tl.arange(0, BLOCK)
        mask = offsets < n_elements
        # Every element is read once: evict_first keeps the L2 cache for the broadcast weights.
        # Masked lanes read x = 1e4, t = 1: a confident right answer, whose e = exp(-1e4) is 0
        # even in fp64 and whose loss is exactly 0 (for every option), so that the sums need no
        # select.
        x = tl.load(input_ptr + offsets, mask=mask, other=1.0e4, eviction_policy="evict_first")
        x = to_compute_dtype(x, FP64)
        t = tl.load(target_ptr + offsets, mask=mask, other=1.0, eviction_policy="evict_first")
        t = to_compute_dtype(t, FP64)

        # One exp and one reciprocal give sigma(+-x); one log1p(e) sp(+-x); nothing overflows.
        # e = exp(-|x|) in (0, 1]; r = 1 / (1 + e) = sigma(|x|); e * r = sigma(-|x|).
        e = tl.exp2(-tl.abs(x * LOG2E))
        r = reciprocal(1.0 + e, APPROX)
        sigma_pos = tl.where(x >= 0, r, e * r)  # sigma(x)
        sigma_neg = tl.where(x >= 0, e * r, r)  # sigma(-x) = 1 - sigma(x), without subtracting
        # (1 - t) max(x, 0) + t max(-x, 0), the softplus terms less log1p(e), as
        # x (1 - t) - min(x, 0): exact for hard targets, and nan at x = -inf (-inf - -inf, or
        # 0 x -inf for t = 1), as torch's loss, which evaluates (1 - t) x - pw' log sigmoid(x),
        # is there whatever the target. No gradient but focal's (below) reads it.
        hinge = x * (1.0 - t) - tl.minimum(x, 0.0)
        if LOG_OF_PRODUCT:
            # GROUP x STEPS factors (1 + e) <= 2 per slot: the excess stays below 2^32.
            excess = _product_excess(excess, _group_excess(e, GROUP))
            log1p_e = tl.zeros_like(e)
        else:
            # log1p(e) straight from e: log(1 + e) would lose e's low bits when e is small (all
            # of them below 2^-24, where sp(-x) of a confident logit is exactly e).
            log1p_e = log1p_unit(e, APPROX)
        # sp(x) = -log(1 - sigma(x)) = max(x, 0) + log1p(e), with max(x, 0) written
        # x - min(x, 0): nan at x = -inf, as torch's loss (above).
        softplus_pos = (x - tl.minimum(x, 0.0)) + log1p_e
        softplus_neg = tl.maximum(-x, 0.0) + log1p_e  # sp(-x) = -log sigma(x)

        if FOCAL:
            # ce = (1 - t) sp(x) + t sp(-x)   dce/dx = sigma(x) - t = (1 - t) sigma(x) - t sigma(-x)
            #                                 dce/dt = sp(-x) - sp(x) = -x
            # m = 1 - p_t = t sigma(-x) + (1 - t) sigma(x)   (p_t = p t + (1 - p)(1 - t))
            #   dm/dx = (1 - 2t) sigma(x) sigma(-x)          dm/dt = sigma(-x) - sigma(x)
            # a = alpha t + (1 - alpha)(1 - t) = (1 - alpha) + (2 alpha - 1) t, or 1 if alpha < 0
            # loss = a ce m^g, so
            #   dL/dx = a [dce/dx m^g + g ce m^(g-1) dm/dx]
            #   dL/dt = (2 alpha - 1) ce m^g + a [-x m^g + g ce m^(g-1) dm/dt]
            # Every factor is written without cancellation for hard targets; the products that
            # hold m^(g-1) (unbounded as m -> 0 when g < 1) are formed from bounded factors below.
            cross_entropy = hinge + log1p_e
            d_cross_entropy = (1.0 - t) * sigma_pos - t * sigma_neg
            modulating_base = t * sigma_neg + (1.0 - t) * sigma_pos
            sigma_product = sigma_pos * sigma_neg
            if GAMMA_INT == 0:
                modulating = tl.full([BLOCK], 1.0, x.dtype)
            elif GAMMA_INT > 0:
                # m^(g-1) by multiplication: exact powers, no log of zero.
                power_less_one = tl.full([BLOCK], 1.0, x.dtype)
                for _ in tl.static_range(GAMMA_INT - 1):
                    power_less_one = power_less_one * modulating_base
                modulating = power_less_one * modulating_base
                # g (1 - 2t) sigma sigma' m^(g-1)  and  ce m^(g-1)
                slope_x = (gamma - 2.0 * gamma * t) * sigma_product * power_less_one
                slope_t = cross_entropy * power_less_one
            else:
                # m^g = 2^(g log2 m), and 0 at m = 0 (g > 0 here); nan for m < 0 (a target
                # outside [0, 1]), as torch's pow. m^(g-1) = m^g / m appears only inside products
                # whose other factor over m is bounded for t in [0, 1]: sigma sigma' / m <=
                # max(sigma, sigma') <= 1, and ce / m -> 1 as m -> 0. Their limit at m = 0 is 0.
                # Each ratio is one division, never a product with 1 / m: for a subnormal m
                # (|x| in 88.7..103 for a confidently right element) 1 / m overflows to inf, and
                # inf x m^g is inf or nan.
                is_zero = modulating_base == 0.0
                safe_base = tl.where(is_zero, 1.0, modulating_base)  # no log2(0) or 0 / 0
                modulating = tl.where(is_zero, 0.0, tl.exp2(gamma * log2(safe_base, APPROX)))
                slope_x = (gamma - 2.0 * gamma * t) * (sigma_product / safe_base) * modulating
                slope_t = (cross_entropy / safe_base) * modulating
            loss = cross_entropy * modulating
            if HAS_ALPHA:
                class_weight = (1.0 - alpha) + (2.0 * alpha - 1.0) * t
                loss = class_weight * loss
            if COMPUTE_GRAD:
                grad = d_cross_entropy * modulating
                if GAMMA_INT != 0:
                    grad += cross_entropy * slope_x
                if HAS_ALPHA:
                    grad = class_weight * grad
            if COMPUTE_TARGET_GRAD:
                grad_t = -x * modulating
                if GAMMA_INT != 0:
                    grad_t += gamma * slope_t * (sigma_neg - sigma_pos)
                if HAS_ALPHA:
                    grad_t = (
                        class_weight * grad_t + (2.0 * alpha - 1.0) * cross_entropy * modulating
                    )
                # torchvision at x = +inf, where its cross-entropy is infinite: for gamma > 0
                # its autograd multiplies sigmoid's derivative there, 0, by it, and with alpha it
                # adds the alpha t and (1 - alpha)(1 - t) paths separately, +inf and -inf: either
                # way the target gradient is nan. (At x = -inf ce is nan already, and the input
                # gradient is inf x 0 or nan at both.)
                if GAMMA_INT != 0 or HAS_ALPHA:
                    grad_t = tl.where(x == float("inf"), float("nan"), grad_t)
        else:
            # loss = w [(1 - t) sp(x) + pw t sp(-x)]: torch's (1 - t) x + (1 + (pw - 1) t) sp(-x)
            # with x = sp(x) - sp(-x), which cancels nothing for hard targets.
            # dL/dx = w [(1 - t) sigma(x) - pw t sigma(-x)]   (sigma(x) - t when pw = 1)
            # dL/dt = w [pw sp(-x) - sp(x)] = w [(pw - 1) sp(-x) - x]: exactly -x without
            # pos_weight, where the first form would cancel to an absolute error of ulp(log 2)
            # near x = 0.
            positive_slope = t * sigma_neg
            if HAS_POS_WEIGHT:
                pos_weight = _load_broadcast(
                    pos_weight_ptr,
                    offsets,
                    mask,
                    block_start,
                    pos_weight_inner,
                    pos_weight_period,
                    POS_WEIGHT_BROADCAST,
                    BLOCK,
                    FP64,
                )
                loss = (1.0 - t) * softplus_pos + pos_weight * (t * softplus_neg)
                positive_slope = pos_weight * positive_slope
            else:
                # (1 - t) sp(x) + t sp(-x); log1p(e) is in the excess instead when LOG_OF_PRODUCT.
                loss = hinge + log1p_e
            if COMPUTE_GRAD:
                grad = (1.0 - t) * sigma_pos - positive_slope
            if COMPUTE_TARGET_GRAD:
                grad_t = -x
                if HAS_POS_WEIGHT:
                    grad_t += (pos_weight - 1.0) * softplus_neg
            if HAS_WEIGHT:
                weight = _load_broadcast(
                    weight_ptr,
                    offsets,
                    mask,
                    block_start,
                    weight_inner,
                    weight_period,
                    WEIGHT_BROADCAST,
                    BLOCK,
                    FP64,
                )
                loss = weight * loss
                if COMPUTE_GRAD:
                    grad = weight * grad
                if COMPUTE_TARGET_GRAD:
                    grad_t = weight * grad_t

        if REDUCTION != 0:
            # The gradients scaled as backward scales them by upstream x scale: at an upstream
            # of 1 the two round alike, bit for bit.
            loss_sum += loss  # 0 in masked lanes
            if COMPUTE_GRAD:
                grad = grad * scale
            if COMPUTE_TARGET_GRAD:
                grad_t = grad_t * scale
        elif COMPUTE_GRAD or COMPUTE_TARGET_GRAD:
            if UPSTREAM_IS_SCALAR:
                upstream = to_compute_dtype(tl.load(upstream_ptr), FP64) * scale
            else:
                upstream = tl.load(upstream_ptr + offsets, mask=mask, other=0.0)
                upstream = to_compute_dtype(upstream, FP64) * scale
            if COMPUTE_GRAD:
                grad = grad * upstream
            if COMPUTE_TARGET_GRAD:
                grad_t = grad_t * upstream
        else:
            tl.store(loss_ptr + offsets, loss, mask=mask)
        if COMPUTE_GRAD:
            tl.store(grad_input_ptr + offsets, grad, mask=mask)
        if COMPUTE_TARGET_GRAD:
            tl.store(grad_target_ptr + offsets, grad_t, mask=mask)
    if REDUCTION != 0:
        share = tl.sum(loss_sum, axis=0)
        if LOG_OF_PRODUCT:
            share += tl.sum(log1p(excess, APPROX), axis=0)
        share = share * tl.sum(scale, axis=0)  # scale is a (1,) tensor
        finish_reduction(partials_ptr, workspace_ptr, loss_ptr, share)


@dataclass(frozen=True)
class _WeightLayout:
    """How the kernel reads a weight's buffer: ``buffer[(i // inner) % period]`` or
    ``buffer[i]``."""

    inner: int
    period: int
    broadcast: bool


# A weight that is absent: no buffer, nothing to read.
_NO_WEIGHT = _WeightLayout(inner=1, period=1, broadcast=False)


@dataclass(frozen=True)
class _LossOptions:
    """Everything but the tensors: which loss, its options, and which gradients to produce."""

    reduction: str
    focal: bool
    alpha: float
    gamma: float
    compute_grad: bool
    compute_target_grad: bool
    weight: _WeightLayout = _NO_WEIGHT
    pos_weight: _WeightLayout = _NO_WEIGHT
    # Whether a 'mean' or 'sum' loss writes its gradients in the forward pass (eager) or in
    # backward (under torch.compile); see _SigmoidLossFunction.
    gradient_in_forward: bool = True


def _weight_layout(name: str, weight: Tensor, shape: torch.Size) -> tuple[Tensor, _WeightLayout]:
    """The buffer the kernel reads for ``weight`` broadcast to ``shape``, and how it reads it.

    Expanding adds stride-0 dimensions without copying. If the dimensions with a non-zero stride
    (size-1 dimensions dropped) form one run laid out contiguously, the weight is read in place:
    ``period`` = the run's element count, ``inner`` = the elements after it. Otherwise (or when
    the period is too long for int32 indexing) it is materialised at the input's shape.
    """
    check_broadcasts_to(name, weight, shape)
    expanded = weight.expand(shape)
    dims = [
        (size, stride) for size, stride in zip(shape, expanded.stride(), strict=True) if size != 1
    ]
    varying = [i for i, (_, stride) in enumerate(dims) if stride != 0]
    numel = math.prod(shape)
    if not varying:
        return expanded, _WeightLayout(inner=1, period=1, broadcast=True)
    run = dims[varying[0] : varying[-1] + 1]
    expected_stride = 1
    contiguous_run = True
    for size, stride in reversed(run):
        contiguous_run &= stride == expected_stride
        expected_stride *= size
    period = math.prod(size for size, _ in run)
    inner = math.prod(size for size, _ in dims[varying[-1] + 1 :])
    if contiguous_run and period == numel:
        return expanded, _WeightLayout(inner=1, period=numel, broadcast=False)
    if contiguous_run and inner * period < INT32_INDEX_LIMIT:
        return expanded, _WeightLayout(inner=inner, period=period, broadcast=True)
    return expanded.contiguous(), _WeightLayout(inner=1, period=numel, broadcast=False)


def _check_arguments(
    input: Tensor,
    target: Tensor,
    weight: Tensor | None,
    pos_weight: Tensor | None,
    reduction: str,
    input_name: str,
    target_name: str,
) -> None:
    """Raise a clear exception for anything the kernel cannot compute exactly."""
    check_reduction(reduction)
    if input.dtype not in INPUT_DTYPES:
        raise TypeError(
            f"{input_name} must be float32, float16, bfloat16 or float64 logits, got dtype "
            f"{input.dtype}"
        )
    if not (target.is_floating_point() or target.dtype in INTEGER_TARGET_DTYPES):
        raise TypeError(
            f"{target_name} must be a floating-point, bool or uint8 tensor, got dtype "
            f"{target.dtype}"
        )
    if target.shape != input.shape:
        raise ValueError(
            f"{target_name} shape {tuple(target.shape)} must equal {input_name} shape "
            f"{tuple(input.shape)}"
        )
    for name, tensor in (("weight", weight), ("pos_weight", pos_weight)):
        if tensor is None:
            continue
        check_floating(name, tensor)
    check_no_gradient_wanted("reference.sigmoid", weight=weight, pos_weight=pos_weight)
    check_kernel_device(
        **{input_name: input, target_name: target}, weight=weight, pos_weight=pos_weight
    )


def _constant_gamma(gamma: float) -> int:
    """``gamma`` as a compile-time integer when it is one (0..MAX_CONSTANT_GAMMA), else -1."""
    if gamma.is_integer() and gamma <= MAX_CONSTANT_GAMMA:
        return int(gamma)
    return -1


def _launch(
    input: Tensor,
    target: Tensor,
    weight: Tensor | None,
    pos_weight: Tensor | None,
    options: _LossOptions,
    *,
    loss: Tensor | None = None,
    grad: Tensor | None = None,
    grad_target: Tensor | None = None,
    upstream: Tensor | None = None,
    skip_if_upstream_is_one: bool = False,
) -> None:
    """Run the kernel over contiguous ``input`` and ``target`` (n elements, n > 0).

    Forward (``upstream`` None): writes ``loss`` (the elementwise loss for "none", the () loss
    for "mean"/"sum", summed in the launch from one share per program) and, for "mean"/"sum",
    ``grad`` and ``grad_target`` when given. Backward (``upstream`` given, one element or n):
    writes the gradients given, times the upstream (and 1/n for "mean"), no loss; with
    ``skip_if_upstream_is_one`` every program leaves at once when the one-element upstream is 1.

    # I/O: read n x + n t (+ n weight for a full-shape weight) once; then
    #   "none" forward: write n loss;   backward: read n (or 1) upstream, write n grad (+ n t-grad);
    #   "mean"/"sum": write n / (STEPS x BLOCK) shares (read again by the last program) and the
    #   scalar loss, with gradients also write n grad (+ n t-grad).
    """
    n_elements = input.numel()
    backward = upstream is not None
    fp64 = compute_dtype(torch.promote_types(input.dtype, target.dtype)) == torch.float64
    steps = FP64_STEPS if fp64 else STEPS
    n_programs = triton.cdiv(n_elements, steps * BLOCK)
    partials = workspace = None
    if options.reduction != "none" and not backward:
        dtype = torch.float64 if fp64 else torch.float32
        partials = torch.empty(n_programs, dtype=dtype, device=input.device)
        workspace = launch_workspace(input.device)
    _sigmoid_loss_kernel[(n_programs,)](
        input,
        target.view(torch.uint8) if target.dtype == torch.bool else target,
        weight,
        pos_weight,
        upstream,
        loss,
        grad,
        grad_target,
        partials,
        workspace,
        n_elements,
        options.weight.inner,
        options.weight.period,
        options.pos_weight.inner,
        options.pos_weight.period,
        options.alpha,
        options.gamma,
        BLOCK=BLOCK,
        STEPS=steps,
        GROUP=16 // input.element_size(),  # elements in one 16-byte access of logits
        # Backward runs the elementwise mode whatever the reduction: 'mean' is in the scale.
        REDUCTION=0 if backward else REDUCTION_CODES[options.reduction],
        COMPUTE_GRAD=grad is not None,
        COMPUTE_TARGET_GRAD=grad_target is not None,
        UPSTREAM_IS_SCALAR=backward and upstream.numel() == 1,
        HAS_WEIGHT=weight is not None,
        WEIGHT_BROADCAST=weight is not None and options.weight.broadcast,
        HAS_POS_WEIGHT=pos_weight is not None,
        POS_WEIGHT_BROADCAST=pos_weight is not None and options.pos_weight.broadcast,
        FOCAL=options.focal,
        HAS_ALPHA=options.alpha >= 0,
        GAMMA_INT=_constant_gamma(options.gamma),
        MEAN=options.reduction == "mean",
        SKIP_IF_UPSTREAM_ONE=skip_if_upstream_is_one,
        FP64=fp64,
        APPROX=APPROXIMATE_MATH and not fp64,
        num_warps=NUM_WARPS,
    )


# --- The custom op: what torch.compile and CUDA graphs see ---------------------------------------
# One torch.library custom op runs the kernel, opaque to torch.compile, with a fake
# implementation and its mutations declared: it writes into the outputs its caller allocated
# (see kernels/softmax.py, whose ops follow the same pattern).


@torch.library.custom_op("lossbench::sigmoid_loss", mutates_args=("loss", "grad", "grad_target"))
def _sigmoid_loss_op(
    input: Tensor,
    target: Tensor,
    weight: Tensor | None,
    pos_weight: Tensor | None,
    upstream: Tensor | None,
    loss: Tensor | None,
    grad: Tensor | None,
    grad_target: Tensor | None,
    weight_inner: int,
    weight_period: int,
    weight_broadcast: bool,
    pos_weight_inner: int,
    pos_weight_period: int,
    pos_weight_broadcast: bool,
    reduction: str,
    focal: bool,
    alpha: float,
    gamma: float,
    skip_if_upstream_is_one: bool,
) -> None:
    """One launch of the sigmoid losses' kernel; see ``_launch``."""
    options = _LossOptions(
        reduction=reduction,
        focal=focal,
        alpha=alpha,
        gamma=gamma,
        compute_grad=grad is not None,
        compute_target_grad=grad_target is not None,
        weight=_WeightLayout(weight_inner, weight_period, weight_broadcast),
        pos_weight=_WeightLayout(pos_weight_inner, pos_weight_period, pos_weight_broadcast),
    )
    _launch(
        input,
        target,
        weight,
        pos_weight,
        options,
        loss=loss,
        grad=grad,
        grad_target=grad_target,
        upstream=upstream,
        skip_if_upstream_is_one=skip_if_upstream_is_one,
    )


_sigmoid_loss_op.register_fake(writes_only)


def _run_op(
    input: Tensor,
    target: Tensor,
    weight: Tensor | None,
    pos_weight: Tensor | None,
    options: _LossOptions,
    *,
    loss: Tensor | None = None,
    grad: Tensor | None = None,
    grad_target: Tensor | None = None,
    upstream: Tensor | None = None,
    skip_if_upstream_is_one: bool = False,
) -> None:
    """``_sigmoid_loss_op`` with ``options`` spelled out as its scalar arguments."""
    _sigmoid_loss_op(
        input,
        target,
        weight,
        pos_weight,
        upstream,
        loss,
        grad,
        grad_target,
        options.weight.inner,
        options.weight.period,
        options.weight.broadcast,
        options.pos_weight.inner,
        options.pos_weight.period,
        options.pos_weight.broadcast,
        options.reduction,
        options.focal,
        options.alpha,
        options.gamma,
        skip_if_upstream_is_one,
    )


class _SigmoidLossFunction(torch.autograd.Function):
    """Autograd for both losses; see the module docstring for what each reduction keeps.

    Eager, "mean" and "sum" write the gradients in the forward pass; backward does nothing at an
    upstream gradient of 1 and otherwise recomputes them from the saved input and target with
    the upstream folded in (rounded once), as a later backward does too. "none", and "mean" and
    "sum" under torch.compile, compute them in backward (kernels/softmax.py says why).
    """

    @staticmethod
    def forward(
        ctx: torch.autograd.function.FunctionCtx,
        input: Tensor,
        target: Tensor,
        weight: Tensor | None,
        pos_weight: Tensor | None,
        options: _LossOptions,
        loss_dtype: torch.dtype,
    ) -> Tensor:
        contiguous_input = input.contiguous()
        contiguous_target = target.contiguous()
        n_elements = contiguous_input.numel()
        reduced = options.reduction != "none"
        in_forward = reduced and options.gradient_in_forward
        grad = grad_target = None
        if in_forward and options.compute_grad:
            grad = torch.empty_like(contiguous_input)
        if in_forward and options.compute_target_grad:
            grad_target = torch.empty_like(contiguous_target)
        if reduced:
            # Written by the launch, which adds its programs' shares (scaled for "mean").
            loss = torch.empty((), dtype=loss_dtype, device=input.device)
        else:
            loss = torch.empty(input.shape, dtype=loss_dtype, device=input.device)
        if n_elements:
            _run_op(
                contiguous_input,
                contiguous_target,
                weight,
                pos_weight,
                options,
                loss=loss,
                grad=grad,
                grad_target=grad_target,
            )
        ctx.options = options
        # Handed to the first backward only: a later one recomputes them.
        ctx.gradients = (grad, grad_target) if in_forward else None
        if options.compute_grad or options.compute_target_grad:
            ctx.save_for_backward(contiguous_input, contiguous_target, weight, pos_weight)
        if not reduced:
            return loss
        if n_elements == 0:
            # torch's empty mean is nan, its empty sum 0.
            empty_value = math.nan if options.reduction == "mean" else 0.0
            return torch.full((), empty_value, dtype=loss_dtype, device=input.device)
        return loss

    @staticmethod
    def backward(
        ctx: torch.autograd.function.FunctionCtx, grad_output: Tensor
    ) -> tuple[Tensor | None, ...]:
        check_first_order("reference.sigmoid")
        options: _LossOptions = ctx.options
        contiguous_input, contiguous_target, weight, pos_weight = ctx.saved_tensors
        gradients, ctx.gradients = ctx.gradients, None
        written_in_forward = gradients is not None
        if written_in_forward:
            grad, grad_target = gradients
        else:
            grad = torch.empty_like(contiguous_input) if options.compute_grad else None
            grad_target = (
                torch.empty_like(contiguous_target) if options.compute_target_grad else None
            )
        if contiguous_input.numel():
            if all(stride == 0 for stride in grad_output.stride()):
                # A reduced loss's one value, or one value expanded to the input's shape
                # (loss.sum().backward()): read as that one value.
                upstream = grad_output[(0,) * grad_output.dim()].reshape(1)
            else:
                upstream = grad_output.contiguous().view(-1)
            _run_op(
                contiguous_input,
                contiguous_target,
                weight,
                pos_weight,
                options,
                grad=grad,
                grad_target=grad_target,
                upstream=upstream,
                skip_if_upstream_is_one=written_in_forward,
            )
        return grad, grad_target, None, None, None, None


def _sigmoid_loss(
    input: Tensor,
    target: Tensor,
    weight: Tensor | None,
    pos_weight: Tensor | None,
    reduction: str,
    focal: bool,
    alpha: float,
    gamma: float,
    loss_dtype: torch.dtype,
) -> Tensor:
    """Lay out the weights, decide the gradients, and run the autograd function."""
    grad_enabled = torch.is_grad_enabled()
    weight_layout = pos_weight_layout = _NO_WEIGHT
    if weight is not None:
        weight, weight_layout = _weight_layout("weight", weight, input.shape)
    if pos_weight is not None:
        pos_weight, pos_weight_layout = _weight_layout("pos_weight", pos_weight, input.shape)
    options = _LossOptions(
        reduction=reduction,
        focal=focal,
        alpha=float(alpha),
        gamma=float(gamma),
        compute_grad=grad_enabled and input.requires_grad,
        compute_target_grad=grad_enabled and target.requires_grad,
        weight=weight_layout,
        pos_weight=pos_weight_layout,
        gradient_in_forward=not torch.compiler.is_compiling(),
    )
    return _SigmoidLossFunction.apply(input, target, weight, pos_weight, options, loss_dtype)


def binary_cross_entropy_with_logits(
    input: Tensor,
    target: Tensor,
    weight: Tensor | None = None,
    *,
    reduction: str = "mean",
    pos_weight: Tensor | None = None,
) -> Tensor:
    """Binary cross-entropy of logits, fused: torch's function, forward and backward.

    Args:
        input: logits, any shape, fp32/fp16/bf16/fp64.
        target: same shape; any float dtype (soft targets allowed), bool, or uint8 (0/1 labels,
            one byte each: see the module docstring for the bandwidth saved).
        weight: optional, any float dtype, broadcasts to ``input``'s shape without enlarging it.
        reduction: "none" (loss of ``input``'s shape), "mean" (sum / numel) or "sum".
            Keyword-only, as every argument after ``weight``: torch's fourth positional
            argument is the deprecated ``size_average``.
        pos_weight: optional weight of the positive term, any float dtype, broadcasts to
            ``input``'s shape; typically (C,) for the size C of the last dimension.

    Returns:
        The loss in torch's dtype: ``target``'s for a float target, ``input``'s otherwise.
    """
    _check_arguments(input, target, weight, pos_weight, reduction, "input", "target")
    loss_dtype = target.dtype if target.is_floating_point() else input.dtype
    return _sigmoid_loss(input, target, weight, pos_weight, reduction, False, -1.0, 0.0, loss_dtype)


def sigmoid_focal_loss(
    inputs: Tensor,
    targets: Tensor,
    alpha: float = 0.25,
    gamma: float = 2.0,
    reduction: str = "none",
) -> Tensor:
    """RetinaNet's sigmoid focal loss, fused: ``torchvision.ops.sigmoid_focal_loss``.

    Args:
        inputs: logits, any shape, fp32/fp16/bf16/fp64.
        targets: same shape; any float dtype (soft targets allowed), bool, or uint8.
        alpha: weight of positives in [0, 1] (negatives get 1 - alpha); negative: no weighting.
        gamma: focusing exponent, finite and >= 0, on 1 - p_t; gamma = 0 and alpha < 0 give
            BCE with logits.
        reduction: "none" (loss of ``inputs``' shape, torchvision's default), "mean" or "sum".

    Returns:
        The loss in ``torch.result_type(inputs, targets)`` for float targets (torchvision's),
        ``inputs``' dtype otherwise.
    """
    _check_arguments(inputs, targets, None, None, reduction, "inputs", "targets")
    check_focal_options(alpha, gamma, negative_alpha_means_none=True)
    # torch.result_type of two tensors of one shape; promote_types is what dynamo can trace.
    loss_dtype = (
        torch.promote_types(inputs.dtype, targets.dtype)
        if targets.is_floating_point()
        else inputs.dtype
    )
    return _sigmoid_loss(inputs, targets, None, None, reduction, True, alpha, gamma, loss_dtype)


class BCEWithLogitsLoss(reference_sigmoid.BCEWithLogitsLoss):
    """Module form of :func:`binary_cross_entropy_with_logits`, like ``torch.nn.BCEWithLogitsLoss``:
    the constructor and buffers of reference.sigmoid.BCEWithLogitsLoss, the fused kernel."""

    function = staticmethod(binary_cross_entropy_with_logits)


class SigmoidFocalLoss(reference_sigmoid.SigmoidFocalLoss):
    """Module form of :func:`sigmoid_focal_loss` (torchvision has only the function): the
    constructor of reference.sigmoid.SigmoidFocalLoss, the fused kernel."""

    function = staticmethod(sigmoid_focal_loss)
