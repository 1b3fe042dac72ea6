"""Fused Triton kernels for classification losses, with the signatures of the torch functions.

Without a CUDA GPU the kernels run in Triton's interpreter on the CPU (numpy, one program at a
time): correct, but slow, and never a measure of kernel speed. Triton decides at import whether
its own jitted helpers (``tl.sum``'s combine function, say) are interpreted, so TRITON_INTERPRET
must be set before anything imports triton; this is the one place that sets it. Import
``kernels`` before torchvision or torch.compile, which import triton themselves; set
TRITON_INTERPRET yourself to override the choice.
"""

import os
import sys

import torch

if not torch.cuda.is_available() and "TRITON_INTERPRET" not in os.environ:
    if "triton" in sys.modules:
        raise ImportError(
            "no CUDA GPU, so the kernels must run in Triton's interpreter, but triton was imported "
            "(by torchvision or torch.compile, say) before kernels could turn the interpreter on: "
            "import kernels first, or set TRITON_INTERPRET=1 in the environment"
        )
    os.environ["TRITON_INTERPRET"] = "1"

from kernels.sigmoid import (
    BCEWithLogitsLoss,
    SigmoidFocalLoss,
    binary_cross_entropy_with_logits,
    sigmoid_focal_loss,
)
from kernels.softmax import (
    CrossEntropyLoss,
    SoftmaxFocalLoss,
    cross_entropy,
    softmax_focal_loss,
)

__all__ = [
    "BCEWithLogitsLoss",
    "CrossEntropyLoss",
    "SigmoidFocalLoss",
    "SoftmaxFocalLoss",
    "binary_cross_entropy_with_logits",
    "cross_entropy",
    "sigmoid_focal_loss",
    "softmax_focal_loss",
]
