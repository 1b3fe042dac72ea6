"""Fused Triton kernels for classification losses, with the signatures of the torch functions.

Without a CUDA GPU the kernels run in Triton's interpreter on the CPU (numpy, one program at a
time): correct, but slow, and never a measure of kernel speed. Triton reads TRITON_INTERPRET when
a kernel is decorated, so it must be set before any kernel module imports triton; this is the one
place that sets it. Set TRITON_INTERPRET yourself to override the choice.
"""

import os

import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")
