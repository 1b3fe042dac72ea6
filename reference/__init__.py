"""Readable PyTorch classification losses, written from their definitions: the float64 oracle.

Each function keeps the signature, defaults and semantics of the torch or torchvision function it
mirrors; ``tolerance`` holds how close a lower-precision result must come to it.
"""

from lossbench.reference.linear import LinearCrossEntropyLoss, linear_cross_entropy
from lossbench.reference.sigmoid import (
    BCELoss,
    BCEWithLogitsLoss,
    SigmoidFocalLoss,
    binary_cross_entropy,
    binary_cross_entropy_with_logits,
    sigmoid_focal_loss,
)
from lossbench.reference.softmax import (
    CrossEntropyLoss,
    SoftmaxFocalLoss,
    cross_entropy,
    softmax_focal_loss,
)
from lossbench.reference.zero_one import ZeroOneLoss, zero_one_loss

__all__ = [
    "BCELoss",
    "BCEWithLogitsLoss",
    "CrossEntropyLoss",
    "LinearCrossEntropyLoss",
    "SigmoidFocalLoss",
    "SoftmaxFocalLoss",
    "ZeroOneLoss",
    "binary_cross_entropy",
    "binary_cross_entropy_with_logits",
    "cross_entropy",
    "linear_cross_entropy",
    "sigmoid_focal_loss",
    "softmax_focal_loss",
    "zero_one_loss",
]
