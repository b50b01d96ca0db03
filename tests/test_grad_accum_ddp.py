"""--grad-accum under real DistributedDataParallel (2 CPU processes, gloo): the first micro-batch's
backward does not all-reduce, the step's last does, and the ranks end with equal weights."""
from types import SimpleNamespace

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from utils.training import make_train_step


def _rank(rank, folder):
    dist.init_process_group("gloo", init_method=f"file://{folder}/init", rank=rank, world_size=2)
    torch.manual_seed(0)  # same initial weights on both ranks
    model = torch.nn.Linear(4, 1)
    ddp = torch.nn.parallel.DistributedDataParallel(model)
    args = SimpleNamespace(lr=1e-2, weight_decay=0.0, warmup=1, steps=4, amp="none", grad_clip=0.0, ema=0.0,
                           grad_accum=2)
    train_step = make_train_step(ddp, args, torch.device("cpu"))
    data = torch.arange(8.0).reshape(2, 4) + 10 * rank  # different micro-batches per rank
    train_step(ddp(data[:1]).sum())
    first_grad = model.weight.grad.clone()  # rank-local if the all-reduce was skipped
    train_step(ddp(data[1:]).sum())
    torch.save((first_grad, model.weight.detach().clone()), f"{folder}/rank{rank}.pt")
    dist.destroy_process_group()


def test_first_micro_batch_skips_the_all_reduce_and_the_step_syncs(tmp_path):
    mp.spawn(_rank, args=(str(tmp_path),), nprocs=2, join=True)
    (grad0, weight0), (grad1, weight1) = (torch.load(tmp_path / f"rank{r}.pt") for r in (0, 1))
    assert not torch.allclose(grad0, grad1)  # each rank kept its own micro-batch's gradient
    assert torch.equal(weight0, weight1)     # the step's gradient was averaged over both ranks
