"""The implementations a case can run, as callables ``(logits, target) -> scalar loss``, or
``(hidden, linear_weight, target) -> scalar loss`` for the linear loss.

``load_implementation(loss, impl)`` returns one with ``reduction="mean"`` and the loss's benchmark
options (``LossSpec.options``), so that all of them compute the same number. Implementations are
imported lazily: a module that is missing or broken makes its cases skip with the reason
(``UnavailableError``), it never stops the other cases.
"""

from __future__ import annotations

import functools
import importlib
from dataclasses import dataclass

import torch
from torch.nn import functional

from lossbench.bench.cases import IMPLEMENTATIONS, LOSSES, LossFunction, LossSpec


class UnavailableError(Exception):
    """An implementation cannot run here; the message says why (shown as the skip reason)."""


@dataclass(frozen=True)
class Implementation:
    """A loss as one implementation computes it.

    ``peer``: someone else's code (torch, torch.compile, Liger-Kernel, CCE), the baseline ours is
    measured against. A peer that disagrees with the float64 reference is still timed, and its
    case is reported as an expected failure (xfail) with the errors; ours fails outright and is
    not timed. (torchvision's sigmoid_focal_loss in bf16, for one, has gradients 1.1-1.4e-2 from
    float64, beyond the bf16 tolerance of 1e-2.)
    ``interpreted``: runs in Triton's interpreter, so its time is no kernel speed.
    ``overwrites_logits``: writes its gradient into the logits' storage (Liger does), so the
    harness restores the logits before every call and checks agreement against a saved copy.
    """

    name: str
    function: LossFunction
    peer: bool = False
    interpreted: bool = False
    overwrites_logits: bool = False


def torch_softmax_focal_loss(
    logits: torch.Tensor, target: torch.Tensor, alpha: float, gamma: float
) -> torch.Tensor:
    """Softmax focal loss in plain eager torch, as a user writes it: torch has no such function.

    -alpha (1 - p_y)^gamma log p_y per row, p = softmax(logits), averaged over the N rows;
    computed in the logits' dtype with log_softmax and gather.
    """
    log_p_y = functional.log_softmax(logits, dim=1).gather(1, target.unsqueeze(1)).squeeze(1)
    return (-alpha * (1 - log_p_y.exp()) ** gamma * log_p_y).mean()


def torch_linear_cross_entropy(
    hidden: torch.Tensor,
    linear_weight: torch.Tensor,
    target: torch.Tensor,
    linear_bias: torch.Tensor | None = None,
) -> torch.Tensor:
    """The classifier and the loss as eager torch runs them: the N x V logits materialised by
    ``F.linear``, then ``F.cross_entropy`` (mean over the rows)."""
    return functional.cross_entropy(functional.linear(hidden, linear_weight, linear_bias), target)


def _torch_chunked_function() -> LossFunction:
    """torch's own fused path: ``F.linear_cross_entropy`` with ``options`` (torch 2.14+), which
    processes the batch in chunks instead of materialising the logits."""
    options_class = getattr(torch.nn, "LinearCrossEntropyOptions", None)
    if not hasattr(functional, "linear_cross_entropy") or options_class is None:
        raise UnavailableError(
            f"torch {torch.__version__} has no F.linear_cross_entropy with options (torch 2.14+)"
        )
    options = options_class()
    return functools.partial(functional.linear_cross_entropy, options=options)


def _torch_function(spec: LossSpec) -> LossFunction:
    if spec.name == "linear_cross_entropy":
        return torch_linear_cross_entropy
    if spec.name == "cross_entropy":
        return functional.cross_entropy
    if spec.name == "softmax_focal_loss":
        return functools.partial(torch_softmax_focal_loss, **spec.options)
    if spec.name == "binary_cross_entropy_with_logits":
        return functional.binary_cross_entropy_with_logits
    from torchvision.ops import sigmoid_focal_loss

    return functools.partial(sigmoid_focal_loss, reduction="mean", **spec.options)


def _import_loss(package: str, spec: LossSpec, reduction: str = "mean") -> LossFunction:
    """``package.<family>.<loss name>`` with ``reduction`` and the spec's options (the module of
    a family is named after it: softmax, sigmoid, linear)."""
    module_name = f"{package}.{spec.family}"
    try:
        module = importlib.import_module(module_name)
    except Exception as error:
        reason = f"{module_name} cannot be imported: {type(error).__name__}: {error}"
        raise UnavailableError(reason) from error
    return functools.partial(getattr(module, spec.name), reduction=reduction, **spec.options)


def reference_function(spec: LossSpec, reduction: str) -> LossFunction:
    """The reference/ loss with the spec's options and ``reduction`` (the float64 oracle)."""
    return _import_loss("lossbench.reference", spec, reduction)


def _torch_compile(function: LossFunction, *, fullgraph: bool) -> LossFunction:
    """torch.compile of ``function`` with dynamic shapes.

    dynamic=True: one compilation serves every shape of a loss, dtype and pass, so a sweep of
    dozens of shapes costs a handful of compilations (on the CPU each one runs a C++ compiler for
    seconds). Shape-specialised compilation can be faster at a given shape.
    """
    import torch._dynamo.config

    # Dynamo recompiles per dtype, per pass (requires_grad) and per size regime the backend
    # guards on, and counts against one limit per code object, which every compiled torch
    # function shares (dynamo wraps them in one helper). The sweep needs ~48; past the limit,
    # fail rather than fall back to eager silently.
    config = torch._dynamo.config
    config.recompile_limit = max(config.recompile_limit, 128)
    config.fail_on_recompile_limit_hit = True
    return torch.compile(function, dynamic=True, fullgraph=fullgraph)


class _CompiledPeer:
    """torch.compile of the torch implementation; a failed compilation becomes
    ``UnavailableError`` (torch's compiler is a peer's tool: where it cannot run, say why)."""

    def __init__(self, function: LossFunction) -> None:
        self.compiled = _torch_compile(function, fullgraph=False)

    def __call__(self, *inputs: torch.Tensor) -> torch.Tensor:
        try:
            return self.compiled(*inputs)
        except torch.OutOfMemoryError:
            raise
        except Exception as error:
            first_line = str(error).strip().splitlines()[0] if str(error).strip() else ""
            reason = f"torch.compile failed: {type(error).__name__}: {first_line}"
            raise UnavailableError(reason) from error


@functools.cache
def _compiled(loss: str) -> _CompiledPeer:
    # One compiled object per loss for the whole session: dynamo caches per function anyway.
    return _CompiledPeer(_torch_function(LOSSES[loss]))


@functools.cache
def _compiled_kernels(loss: str) -> LossFunction:
    """The kernels' loss compiled with fullgraph=True: ours inside a compiled step, which shows
    what compiling around the custom ops costs (under torch.compile a 'mean' loss computes its
    gradient in backward: see kernels/softmax.py). A graph break or a failed compilation is a
    failure of ours, raised as it is."""
    return _torch_compile(_import_loss("lossbench.kernels", LOSSES[loss]), fullgraph=True)


def load_implementation(loss: str, impl: str) -> Implementation:
    """The implementation ``impl`` of ``loss``, or ``UnavailableError`` saying why it cannot run."""
    spec = LOSSES[loss]
    if impl == "torch":
        return Implementation(impl, _torch_function(spec), peer=True)
    if impl == "compile":
        return Implementation(impl, _compiled(loss), peer=True)
    if impl == "reference":
        return Implementation(impl, _import_loss("lossbench.reference", spec))
    if impl in ("triton", "triton+compile"):
        # Importing kernels chooses the interpreter when no GPU exists (kernels/__init__.py).
        function = _import_loss("lossbench.kernels", spec)
        from lossbench.kernels._common import INTERPRETED

        if impl == "triton+compile":
            function = _compiled_kernels(loss)
        return Implementation(impl, function, interpreted=INTERPRETED)
    if impl == "liger":
        if spec.family == "linear":
            return Implementation(impl, _liger_linear_function(), peer=True)
        return Implementation(impl, _liger_function(spec), peer=True, overwrites_logits=True)
    if impl not in IMPLEMENTATIONS:
        raise ValueError(f"unknown implementation {impl!r}; known: {IMPLEMENTATIONS}")
    if spec.family != "linear":
        raise UnavailableError(f"{impl} computes the linear cross-entropy only, not {spec.name}")
    if impl == "torch-chunked":
        return Implementation(impl, _torch_chunked_function(), peer=True)
    return Implementation(impl, _cce_function(filtered=impl == "cce-filter"), peer=True)


def _liger_linear_function() -> LossFunction:
    """Liger-Kernel's fused linear cross-entropy, which takes (weight, hidden, target)."""
    if not torch.cuda.is_available():
        raise UnavailableError("Liger-Kernel needs a CUDA GPU")
    try:
        from liger_kernel.transformers import LigerFusedLinearCrossEntropyLoss
    except ImportError as error:
        reason = f"liger-kernel is not installed ({error}); pip install -e '.[peers]'"
        raise UnavailableError(reason) from error
    loss = LigerFusedLinearCrossEntropyLoss(reduction="mean")

    def liger(hidden: torch.Tensor, linear_weight: torch.Tensor, target: torch.Tensor):
        return loss(linear_weight, hidden, target)

    return liger


def _cce_function(filtered: bool) -> LossFunction:
    """Apple's Cut Cross-Entropy (``cut-cross-entropy``), its "cce" kernels: exact
    (``filter_eps=None``), or with its default gradient filter (25.1.1: "high", eps(dtype) / 32)
    when ``filtered``."""
    if not torch.cuda.is_available():
        raise UnavailableError("Cut Cross-Entropy's kernels need a CUDA GPU")
    try:
        import cut_cross_entropy
    except ImportError as error:
        reason = f"cut-cross-entropy is not installed ({error}); pip install -e '.[peers]'"
        raise UnavailableError(reason) from error
    options = {} if filtered else {"filter_eps": None}

    def cce(hidden: torch.Tensor, linear_weight: torch.Tensor, target: torch.Tensor):
        if hidden.dtype == torch.float32 and (hidden.requires_grad or linear_weight.requires_grad):
            # Its backward asserts it (cce_backward.py), rather than compute in fp32.
            raise UnavailableError(
                f"Cut Cross-Entropy {cut_cross_entropy.__version__}'s backward takes bf16 or "
                "fp16 hidden states only"
            )
        return cut_cross_entropy.linear_cross_entropy(
            hidden, linear_weight, target, impl="cce", **options
        )

    return cce


def _liger_function(spec: LossSpec) -> LossFunction:
    if spec.name != "cross_entropy":
        raise UnavailableError(f"Liger-Kernel has no {spec.name}")
    if not torch.cuda.is_available():
        raise UnavailableError("Liger-Kernel needs a CUDA GPU")
    try:
        from liger_kernel.transformers import LigerCrossEntropyLoss
    except ImportError as error:
        reason = f"liger-kernel is not installed ({error}); pip install -e '.[peers]'"
        raise UnavailableError(reason) from error
    return LigerCrossEntropyLoss(reduction="mean")
