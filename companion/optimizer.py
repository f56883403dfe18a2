"""The optimiser and its learning-rate schedule: AdamW with decay groups, warm-up and cosine.

Taught in ``04_pretraining.ipynb``; :func:`companion.pretraining.train` builds the optimiser
once per run and asks the schedule for the learning rate at every step. Weight decay applies to
the tensors with two or more dimensions (linear weights and the embeddings, as in nanoGPT), never
to biases or LayerNorm scales: shrinking those towards zero only fights the normalisation.

Left out: other optimisers (SGD, Lion, Muon), learning-rate finders, per-layer learning rates.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from companion.train_config import TrainConfig


def learning_rate_at(step: int, config: TrainConfig) -> float:
    """The learning rate of optimiser step ``step`` (0-based): linear warm-up, then cosine decay.

    Warm-up: ``lr · (step + 1) / warmup_steps`` for ``step < warmup_steps``. Then the cosine
    ``min_lr + (lr - min_lr) · ½(1 + cos(π · p))`` with ``p`` going from 0 at ``warmup_steps``
    to 1 at ``decay_steps`` (default ``steps``); ``min_lr`` after that.

    >>> c = TrainConfig(steps=110, learning_rate=1.0, min_learning_rate=0.1, warmup_steps=10)
    >>> [round(learning_rate_at(s, c), 3) for s in (0, 4, 9, 10, 60, 110)]
    [0.1, 0.5, 1.0, 1.0, 0.55, 0.1]
    """
    lr, min_lr, warmup = config.learning_rate, config.min_learning_rate, config.warmup_steps
    if step < warmup:
        return lr * (step + 1) / warmup
    decay_steps = config.steps if config.decay_steps is None else config.decay_steps
    if step >= decay_steps:
        return min_lr
    progress = (step - warmup) / (decay_steps - warmup)  # 0 → 1
    return min_lr + (lr - min_lr) * 0.5 * (1.0 + math.cos(math.pi * progress))


def make_optimizer(model: nn.Module, config: TrainConfig) -> torch.optim.AdamW:
    """AdamW with two groups: ≥2-D tensors decay by ``weight_decay``, the rest (biases, norms)
    do not. Tied tensors are counted once. Uses the fused kernel where this torch has one.

    >>> from companion.model import GPT, GPTConfig
    >>> opt = make_optimizer(GPT(GPTConfig(11, 8, 1, 1, 4)), TrainConfig(steps=10, warmup_steps=1))
    >>> [len(g["params"]) for g in opt.param_groups]  # 6 weight matrices | 4 biases, 3 LayerNorms
    [6, 10]
    """
    params = list(dict.fromkeys(p for p in model.parameters() if p.requires_grad))
    decay = [p for p in params if p.dim() >= 2]
    no_decay = [p for p in params if p.dim() < 2]
    groups = [
        {"params": decay, "weight_decay": config.weight_decay},
        {"params": no_decay, "weight_decay": 0.0},
    ]
    kwargs = {"lr": config.learning_rate, "betas": config.betas}
    try:
        return torch.optim.AdamW(groups, fused=True, **kwargs)
    except (RuntimeError, ValueError):  # no fused kernel for this device or torch version
        return torch.optim.AdamW(groups, **kwargs)
