"""Processes: one, or a ``torchrun`` group with ``DistributedDataParallel``.

Under ``torchrun`` (``WORLD_SIZE`` > 1 in the environment) training joins the process group (gloo
on CPU, nccl on CUDA, one GPU per ``LOCAL_RANK``), or uses one the caller already set up, and
leaves it afterwards if it made it. The helpers here are no-ops in a single process."""

from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass

import torch

from trajfm.model.gpt import TrajGPT


@dataclass
class Group:
    """This process's place in data-parallel training (rank 0 of 1 without torchrun)."""

    rank: int = 0
    world: int = 1
    owns: bool = False  # this ``train`` call created the process group (and destroys it)

    @property
    def main(self) -> bool:
        return self.rank == 0

    @property
    def parallel(self) -> bool:
        return self.world > 1


def join_group(device: torch.device) -> tuple[Group, torch.device]:
    """The process group from torchrun's environment (or the caller's), and this rank's device."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        group = Group(dist.get_rank(), dist.get_world_size(), owns=False)
    elif int(os.environ.get("WORLD_SIZE", "1")) > 1:
        if not dist.is_available():
            raise RuntimeError("WORLD_SIZE > 1 but this torch build has no torch.distributed")
        group = None
    else:
        return Group(), device
    if device.type == "cuda" and device.index is None:
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
    if device.type == "cuda":
        torch.cuda.set_device(device)
    if group is None:  # env:// rendezvous: MASTER_ADDR, MASTER_PORT, RANK, WORLD_SIZE from torchrun
        dist.init_process_group(backend="nccl" if device.type == "cuda" else "gloo")
        group = Group(dist.get_rank(), dist.get_world_size(), owns=True)
    return group, device


@contextlib.contextmanager
def process_group(device: torch.device):
    """``join_group`` for the block: yields (group, device); destroys the group if it made it."""
    group, device = join_group(device)
    try:
        yield group, device
    finally:
        if group.owns:
            import torch.distributed as dist

            dist.destroy_process_group()


def global_rank() -> int:
    """Rank of this process (0 without torchrun), whether or not the group is still up."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        return dist.get_rank()
    return int(os.environ.get("RANK", "0"))


def barrier(group: Group) -> None:
    if group.parallel:
        import torch.distributed as dist

        dist.barrier()


def sum_over_ranks(values: list[float], group: Group, device: torch.device) -> list[float]:
    """Element-wise sum of small float64 vectors over all processes."""
    if not group.parallel:
        return values
    import torch.distributed as dist

    t = torch.tensor(values, dtype=torch.float64, device=device)
    dist.all_reduce(t)
    return t.tolist()


def gather_object(obj, group: Group) -> list:
    """Every rank's ``obj``, by rank (``[obj]`` in a single process)."""
    if not group.parallel:
        return [obj]
    import torch.distributed as dist

    out = [None] * group.world
    dist.all_gather_object(out, obj)
    return out


class LossModule(torch.nn.Module):
    """``model.loss`` as a module's ``forward``: what ``DistributedDataParallel`` wraps (it
    synchronises the gradients of whatever its ``forward`` computes). Holds no state of its own,
    so the checkpoints keep the plain model's keys."""

    def __init__(self, model: TrajGPT):
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor, mask: torch.Tensor, lonlat: torch.Tensor | None = None) -> torch.Tensor:
        return self.model.loss(x, mask, lonlat=lonlat)


def data_parallel(model: TrajGPT, group: Group, device: torch.device) -> torch.nn.Module:
    """The module a step calls: ``model.loss`` wrapped in ``DistributedDataParallel`` in a group
    (its constructor broadcasts rank 0's parameters and buffers; ``backward`` averages the
    gradients over ranks, bucketed and overlapped with the backward pass), the bare loss alone.

    ``find_unused_parameters``: a model may leave parameters unused (a cell head, infill tokens
    with objective "next"); DDP then marks them ready instead of waiting forever for them."""
    module = LossModule(model)
    if not group.parallel:
        return module
    from torch.nn.parallel import DistributedDataParallel

    return DistributedDataParallel(
        module,
        device_ids=[device.index] if device.type == "cuda" else None,
        find_unused_parameters=True,
    )


def no_sync(module):
    """DDP's ``no_sync`` (also through a ``torch.compile`` wrapper)."""
    inner = getattr(module, "_orig_mod", module)
    return inner.no_sync()
