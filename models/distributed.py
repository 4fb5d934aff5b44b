"""Data-parallel training with torch.distributed: the one place models/ asks whether it runs as
one worker of several.

The training loops, tree learning and DR's E-step are written once; inside a process group
(``torchrun``, or ``grove train --nproc N``, which starts the workers with torch's elastic
launcher, `grove.flows.distributed_train`):

* `epoch_order` is the distributed sampler: every worker draws the same permutation of the
  samples for an epoch (seeded by the seed and the epoch), and `shard` keeps this worker's part
  of each global batch (``idx[rank::world]``). The global batch keeps its size, so N workers
  make the same optimiser steps as one, each on 1/N of the samples;
* `worker_generator` seeds each worker's own draws (negatives, sampled softmax) apart;
* `grove.models.optim.EmbeddingAdam.step` first averages the gradients over the workers
  (`average_gradients`: the dense ones in one flat all-reduce, the sparse gradients of the
  embedding tables gathered as sparse rows, never densified);
* `mine` shares out the chunks of tree learning (JTM, DeFoRec) and of DR's E-step;
  `all_reduce_sum_` / `gather` put their results together on every worker, which then all take
  the same (deterministic) decisions.

With one worker, or outside a process group, every function is the identity: the same seed
gives the same weights bit for bit as a plain run. gloo (CPU) and NCCL (CUDA) both work: no
sparse collective is used, and collectives run on the backend's device (`_comm_device`).
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Sequence
from contextlib import contextmanager

import numpy as np
import torch
import torch.distributed as dist


def world() -> tuple[int, int]:
    """(rank, world size) of this process; (0, 1) outside a process group."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def is_main() -> bool:
    """Whether this process is rank 0 (the one that writes versions and shows progress)."""
    return world()[0] == 0


def launched() -> bool:
    """Whether this process was started as one worker of several (torchrun's environment)."""
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


@contextmanager
def process_group(device: torch.device) -> Iterator[None]:
    """Join the process group described by torchrun's environment (RANK, WORLD_SIZE,
    MASTER_ADDR, MASTER_PORT, LOCAL_RANK) for the duration of the block: NCCL when training on
    CUDA (each worker on GPU LOCAL_RANK), gloo on the CPU. Outside torchrun: nothing."""
    if not launched() or dist.is_initialized():
        yield
        return
    if device.type == "cuda":
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
    dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    try:
        yield
    finally:
        dist.destroy_process_group()


def barrier() -> None:
    """Wait for every worker (no-op with one)."""
    if world()[1] > 1:
        dist.barrier()


def epoch_order(n: int, seed: int, epoch: int, device: torch.device | str) -> torch.Tensor:
    """(n,) long: epoch ``epoch``'s order of the samples, the same on every worker and device
    (drawn on the CPU from a generator seeded by (seed, epoch))."""
    state = np.random.SeedSequence([int(seed) & 0xFFFFFFFF, int(epoch)]).generate_state(2)
    gen = torch.Generator().manual_seed(int(state[0]) << 32 | int(state[1]))
    return torch.randperm(n, generator=gen).to(device)


def worker_generator(seed: int, device: torch.device | str) -> torch.Generator:
    """A generator for this worker's own random draws on ``device`` (negatives, sampled
    softmax): ``seed`` itself on rank 0 (so one worker draws as a plain run), seeds apart on
    the others."""
    rank = world()[0]
    s = int(seed) if rank == 0 else int(np.random.SeedSequence([int(seed) & 0xFFFFFFFF, rank]).generate_state(1)[0])
    return torch.Generator(device=device).manual_seed(s)


def shard(idx: torch.Tensor) -> torch.Tensor:
    """This worker's part of a global batch of sample indices. A batch smaller than the world
    (the last one of an epoch) is given whole to every worker, so no worker steps on nothing
    (the averaged gradient is then that batch's)."""
    rank, size = world()
    return idx if size == 1 or idx.numel() < size else idx[rank::size]


def batches(order: torch.Tensor, batch_size: int) -> Iterator[torch.Tensor]:
    """This worker's part (`shard`) of each global batch of ``order``, in order."""
    for lo in range(0, int(order.shape[0]), batch_size):
        yield shard(order[lo : lo + batch_size])


def mine(i: int) -> bool:
    """Whether chunk ``i`` of a shared loop is this worker's (round robin)."""
    rank, size = world()
    return size == 1 or i % size == rank


def _comm_device(t: torch.Tensor) -> torch.device:
    """Where a collective on ``t`` must run: CUDA for NCCL, the CPU for gloo."""
    if dist.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def all_reduce_sum_(t: torch.Tensor) -> torch.Tensor:
    """Sum ``t`` over the workers, in place (identity with one worker)."""
    if world()[1] == 1:
        return t
    dev = _comm_device(t)
    buf = t if t.device == dev else t.to(dev)
    dist.all_reduce(buf, op=dist.ReduceOp.SUM)
    if buf is not t:
        t.copy_(buf)
    return t


def mean_over_workers(value: float) -> float:
    """The mean of a per-worker number (a loss) over the workers."""
    _, size = world()
    if size == 1:
        return value
    t = torch.tensor([float(value)], dtype=torch.float64)
    return float(all_reduce_sum_(t)[0]) / size


def gather(t: torch.Tensor) -> torch.Tensor:
    """The concatenation (dim 0) of every worker's ``t``, in rank order, on ``t``'s device;
    shapes may differ in dim 0 (padded for the collective, cut after)."""
    _, size = world()
    if size == 1:
        return t
    dev = _comm_device(t)
    n = torch.tensor([t.shape[0]], dtype=torch.int64, device=dev)
    sizes = [torch.zeros_like(n) for _ in range(size)]
    dist.all_gather(sizes, n)
    counts = [int(s.item()) for s in sizes]
    padded = torch.zeros((max(counts), *t.shape[1:]), dtype=t.dtype, device=dev)
    padded[: t.shape[0]] = t.to(dev)
    parts = [torch.empty_like(padded) for _ in range(size)]
    dist.all_gather(parts, padded)
    return torch.cat([p[:c] for p, c in zip(parts, counts)]).to(t.device)


def average_gradients(dense: Sequence[torch.Tensor], tables: Sequence[torch.Tensor]) -> None:
    """Replace every gradient by its mean over the workers (no-op with one).

    ``dense``: parameters with dense gradients, which travel in one flat all-reduce;
    ``tables``: embedding tables with sparse gradients, whose rows and values are gathered from
    every worker and summed, still sparse. Frozen parameters (``requires_grad`` False) are left
    out; a trainable one without a gradient on this worker joins with zeros (every worker must
    take part in every collective, in the same order)."""
    _, size = world()
    if size == 1:
        return
    dense = [p for p in dense if p.requires_grad]
    if dense:
        flat = torch.cat(
            [
                torch.zeros(p.numel(), dtype=p.dtype, device=p.device) if p.grad is None else p.grad.reshape(-1)
                for p in dense
            ]
        )
        all_reduce_sum_(flat).div_(size)
        offset = 0
        for p in dense:
            k = p.numel()
            p.grad = flat[offset : offset + k].view_as(p).clone()
            offset += k
    for p in tables:
        if not p.requires_grad:
            continue
        if p.grad is None:
            g = torch.sparse_coo_tensor(
                torch.zeros((1, 0), dtype=torch.int64, device=p.device),
                torch.zeros((0, *p.shape[1:]), dtype=p.dtype, device=p.device),
                p.shape,
            )
        else:
            g = p.grad.coalesce()
        rows, values = gather(g.indices()[0]), gather(g.values())
        p.grad = torch.sparse_coo_tensor(rows[None], values / size, p.shape, check_invariants=False).coalesce()
