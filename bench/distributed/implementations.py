"""The vocabulary-parallel implementations a rank can run, as ``(local_logits, target) -> loss``.

Each takes this rank's (N, V_r) slice of the logits and the global (N,) class indices, and returns
the loss of all classes with reduction='mean' (the benchmark's options: none, or the focal loss's
alpha 0.25 and gamma 2), leaving this rank's gradient slice in ``local_logits.grad`` after
``backward()``:

| name | what it runs |
|---|---|
| ``triton`` | ``kernels.cross_entropy(..., process_group=...)``: ours, fused |
| ``reference`` | ``reference.cross_entropy(..., process_group=...)``: ours, the readable oracle |
| ``naive`` | all-gather the logits, then ``F.cross_entropy`` on the whole (N, C) on every rank |
| ``loss_parallel`` | torch's ``loss_parallel`` on a DTensor sharded along the classes |
| ``megatron`` | megatron-core's ``vocab_parallel_cross_entropy`` (pip install megatron-core) |

The naive baseline's backward takes this rank's columns of the full gradient, which every rank
computes alike: no communication in backward, N * C * (p - 1) / p elements received in forward.
"""

from __future__ import annotations

import contextlib
import functools
import importlib
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch.nn import functional

from lossbench.bench.cases import LOSSES
from lossbench.bench.implementations import UnavailableError, torch_softmax_focal_loss

DISTRIBUTED_IMPLEMENTATIONS = ("triton", "reference", "naive", "loss_parallel", "megatron")
# Someone else's code: timed even when it disagrees with the float64 reference (reported FAIL).
PEERS = ("naive", "loss_parallel", "megatron")

RankLoss = Callable[[torch.Tensor, torch.Tensor], object]


@dataclass(frozen=True)
class Shard:
    """This rank's place: its group, its classes [offset, offset + size) of n_classes."""

    group: dist.ProcessGroup
    offset: int
    size: int
    n_classes: int
    device: torch.device


@dataclass(frozen=True)
class RankImplementation:
    """One implementation on one rank.

    ``function(local_logits, target)`` returns the loss; ``local_value`` turns it into a plain
    tensor (a DTensor's local value); forward and backward both run inside ``context()`` (torch's
    loss_parallel must be active in both). ``interpreted``: Triton's interpreter, never timed.
    ``overwrites_logits``: the forward pass writes over its logits (Megatron's does, in fp32), so
    the benchmark restores them before every timed step, outside the timed region.
    """

    name: str
    function: RankLoss
    peer: bool = False
    interpreted: bool = False
    overwrites_logits: bool = False
    context: Callable[[], contextlib.AbstractContextManager] = contextlib.nullcontext
    local_value: Callable[[object], torch.Tensor] = lambda loss: loss


def load_rank_implementation(loss: str, impl: str, shard: Shard) -> RankImplementation:
    """The implementation ``impl`` of ``loss`` on this rank, or ``UnavailableError`` with why."""
    spec = LOSSES[loss]
    if impl in ("triton", "reference"):
        module = importlib.import_module(
            f"lossbench.{'kernels' if impl == 'triton' else 'reference'}.softmax"
        )
        function = functools.partial(
            getattr(module, loss),
            process_group=shard.group,
            class_offset=shard.offset,
            **spec.options,
        )
        from lossbench.kernels._common import INTERPRETED

        return RankImplementation(impl, function, interpreted=impl == "triton" and INTERPRETED)
    if impl == "naive":
        return RankImplementation(impl, functools.partial(_naive, loss=loss, shard=shard), True)
    if loss != "cross_entropy":
        raise UnavailableError(f"{impl} has no {loss}")
    if impl == "loss_parallel":
        return _loss_parallel(shard)
    if impl == "megatron":
        return _megatron(shard)
    raise ValueError(f"unknown implementation {impl!r}; known: {DISTRIBUTED_IMPLEMENTATIONS}")


# --- The naive baseline --------------------------------------------------------------------------


class _GatherClasses(torch.autograd.Function):
    """All-gather the class slices into (N, C) in forward; backward keeps this rank's columns."""

    @staticmethod
    def forward(ctx, local: torch.Tensor, shard: Shard) -> torch.Tensor:
        world = dist.get_world_size(shard.group)
        if shard.size * world != shard.n_classes:
            raise UnavailableError("the naive baseline gathers even slices only")
        pieces = [torch.empty_like(local) for _ in range(world)]
        dist.all_gather(pieces, local.contiguous(), group=shard.group)
        ctx.shard = shard
        return torch.cat(pieces, dim=1)

    @staticmethod
    def backward(ctx, grad_output: torch.Tensor) -> tuple[torch.Tensor, None]:
        shard = ctx.shard
        return grad_output.narrow(1, shard.offset, shard.size).contiguous(), None


def _naive(local: torch.Tensor, target: torch.Tensor, *, loss: str, shard: Shard) -> torch.Tensor:
    full = _GatherClasses.apply(local, shard)
    if loss == "cross_entropy":
        return functional.cross_entropy(full, target)
    return torch_softmax_focal_loss(full, target, **LOSSES[loss].options)


# --- torch's loss_parallel ----------------------------------------------------------------------


def _loss_parallel(shard: Shard) -> RankImplementation:
    try:
        from torch.distributed.device_mesh import DeviceMesh
        from torch.distributed.tensor import DTensor
        from torch.distributed.tensor import Shard as ShardPlacement
        from torch.distributed.tensor.parallel import loss_parallel
    except ImportError as error:
        raise UnavailableError(f"torch's loss_parallel cannot be imported: {error}") from error
    if shard.size * dist.get_world_size(shard.group) != shard.n_classes:
        raise UnavailableError("loss_parallel runs on even slices only (DTensor's Shard(1))")
    try:
        mesh = DeviceMesh.from_group(shard.group, shard.device.type)
    except Exception as error:  # a backend DTensor cannot use: the peer skips, with why
        raise UnavailableError(f"no DeviceMesh on this group: {error}") from error

    def run(local: torch.Tensor, target: torch.Tensor) -> object:
        logits = DTensor.from_local(
            local, mesh, [ShardPlacement(1)], shape=(local.shape[0], shard.n_classes),
            stride=(shard.n_classes, 1), run_check=False,
        )  # fmt: skip
        return functional.cross_entropy(logits, target)

    return RankImplementation(
        "loss_parallel", run, peer=True, context=loss_parallel, local_value=_local_value
    )


def _local_value(loss) -> torch.Tensor:
    """A DTensor's value on this rank (a replicated loss: the whole loss)."""
    return loss.to_local()


# --- megatron-core ------------------------------------------------------------------------------


# The default group megatron-core's global parallel_state was last set up on.
_MEGATRON_WORLD: dict[str, object] = {}


def _megatron(shard: Shard) -> RankImplementation:
    try:
        from megatron.core import parallel_state
        from megatron.core.tensor_parallel import vocab_parallel_cross_entropy
    except Exception as error:
        reason = (
            f"megatron-core cannot be imported ({type(error).__name__}: {error}); "
            "pip install megatron-core"
        )
        raise UnavailableError(reason) from error
    if dist.get_world_size(shard.group) != dist.get_world_size():
        raise UnavailableError(
            "megatron-core takes its tensor-parallel group from its global parallel_state: "
            "measured only at the launch's full world size"
        )
    # Its parallel_state outlives a process group: set it up again on each new default group
    # (the fake-group mode makes one per world size).
    if _MEGATRON_WORLD.get("group") is not dist.group.WORLD:
        try:
            if parallel_state.model_parallel_is_initialized():
                parallel_state.destroy_model_parallel()
            parallel_state.initialize_model_parallel(
                tensor_model_parallel_size=dist.get_world_size()
            )
        except Exception as error:  # a backend or device it cannot set up: skip, with why
            reason = f"megatron-core's initialize_model_parallel failed: {error}"
            raise UnavailableError(reason) from error
        _MEGATRON_WORLD["group"] = dist.group.WORLD

    def run(local: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        # Megatron takes [..., V/p] logits (class last) and returns the per-token loss; it
        # subtracts the max and exponentiates in place, in its fp32 copy of the logits, which
        # for fp32 logits is the logits themselves.
        return vocab_parallel_cross_entropy(local, target).mean()

    return RankImplementation("megatron", run, peer=True, overwrites_logits=True)
