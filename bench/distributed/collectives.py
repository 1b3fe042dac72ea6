"""What a step communicates: each collective it issues, and the bytes this rank contributes.

``CollectiveRecorder`` is a TorchDispatchMode: every torch.distributed collective reaches the
dispatcher as a ``c10d`` op (dist.all_reduce and friends) or a ``_c10d_functional`` op (DTensor,
functional collectives), whatever the backend, so it sees ours, torch's loss_parallel's and
Megatron's alike, on gloo, NCCL or a fake group.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch.utils import _pytree as pytree
from torch.utils._python_dispatch import TorchDispatchMode

# The argument that holds what this rank contributes, by op. In-place c10d ops (all-reduce,
# broadcast) take it first; gathering and scattering c10d ops take (outputs, inputs, ...);
# functional collectives take their input first and return a new tensor.
_CONTRIBUTION_ARGUMENT = {
    "c10d": {
        "allreduce_": 0,
        "allreduce_coalesced_": 0,
        "broadcast_": 0,
        "allgather_": 1,
        "_allgather_base_": 1,
        "allgather_coalesced_": 1,
        "allgather_into_tensor_coalesced_": 1,
        "reduce_scatter_": 1,
        "_reduce_scatter_base_": 1,
        "reduce_scatter_tensor_coalesced_": 1,
        "alltoall_": 1,
        "alltoall_base_": 1,
        "gather_": 1,
        "scatter_": 1,
        "reduce_": 0,
    },
    "_c10d_functional": {},  # every one: argument 0
}
# Not collectives: waiting on one, or bookkeeping.
_NOT_COLLECTIVES = {"wait_tensor", "monitored_barrier_"}


@dataclass
class Collective:
    """One collective: its kind ('allreduce', 'allgather', ...) and this rank's contribution."""

    kind: str
    elements: int
    bytes: int


@dataclass
class CollectiveRecorder(TorchDispatchMode):
    """Records every collective issued inside ``with CollectiveRecorder() as recorder:``.

    ``bytes`` counts what this rank contributes (its all-reduce buffer, its all-gather input), not
    what the backend moves on the wire: a ring all-reduce of b bytes sends and receives about
    2 b (p - 1) / p per rank, an all-gather of b bytes per rank b (p - 1).
    """

    collectives: list[Collective] = field(default_factory=list)

    def __post_init__(self) -> None:
        super().__init__()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if any(kind is not torch.Tensor for kind in types):
            # A tensor subclass (DTensor) runs first and turns the op into plain tensors' ops and
            # collectives, which come back here, as torch's CommDebugMode does.
            return NotImplemented
        namespace, name = func.namespace, func._opname
        if namespace in _CONTRIBUTION_ARGUMENT and name not in _NOT_COLLECTIVES:
            position = _CONTRIBUTION_ARGUMENT[namespace].get(name, 0)
            contribution = args[position] if len(args) > position else ()
            tensors = [
                leaf for leaf in pytree.tree_leaves(contribution) if isinstance(leaf, torch.Tensor)
            ]
            self.collectives.append(
                Collective(
                    kind=name.strip("_").replace("_", ""),
                    elements=sum(tensor.numel() for tensor in tensors),
                    bytes=sum(tensor.numel() * tensor.element_size() for tensor in tensors),
                )
            )
        return func(*args, **kwargs)

    @property
    def count(self) -> int:
        return len(self.collectives)

    @property
    def kinds(self) -> list[str]:
        return [collective.kind for collective in self.collectives]

    @property
    def elements(self) -> int:
        return sum(collective.elements for collective in self.collectives)

    @property
    def bytes(self) -> int:
        return sum(collective.bytes for collective in self.collectives)

    def describe(self) -> str:
        """The collectives in order, with this rank's contribution: 'allreduce 1 KiB, ...'."""
        return ", ".join(
            f"{collective.kind} {collective.bytes / 2**10:.3g} KiB"
            for collective in self.collectives
        )
