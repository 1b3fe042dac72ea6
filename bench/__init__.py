"""The lossbench harness: cases, measurement, CSV, plots, CLI and the pytest-benchmark suites."""

# First, before torch's profiler, torch.compile or torchvision import triton: without a GPU,
# kernels switches Triton to its interpreter, which works only before triton is imported.
import lossbench.kernels  # noqa: F401
