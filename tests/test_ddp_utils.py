import torch
import torch.distributed as dist
from ddp_utils import run_distributed


def _allreduce_worker(rank, world_size, base):
    t = torch.tensor([float(rank + base)])
    dist.all_reduce(t)
    return t


def test_run_distributed_all_reduce():
    out = run_distributed(_allreduce_worker, world_size=2, base=1)
    # ranks hold 1 and 2 -> both see 3
    assert [float(t) for t in out] == [3.0, 3.0]
