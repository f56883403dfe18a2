"""Prompt + reply sequences as padded tensors, and the log-probabilities of the reply tokens.

Taught in ``06_rlhf.ipynb``: the reward model reads a whole sequence and scores its last token;
DPO sums the reply tokens' log-probabilities; PPO needs them token by token. All three start
from :func:`pad_sequences`, and the last two from :func:`token_logprobs`. Shape vocabulary:
B batch, T time (the longest prompt + reply of the batch), V vocabulary.

A reply's tokens are its ids and, if the model ended it, ``<|end|>`` (stopping is part of the
reply and is trained). Rows are right-padded; padding changes nothing before it (attention is
causal) and is masked out of every sum.

Left out: packing, left padding, and sequences longer than the model's window (the chat
template keeps prompts short and replies are at most 24 tokens).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn


def pad_sequences(
    prompts: Sequence[Sequence[int]], replies: Sequence[Sequence[int]], pad_id: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(ids, reply_mask)``, both (B, T): prompt then reply, right-padded with ``pad_id``;
    ``reply_mask`` is True on the reply's tokens only.

    >>> ids, mask = pad_sequences([[1, 2], [3]], [[7], [8, 9]], pad_id=0)
    >>> ids.tolist(), mask.int().tolist()
    ([[1, 2, 7], [3, 8, 9]], [[0, 0, 1], [0, 1, 1]])
    """
    if len(prompts) != len(replies) or not prompts:
        raise ValueError(
            f"got {len(prompts)} prompts and {len(replies)} replies; pass one reply per prompt, "
            "at least one"
        )
    T = max(len(p) + len(r) for p, r in zip(prompts, replies, strict=True))
    ids = torch.full((len(prompts), T), pad_id, dtype=torch.long)  # (B, T)
    mask = torch.zeros(len(prompts), T, dtype=torch.bool)  # (B, T)
    for b, (p, r) in enumerate(zip(prompts, replies, strict=True)):
        ids[b, : len(p) + len(r)] = torch.tensor([*p, *r], dtype=torch.long)
        mask[b, len(p) : len(p) + len(r)] = True
    return ids, mask


def token_logprobs(logits: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
    """``log p(ids[:, t] | ids[:, :t])`` for t ≥ 1: logits (B, T, V), ids (B, T) → (B, T - 1).

    Position ``t - 1`` of the logits predicts token ``t``.

    >>> lp = token_logprobs(torch.zeros(1, 2, 4), torch.tensor([[0, 3]]))  # uniform over 4
    >>> round(lp.item(), 4)
    -1.3863
    """
    logp = F.log_softmax(logits[:, :-1].float(), dim=-1)  # (B, T-1, V)
    return logp.gather(-1, ids[:, 1:].unsqueeze(-1)).squeeze(-1)  # (B, T-1)


def reply_logprobs(model: nn.Module, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Each reply token's log-probability under ``model``, zero elsewhere: (B, T - 1), aligned
    with ``mask[:, 1:]`` (the mask of the predicted tokens)."""
    logits, _ = model(ids)  # (B, T, V)
    return token_logprobs(logits, ids) * mask[:, 1:]  # (B, T-1)


def sequence_logprob(model: nn.Module, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """The reply's log-probability, summed over its tokens only (DPO's ``log π(y|x)``): (B,)."""
    return reply_logprobs(model, ids, mask).sum(dim=-1)
