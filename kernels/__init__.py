"""Fused Triton kernels for classification losses, with the signatures of the torch functions.

Without a CUDA GPU the kernels run in Triton's interpreter on the CPU (numpy, one program at a
time): correct, but slow, and never a measure of kernel speed. Triton decides at import whether
its own jitted helpers (``tl.sum``'s combine function, say) are interpreted, so TRITON_INTERPRET
must be set before anything imports triton. Importing this package sets it, and imports nothing
else: the kernel modules, and triton with them, load on first use of a name below. Import
``lossbench.kernels`` before torchvision or torch.compile, which import triton themselves; set
TRITON_INTERPRET yourself to override the choice.
"""

import importlib
import os
import sys

import torch

if not torch.cuda.is_available() and "TRITON_INTERPRET" not in os.environ:
    if "triton" in sys.modules:
        raise ImportError(
            "no CUDA GPU, so the kernels must run in Triton's interpreter, but triton was imported "
            "(by torchvision or torch.compile, say) before lossbench.kernels could turn the "
            "interpreter on: import lossbench.kernels first, or set TRITON_INTERPRET=1 in the "
            "environment"
        )
    os.environ["TRITON_INTERPRET"] = "1"

# Each public name and the module of this package that defines it, imported on first use.
_MODULE_OF = {
    "BCEWithLogitsLoss": "sigmoid",
    "SigmoidFocalLoss": "sigmoid",
    "binary_cross_entropy_with_logits": "sigmoid",
    "sigmoid_focal_loss": "sigmoid",
    "LinearCrossEntropyLoss": "linear",
    "linear_cross_entropy": "linear",
    "CrossEntropyLoss": "softmax",
    "SoftmaxFocalLoss": "softmax",
    "cross_entropy": "softmax",
    "softmax_focal_loss": "softmax",
}

__all__ = sorted(_MODULE_OF)


def __getattr__(name: str) -> object:
    if name not in _MODULE_OF:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f"{__name__}.{_MODULE_OF[name]}"), name)


def __dir__() -> list[str]:
    return sorted([*globals(), *__all__])
