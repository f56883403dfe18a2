"""Pretraining at a scale you choose, on one process or many: the command and its figures.

Taught at the end of ``04_pretraining.ipynb``. The base model's recipe
(:mod:`companion.base_model`) with every size a flag: blocks, heads, width, context, corpus
documents, steps, batch, device. The same command runs alone or under torchrun, where
:func:`companion.pretraining.train` spreads it over the processes (:mod:`companion.distributed`)::

    python -m companion.scale --layers 4 --width 128 --steps 300 --out runs/small
    torchrun --nproc_per_node=2 -m companion.scale --layers 4 --width 128 --steps 300 --out runs/ddp
    torchrun --nproc_per_node=8 -m companion.scale --layers 12 --heads 12 --width 768 \\
        --context 256 --documents 60000 --batch 32 --steps 5000 --device cuda --out runs/gpu

Under torchrun ``--batch`` is per process: the step's batch is ``batch × processes``, and so is
the tokens per step. It prints (rank 0) one JSON object: parameters, tokens trained, tokens per
parameter against the compute-optimal 20, FLOPs (:mod:`companion.compute`), training tokens per
second over all processes, MFU against the matmul peak measured on every process, the final
losses. Checkpoints go to ``--out`` (``step-NNNNNN`` folders; ``--resume`` one of them, with as
many processes).

Left out: reading another corpus (the course world generates as many documents as asked; a new
corpus needs a tokenizer trained for it, chapter 1), and choosing the learning rate for you.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from companion import compute, distributed
from companion.corpus import generate_corpus
from companion.data import (
    COURSE_CORPUS_SEED,
    COURSE_VOCAB_SIZE,
    encode_corpus,
    load_course_tokenizer,
    train_val_split,
)
from companion.model import GPTConfig, count_parameters
from companion.pretraining import compute_dtype, init_model, train
from companion.train_config import TrainConfig

COURSE_DOCUMENTS = 6000  # the course corpus: generate_corpus's default


def corpus_tokens(documents: int) -> torch.Tensor:
    """The course world's corpus of ``documents`` documents, tokenised (N,); the course corpus
    itself (cached) for 6000."""
    if documents == COURSE_DOCUMENTS:
        return encode_corpus()
    text = generate_corpus(COURSE_CORPUS_SEED, n_documents=documents)
    return encode_corpus(text, load_course_tokenizer())


def pretrain(
    model_config: GPTConfig,
    train_config: TrainConfig,
    documents: int = COURSE_DOCUMENTS,
    *,
    resume_from: str | Path | None = None,
    progress: bool = True,
) -> dict[str, Any]:
    """Train a fresh model of ``model_config`` with ``train_config``; returns its figures.

    The losses are averaged over the processes and the peak is summed over them; the times and
    tokens/s are this process's own (rank 0's are the ones printed).
    """
    train_tokens, val_tokens = train_val_split(corpus_tokens(documents), 0.1)
    ranks, device = distributed.setup(train_config.device)
    model = init_model(model_config, seed=train_config.seed, device=device)
    history = train(
        model, train_tokens, val_tokens, train_config, resume_from=resume_from, progress=progress
    )
    # this process's ceiling, with its threads, in the precision its products ran in
    peak_dtype = compute_dtype(device)
    peak = compute.measure_peak_flops(device, dtype=peak_dtype)
    # on the process group's device (NCCL reduces only CUDA tensors)
    peak_all = distributed.mean_over_ranks(torch.tensor(peak, device=device)).item()
    peak_all *= ranks.world_size
    tokens = history.tokens_seen[-1]  # over all processes
    tokens_per_second = tokens / history.seconds[-1]  # seconds: this process's training steps
    T = train_config.context_length
    return {
        "processes": ranks.world_size,
        "device": device.type,
        "parameters": count_parameters(model_config),
        "corpus_tokens": len(train_tokens),
        "tokens_trained": tokens,
        "tokens_per_parameter": round(compute.tokens_per_parameter(model_config, tokens), 2),
        "compute_optimal_tokens_per_parameter": compute.COMPUTE_OPTIMAL_TOKENS_PER_PARAMETER,
        "flops_per_token": compute.flops_per_token(model_config, T),
        "flops": compute.training_flops(model_config, tokens, T),
        "train_seconds": round(history.seconds[-1], 2),
        "tokens_per_second": round(tokens_per_second, 1),
        "peak_flops_per_second": peak_all,
        "peak_dtype": str(peak_dtype).removeprefix("torch."),
        "mfu": round(compute.mfu(model_config, tokens_per_second, peak_all, T), 4),
        "train_loss": history.train_loss[-1],
        "val_loss": history.val_loss[-1],
    }


def main(argv: Sequence[str] | None = None) -> None:
    """``[torchrun --nproc_per_node=N] -m companion.scale [sizes] --out DIR`` (module docstring)."""
    p = argparse.ArgumentParser(
        prog="python -m companion.scale", description=__doc__.split("\n")[0]
    )
    p.add_argument("--layers", type=int, default=4, help="blocks (L)")
    p.add_argument("--heads", type=int, default=4, help="attention heads (H)")
    p.add_argument("--width", type=int, default=128, help="channels (C), a multiple of heads")
    p.add_argument("--context", type=int, default=64, help="tokens per window (T)")
    p.add_argument("--documents", type=int, default=COURSE_DOCUMENTS, help="corpus documents")
    p.add_argument("--steps", type=int, default=1200, help="optimiser steps")
    p.add_argument("--batch", type=int, default=32, help="windows per step, per process")
    p.add_argument("--accumulation", type=int, default=1, help="micro-batches per step")
    p.add_argument("--lr", type=float, default=3e-3, help="peak learning rate")
    p.add_argument("--warmup", type=int, default=None, help="warm-up steps (default steps/12)")
    p.add_argument("--eval-interval", type=int, default=None, help="default steps/6")
    p.add_argument("--checkpoint-interval", type=int, default=None, help="default: at the end")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="cpu", help="cpu or cuda (under torchrun: gloo or NCCL)")
    p.add_argument("--threads", type=int, default=None, help="torch threads per process")
    p.add_argument("--out", required=True, help="folder for the checkpoints")
    p.add_argument("--resume", type=Path, default=None, help="a step-NNNNNN folder to resume")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    args = p.parse_args(argv)
    if args.threads is not None and args.threads < 1:
        p.error(f"--threads {args.threads}: give a positive number of threads per process")
    if not args.out.strip():
        p.error("--out is empty: name a folder for the checkpoints, e.g. --out runs/small")
    args.out = Path(args.out)
    if args.resume is not None and not args.resume.is_dir():
        p.error(
            f"--resume {args.resume}: no such checkpoint folder (a step-NNNNNN folder in --out)"
        )
    if args.resume is None and any(args.out.glob("step-*")):
        p.error(
            f"--out {args.out} already holds checkpoints of a run; --resume one of them, or choose "
            "a new --out (a new run would replace them)"
        )
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    model_config = GPTConfig(
        vocab_size=COURSE_VOCAB_SIZE, context_length=args.context, n_layer=args.layers,
        n_head=args.heads, d_model=args.width,
    )  # fmt: skip
    warmup = args.warmup  # default: about a twelfth of the run, leaving at least one step
    if warmup is None:
        warmup = min(max(1, args.steps // 12), max(0, args.steps - 1))
    eval_interval = max(1, args.steps // 6) if args.eval_interval is None else args.eval_interval
    train_config = TrainConfig(
        steps=args.steps, batch_size=args.batch, context_length=args.context,
        grad_accumulation=args.accumulation, learning_rate=args.lr,
        min_learning_rate=args.lr / 10,
        warmup_steps=warmup, eval_interval=eval_interval, eval_batches=20,
        checkpoint_interval=args.checkpoint_interval, checkpoint_dir=str(args.out),
        seed=args.seed, device=args.device,
    )  # fmt: skip
    figures = pretrain(
        model_config, train_config, args.documents, resume_from=args.resume,
        progress=not args.quiet,
    )  # fmt: skip
    ranks = distributed.ranks_from_environment()
    if ranks.is_main:
        print(json.dumps(figures, indent=1), flush=True)
    if ranks.distributed:
        torch.distributed.destroy_process_group()


if __name__ == "__main__":
    main()
