"""Text generation: run the model, pick the next token, append it, repeat.

Taught in ``03_transformer.ipynb`` (the model as a next-token distribution, and the context
window: the model sees only the tokens it is given). Shape vocabulary: B batch, T time, V vocab.

Stop tokens (``stop_tokens=``) end a reply when the model writes its end-of-turn token; the
SFT chapter (``05_sft.ipynb``) adds them for :func:`companion.chat.chat`.

Left out on purpose: the KV cache (every step re-reads the whole cropped context; the inference
chapter adds the cache and tests it equal to this), top-p sampling, repetition penalties and
streaming.
"""

from __future__ import annotations

from collections.abc import Collection

import torch
from torch import nn


def sample_next(
    logits: torch.Tensor,
    *,
    temperature: float = 1.0,
    top_k: int | None = None,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Pick one token id per row from last-position logits (B, V); returns (B, 1).

    ``temperature=0`` takes the most likely token (greedy); otherwise the logits are divided by
    ``temperature`` and, if ``top_k`` is given, all but the ``top_k`` largest are ruled out,
    before sampling from the softmax with ``generator``.

    >>> sample_next(torch.tensor([[0.1, 3.0, -1.0]]), temperature=0)
    tensor([[1]])
    >>> sample_next(torch.tensor([[0.1, 3.0, -1.0]]), top_k=1)  # only one candidate is left
    tensor([[1]])
    """
    if logits.dim() != 2:
        raise ValueError(
            f"logits must be (B, V), got shape {tuple(logits.shape)}; use logits[:, -1]"
        )
    V = logits.shape[-1]
    if not temperature >= 0:
        raise ValueError(f"temperature={temperature} must be >= 0 (0 means greedy)")
    if top_k is not None and not 1 <= top_k <= V:
        raise ValueError(f"top_k={top_k} must be between 1 and the vocabulary size {V}, or None")
    if temperature == 0:
        return logits.argmax(dim=-1, keepdim=True)  # (B, 1)
    logits = logits / temperature  # (B, V)
    if top_k is not None:
        kth = torch.topk(logits, top_k, dim=-1).values[:, -1:]  # (B, 1): the k-th largest
        logits = logits.masked_fill(logits < kth, float("-inf"))  # (B, V)
    probs = logits.softmax(dim=-1)  # (B, V)
    return torch.multinomial(probs, num_samples=1, generator=generator)  # (B, 1)


@torch.no_grad()
def generate(
    model: nn.Module,
    idx: torch.Tensor,
    max_new_tokens: int,
    *,
    temperature: float = 1.0,
    top_k: int | None = None,
    generator: torch.Generator | None = None,
    stop_tokens: Collection[int] = (),
) -> torch.Tensor:
    """Extend ``idx`` (B, T) by ``max_new_tokens`` sampled tokens; returns (B, T + max_new_tokens)
    (fewer new columns only when ``stop_tokens`` stopped every row).

    At each step the model sees only the last ``model.config.context_length`` tokens: anything
    earlier is forgotten. The model is put in eval mode (no dropout) while generating and put
    back in the mode it was in afterwards. ``generator`` makes sampling reproducible.

    ``stop_tokens``: ids that end a row (kept in the output, e.g. ``<|end|>``). Once a row has
    written one, its later positions repeat that id, and generation ends early, with fewer than
    ``max_new_tokens`` new columns, as soon as every row has stopped.

    >>> from companion.model import GPT, GPTConfig
    >>> _ = torch.manual_seed(0)
    >>> model = GPT(GPTConfig(vocab_size=5, context_length=4, n_layer=1, n_head=1, d_model=8))
    >>> generate(model, torch.tensor([[1, 2]]), 3, temperature=0).shape
    torch.Size([1, 5])
    """
    if not isinstance(max_new_tokens, int) or max_new_tokens < 0:
        raise ValueError(f"max_new_tokens={max_new_tokens!r} must be an int >= 0")
    if idx.dim() != 2:
        raise ValueError(
            f"idx must be (B, T), got shape {tuple(idx.shape)}; use idx[None] for one sequence"
        )
    V = model.config.vocab_size
    if isinstance(stop_tokens, str) or not all(
        isinstance(s, int) and not isinstance(s, bool) and 0 <= s < V for s in stop_tokens
    ):
        raise ValueError(
            f"stop_tokens={stop_tokens!r} must be token ids between 0 and {V - 1}, "
            "e.g. [tokenizer.special_tokens['<|end|>']]"
        )
    stops = torch.tensor(sorted(set(stop_tokens)), dtype=idx.dtype, device=idx.device)  # (S,)
    stopped = torch.zeros(idx.shape[0], 1, dtype=torch.bool, device=idx.device)  # (B, 1)
    context_length = model.config.context_length
    was_training = model.training
    model.eval()
    try:
        for _ in range(max_new_tokens):
            context = idx[:, -context_length:]  # (B, ≤ context_length)
            logits, _ = model(context)  # (B, T, V)
            next_id = sample_next(
                logits[:, -1, :], temperature=temperature, top_k=top_k, generator=generator
            )  # (B, 1)
            if len(stops):
                next_id = torch.where(stopped, idx[:, -1:], next_id)  # a stopped row repeats
                stopped |= torch.isin(next_id, stops)  # (B, 1)
            idx = torch.cat([idx, next_id], dim=1)  # (B, T + 1)
            if len(stops) and bool(stopped.all()):
                break
    finally:
        model.train(was_training)
    return idx
