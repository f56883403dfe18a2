"""Data parallelism: the same training loop on several processes, through PyTorch's DDP.

Taught at the end of ``04_pretraining.ipynb``. ``torchrun --nproc_per_node=N`` starts N copies of
a script and tells each its place in the environment: ``RANK`` (0 … N-1 over all machines),
``LOCAL_RANK`` (its GPU on this machine), ``WORLD_SIZE`` (N), and where rank 0 listens. Every
process (a *rank*) holds the whole model and draws its own batches; after each backward,
:class:`torch.nn.parallel.DistributedDataParallel` (DDP) averages the gradients over the ranks
with an *all-reduce*, so every rank takes the same optimiser step, as one process would with a
batch N times larger. :func:`companion.pretraining.train` calls :func:`setup` and does the rest
itself; this module holds the few pieces it needs:

1. :func:`setup`: read the environment; under torchrun, start the process group (gloo on the
   CPU, NCCL on CUDA) with a timeout, so a rank that dies ends the run instead of hanging it;
2. :func:`rank_seed`: each rank's batch sampler seed, derived from the run's seed and the rank;
3. :func:`mean_over_ranks`: a logged number averaged over the ranks (one all-reduce).

``python -m torch.distributed.run --nproc_per_node=2 -m companion.distributed`` runs
:func:`main`: the gradients of 2 ranks (batch B each) against one process's batch of 2B.

Left out: writing any parallelism ourselves, FSDP and tensor parallelism (the notebook says what
they change), several machines (torchrun's ``--nnodes``; nothing here assumes one machine).
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from datetime import timedelta

import torch
import torch.distributed as dist

from companion.environment import resolve_device

DEFAULT_TIMEOUT = timedelta(minutes=5)  # a collective waits this long for a missing rank


@dataclass(frozen=True)
class Ranks:
    """Where this process stands: one process is ``Ranks(0, 1, 0)``."""

    rank: int  # this process, 0 … world_size - 1
    world_size: int  # processes in the run
    local_rank: int  # this process on its machine: its GPU under CUDA

    @property
    def is_main(self) -> bool:
        """Rank 0 writes the checkpoints and shows the progress bar."""
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


def ranks_from_environment() -> Ranks:
    """The ``RANK``, ``WORLD_SIZE`` and ``LOCAL_RANK`` torchrun sets; ``Ranks(0, 1, 0)`` without.

    >>> ranks_from_environment() if "RANK" not in os.environ else Ranks(0, 1, 0)
    Ranks(rank=0, world_size=1, local_rank=0)
    """
    names = ("RANK", "WORLD_SIZE", "LOCAL_RANK")
    given = [n for n in names if n in os.environ]
    grouped = dist.is_available() and dist.is_initialized()
    if not grouped and given and len(given) < len(names):  # a stray variable, not torchrun
        missing = [n for n in names if n not in os.environ]
        raise ValueError(
            f"{', '.join(given)} set but {', '.join(missing)} not; torchrun sets all three: start "
            "the script with torchrun, or unset them to train in one process"
        )
    try:
        rank, world, local = (
            int(os.environ.get(n, d)) for n, d in zip(names, (0, 1, 0), strict=True)
        )
        if grouped:  # a group the caller started: its rank and size count
            rank, world = dist.get_rank(), dist.get_world_size()
            local = int(os.environ.get("LOCAL_RANK", rank))
    except ValueError as err:
        raise ValueError(
            f"RANK/WORLD_SIZE/LOCAL_RANK must be integers ({err}); start the script with "
            "torchrun, which sets them, or unset them to train in one process"
        ) from err
    if world < 1:
        raise ValueError(f"WORLD_SIZE={world} must be >= 1 (the number of processes)")
    if not 0 <= rank < world:
        raise ValueError(f"RANK={rank} must be in [0, WORLD_SIZE={world}); start with torchrun")
    if not 0 <= local <= rank:
        raise ValueError(
            f"LOCAL_RANK={local} must be in [0, RANK={rank}] (its index on this machine)"
        )
    return Ranks(rank, world, local)


def setup(device: str | torch.device | None, timeout: timedelta = DEFAULT_TIMEOUT):
    """This process's ``(Ranks, device)``; starts the process group if torchrun launched us.

    One process (no ``WORLD_SIZE`` > 1 in the environment, no group started): nothing happens and
    ``device`` is resolved as usual. Under torchrun: gloo for the CPU, NCCL for CUDA, where rank r
    uses GPU ``LOCAL_RANK``. A group the caller started already (with its own timeout) is used.
    """
    ranks = ranks_from_environment()
    device = resolve_device(device)
    if not ranks.distributed:
        return ranks, device
    if device.type == "cuda":
        if ranks.local_rank >= torch.cuda.device_count():
            raise ValueError(
                f"LOCAL_RANK={ranks.local_rank} but this machine has "
                f"{torch.cuda.device_count()} GPU(s); use --nproc_per_node <= that number"
            )
        device = torch.device("cuda", ranks.local_rank)
        torch.cuda.set_device(device)
    elif device.type != "cpu":
        raise ValueError(f"DDP runs on 'cpu' (gloo) or 'cuda' (NCCL), not {device.type!r}")
    if not dist.is_initialized():
        backend = "nccl" if device.type == "cuda" else "gloo"
        dist.init_process_group(backend, timeout=timeout)
    return ranks, device


def rank_seed(seed: int, rank: int) -> int:
    """The batch sampler seed of ``rank``: rank 0 keeps ``seed`` (so one process draws what it
    always drew), rank r > 0 a number hashed from ``(seed, r)`` (not ``seed + r``: the run uses
    ``seed + 1`` and ``seed + 2`` for other streams).

    >>> rank_seed(0, 0), rank_seed(0, 1) == rank_seed(1, 1)
    (0, False)
    """
    if rank == 0:
        return seed
    digest = hashlib.sha256(f"companion batches seed={seed} rank={rank}".encode()).digest()
    return int.from_bytes(digest[:7], "little")  # < 2**56: any torch generator takes it


def mean_over_ranks(value: torch.Tensor) -> torch.Tensor:
    """``value`` (a tensor on this rank's device) averaged over the ranks; itself alone."""
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return value
    total = value.detach().clone()
    dist.all_reduce(total, op=dist.ReduceOp.SUM)
    return total / dist.get_world_size()


def gather_objects(value):
    """Every rank's ``value`` (plain Python data), as a list in rank order; ``[value]`` alone."""
    if not (dist.is_available() and dist.is_initialized()):
        return [value]
    out = [None] * dist.get_world_size()
    dist.all_gather_object(out, value)
    return out


def main() -> None:
    """Gradients of 2 ranks with batch B each, averaged by DDP, against one batch of 2B.

    Run by ``python -m torch.distributed.run --nproc_per_node=2 -m companion.distributed``:
    every rank builds the same tiny GPT (seed 0) and the same 2B windows (of random tokens: the
    arithmetic, not the text, is the point), keeps its B of them,
    and takes one backward through DDP; rank 0 also takes the backward of all 2B in a plain copy
    of the model and prints the largest difference between the two gradients.
    """
    from torch.nn.parallel import DistributedDataParallel

    from companion.data import get_batch
    from companion.environment import make_generator
    from companion.model import GPT, GPTConfig

    torch.set_num_threads(1)
    ranks, _ = setup("cpu", timeout=timedelta(seconds=60))
    config = GPTConfig(vocab_size=768, context_length=32, n_layer=2, n_head=2, d_model=64)
    B, T = 4, 32
    torch.manual_seed(0)
    model = GPT(config)
    tokens = torch.randint(0, config.vocab_size, (10_000,), generator=make_generator(1))  # (N,)
    big_x, big_y = get_batch(tokens, B * ranks.world_size, T, generator=make_generator(0))
    mine = slice(ranks.rank * B, (ranks.rank + 1) * B)  # this rank's B windows of the 2B
    ddp = DistributedDataParallel(model)
    _, loss = ddp(big_x[mine], big_y[mine])  # (B, T) each
    loss.backward()  # DDP's hooks all-reduce the gradients: now their mean over the ranks
    print(f"rank {ranks.rank}: loss on my {B} windows = {loss.item():.4f}", flush=True)
    dist.barrier()
    if ranks.is_main:
        torch.manual_seed(0)
        single = GPT(config)
        _, big_loss = single(big_x, big_y)  # (2B, T): one process, the whole batch
        big_loss.backward()
        diff = max(
            (a.grad - b.grad).abs().max().item()
            for a, b in zip(model.parameters(), single.parameters(), strict=True)
        )
        largest = max(p.grad.abs().max().item() for p in single.parameters())
        print(f"one process, {B * ranks.world_size} windows: loss = {big_loss.item():.4f}")
        print(f"largest gradient entry {largest:.2e}; largest DDP difference {diff:.1e}")
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
