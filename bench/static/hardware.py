"""The H100/H200 streaming multiprocessor, and the ASSUMPTIONS of the static speed model: one place.

Two kinds of numbers live here, and they are kept apart:

* ``SM90``: facts of every sm_90 SM (NVIDIA's CUDA C++ Programming Guide, "Features and Technical
  Specifications" for compute capability 9.0), from which occupancy follows exactly.
* ``MODEL``: what the estimates assume about an H200 SXM and about how kernels run. None of it
  was measured by this project: no GPU was available when it was written. An estimate made from
  it is a bound under these assumptions, and every column derived from it says "est".

The model: a kernel takes the larger of two times, both assuming perfect overlap:

* DRAM time: the bytes it moves by design over the copy bandwidth;
* issue time: the warp instructions it executes over the SMs' issue rate (each SM issues
  ``issue_per_clock`` warp instructions per clock, every instruction one slot, at ``clock_hz``).

It leaves out, and so over-estimates speed where they matter: launch latency (several
microseconds per launch, which dominates a small problem), the tail of the last wave, memory
latency that too few resident warps cannot hide, pipes slower than the issue rate (MUFU, type
conversions: 16 results per clock per SM, an eighth of the issue rate), and L2 hits (a second
read of the logits is counted as DRAM traffic).
"""

from __future__ import annotations

import math
from dataclasses import dataclass


@dataclass(frozen=True)
class StreamingMultiprocessor:
    """The per-SM limits that decide how many programs (thread blocks) run at once."""

    registers: int = 65536  # 32-bit registers per SM
    max_threads: int = 2048
    max_blocks: int = 32
    max_registers_per_thread: int = 255
    # Registers are allocated per warp in units of 256 (8 per thread).
    register_allocation_unit: int = 256
    # 228 KiB of shared memory per SM, of which the driver reserves 1 KiB per block.
    shared_memory: int = 228 * 1024
    shared_memory_reserved_per_block: int = 1024
    warp_size: int = 32


@dataclass(frozen=True)
class SpeedModel:
    """What the estimates assume (see the module docstring); none of it measured here."""

    device: str = "H200 SXM"
    sms: int = 132
    # The H200 SXM's maximum boost clock; a kernel near its power limit may run slower.
    clock_hz: float = 1.98e9
    # Four schedulers per SM, one warp instruction each per clock.
    issue_per_clock: int = 4
    # Bytes read plus written per second by a large device-to-device copy: about 90 % of the
    # H200's 4.8 TB/s peak, which is what such copies typically reach. This is also the rate that
    # makes the instruction budgets (analysis.budget: 31 SASS instructions per element for bf16
    # cross-entropy, 39 for BCE with uint8 targets) the break-even point.
    copy_bandwidth: float = 4.3e12


SM90 = StreamingMultiprocessor()
MODEL = SpeedModel()


def programs_per_sm(
    num_warps: int, registers: int, shared_bytes: int, sm: StreamingMultiprocessor = SM90
) -> tuple[int, str]:
    """Programs of one kernel resident on an SM at once, and the limit that decides it.

    The limits are threads, blocks, registers (allocated per warp, rounded up to the allocation
    unit) and shared memory (plus the per-block reservation); the smallest one wins.
    """
    threads = num_warps * sm.warp_size
    per_warp = math.ceil(registers * sm.warp_size / sm.register_allocation_unit)
    per_warp *= sm.register_allocation_unit
    limits = {
        "threads": sm.max_threads // threads,
        "blocks": sm.max_blocks,
        "registers": (sm.registers // per_warp) // num_warps if per_warp else sm.max_blocks,
        "shared memory": sm.shared_memory // (shared_bytes + sm.shared_memory_reserved_per_block),
    }
    limit = min(limits, key=limits.__getitem__)
    return limits[limit], limit


def occupancy(num_warps: int, programs: int, sm: StreamingMultiprocessor = SM90) -> float:
    """Resident threads over the SM's maximum, with ``programs`` programs of ``num_warps`` warps."""
    return programs * num_warps * sm.warp_size / sm.max_threads


def issue_seconds(warp_instructions: float, model: SpeedModel = MODEL) -> float:
    """ESTIMATE: time to issue ``warp_instructions`` spread evenly over every SM."""
    return warp_instructions / (model.issue_per_clock * model.clock_hz * model.sms)


def dram_seconds(bytes_moved: float, model: SpeedModel = MODEL) -> float:
    """ESTIMATE: time to move ``bytes_moved`` at the assumed copy bandwidth."""
    return bytes_moved / model.copy_bandwidth


def instruction_budget(bytes_per_element: float, model: SpeedModel = MODEL) -> float:
    """ESTIMATE: SASS instructions per element (per thread) that issue as fast as the copy
    bandwidth moves ``bytes_per_element``: above it, a kernel is issue-bound in this model."""
    threads_per_second = model.issue_per_clock * SM90.warp_size * model.clock_hz * model.sms
    return threads_per_second * bytes_per_element / model.copy_bandwidth
