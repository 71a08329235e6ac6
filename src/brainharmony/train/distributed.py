"""Process-group setup for ``torchrun`` (DDP) and the few collectives the loop needs.

``torchrun --nproc-per-node N -m brainharmony train ...`` sets ``WORLD_SIZE``, ``RANK``,
``LOCAL_RANK``, ``MASTER_ADDR`` and ``MASTER_PORT``; with ``WORLD_SIZE > 1``
:func:`setup` joins the process group (NCCL when CUDA is available, gloo otherwise) and
picks ``cuda:LOCAL_RANK`` or the CPU. With ``WORLD_SIZE`` unset or 1 nothing is
initialised and the collectives below are no-ops.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist

logger = logging.getLogger(__name__)

__all__ = ["DistContext", "all_gather_objects", "all_reduce_mean", "setup", "teardown"]


@dataclass(frozen=True)
class DistContext:
    """Where this process sits in the job.

    Attributes
    ----------
    rank, world_size, local_rank : int
    device : torch.device
    owns_group : bool
        True when :func:`setup` created the process group (and :func:`teardown` ends it).
    """

    rank: int
    world_size: int
    local_rank: int
    device: torch.device
    owns_group: bool = False

    @property
    def is_main(self) -> bool:
        """True on rank 0 (the only rank that writes files)."""
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        """True when gradients are synchronised across processes."""
        return self.world_size > 1


def _env_int(name: str, default: int) -> int:
    value = os.environ.get(name, "").strip()
    if not value:
        return default
    try:
        return int(value)
    except ValueError:
        raise ValueError(f"environment variable {name}={value!r} is not an integer") from None


def setup(device: str | None = None) -> DistContext:
    """Read the ``torchrun`` environment and join the process group when needed.

    Parameters
    ----------
    device : str, optional
        ``"cpu"`` or ``"cuda"`` to force a device type; default: CUDA when available.
    """
    world = _env_int("WORLD_SIZE", 1)
    rank = _env_int("RANK", 0)
    local = _env_int("LOCAL_RANK", rank)
    use_cuda = torch.cuda.is_available() if device is None else device == "cuda"
    if use_cuda and not torch.cuda.is_available():
        raise ValueError("device 'cuda' requested but CUDA is not available")
    dev = torch.device(f"cuda:{local}") if use_cuda else torch.device("cpu")
    if use_cuda:
        torch.cuda.set_device(dev)
    owns = False
    if world > 1:
        if dist.is_initialized():
            if dist.get_world_size() != world:
                raise RuntimeError(
                    f"process group has {dist.get_world_size()} ranks; WORLD_SIZE={world}"
                )
        else:
            backend = "nccl" if use_cuda else "gloo"
            dist.init_process_group(backend=backend, rank=rank, world_size=world)
            owns = True
        logger.info("rank %d of %d on %s (%s)", rank, world, dev, dist.get_backend())
    return DistContext(rank=rank, world_size=world, local_rank=local, device=dev, owns_group=owns)


def teardown(ctx: DistContext) -> None:
    """End the process group if :func:`setup` created it."""
    if ctx.owns_group and dist.is_initialized():
        dist.destroy_process_group()


def all_reduce_mean(values: torch.Tensor, ctx: DistContext) -> torch.Tensor:
    """Mean of ``values`` over ranks (returns ``values`` itself on one process)."""
    if not ctx.distributed:
        return values
    out = values.detach().clone()
    dist.all_reduce(out, op=dist.ReduceOp.SUM)
    return out / ctx.world_size


def all_gather_objects(obj: Any, ctx: DistContext) -> list[Any]:
    """Every rank's ``obj``, by rank (``[obj]`` on one process)."""
    if not ctx.distributed:
        return [obj]
    gathered: list[Any] = [None] * ctx.world_size
    dist.all_gather_object(gathered, obj)
    return gathered


def barrier(ctx: DistContext) -> None:
    """Wait for every rank (no-op on one process)."""
    if ctx.distributed:
        dist.barrier()
