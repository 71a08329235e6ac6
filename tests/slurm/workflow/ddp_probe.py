"""One torchrun worker: join the process group (gloo; NCCL on real GPUs) and report.

Usage: python -m torch.distributed.run --nproc-per-node=N ddp_probe.py OUT
Rank 0 writes OUT with one line per rank: rank, world size, local rank and the device
that rank would use (its entry of CUDA_VISIBLE_DEVICES).
"""

import os
import sys

import torch
import torch.distributed as dist


def main(out: str) -> int:
    dist.init_process_group(backend="gloo")
    rank, world = dist.get_rank(), dist.get_world_size()
    local_rank = int(os.environ["LOCAL_RANK"])
    visible = [d for d in os.environ.get("CUDA_VISIBLE_DEVICES", "").split(",") if d]
    device = visible[local_rank] if local_rank < len(visible) else "none"
    line = f"rank={rank} world_size={world} local_rank={local_rank} device={device}"
    lines: list[str] = [""] * world
    dist.all_gather_object(lines, line)
    total = torch.tensor([1.0])
    dist.all_reduce(total)  # every rank takes part in a collective
    if rank == 0:
        with open(out, "w") as fh:
            fh.write("\n".join(lines) + f"\nall_reduce={int(total.item())}\n")
    dist.destroy_process_group()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
