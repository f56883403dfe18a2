"""The KV cache: every layer's keys and values for the tokens already seen, kept for the next step.

Taught in ``07_inference.ipynb`` (section 4). Shape vocabulary: B batch, H heads, S positions
stored so far, T new positions, D head size, C = H·D channels.

Without a cache, generating token n runs the model over all n tokens again, although the keys
and values of the first n - 1 tokens are the ones computed at the previous step: in a causal
model a token's keys and values depend only on it and the tokens before it. The cache keeps them:

1. **prefill**: the prompt runs through the model once; each attention layer stores its keys and
   values (B, H, T, D) in its :class:`LayerCache`;
2. **decode**: each new token runs alone (T = 1) through every layer; the layer appends its one
   new key and value and attends over all S stored ones.

The buffers are allocated once, ``max_length`` positions long, and filled from the left, so a
step copies one position per layer instead of re-concatenating the past. Memory: two tensors per
layer of ``max_length · C`` numbers each, i.e. :func:`bytes_per_token` per position and sequence.

With grouped-query attention (``n_kv_head`` < ``n_head``, ``08_real_model.ipynb``) the buffers hold
only the ``n_kv_head`` key/value heads. Left out: paged or shared caches across requests,
quantised caches, and sliding-window attention
(the model has absolute position embeddings; :func:`companion.generation.generate` explains what
happens past the context window).
"""

from __future__ import annotations

import torch


class LayerCache:
    """One attention layer's stored keys and values: buffers (B, H, max_length, D), filled from 0.

    >>> cache = LayerCache(batch_size=1, n_head=2, head_size=4, max_length=8)
    >>> k, v = cache.append(torch.ones(1, 2, 3, 4), torch.ones(1, 2, 3, 4))  # a 3-token prompt
    >>> tuple(k.shape), cache.length
    ((1, 2, 3, 4), 3)
    >>> k, v = cache.append(torch.ones(1, 2, 1, 4), torch.ones(1, 2, 1, 4))  # one new token
    >>> tuple(k.shape), cache.length
    ((1, 2, 4, 4), 4)
    """

    def __init__(
        self,
        batch_size: int,
        n_head: int,
        head_size: int,
        max_length: int,
        *,
        device: torch.device | str | None = None,
        dtype: torch.dtype = torch.float32,
    ) -> None:
        shape = (batch_size, n_head, max_length, head_size)  # (B, H, max_length, D)
        self.keys = torch.empty(shape, device=device, dtype=dtype)
        self.values = torch.empty(shape, device=device, dtype=dtype)
        self.length = 0  # positions filled so far (S)

    def append(self, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Store the new keys and values (B, H, T, D); return all of them so far, (B, H, S, D)."""
        start, end = self.length, self.length + k.shape[2]
        B, H, room, D = self.keys.shape
        if k.shape != v.shape or k.dim() != 4 or (k.shape[0], k.shape[1], k.shape[3]) != (B, H, D):
            raise ValueError(
                f"keys {tuple(k.shape)} and values {tuple(v.shape)} must both be (B={B}, H={H}, "
                f"T, D={D}), the shape this cache was made for; make a new cache for another batch"
            )
        if k.dtype != self.keys.dtype or v.dtype != self.keys.dtype:
            raise ValueError(
                f"keys and values are {k.dtype} and {v.dtype} but the cache holds "
                f"{self.keys.dtype}; make the cache with the model's dtype"
            )
        if end > room:
            raise ValueError(
                f"the cache holds {start} positions and has room for {room}: {k.shape[2]} more do "
                "not fit; make it with a larger max_length"
            )
        self.keys[:, :, start:end] = k  # (B, H, T, D) into positions start … end - 1
        self.values[:, :, start:end] = v
        self.length = end
        return self.keys[:, :, :end], self.values[:, :, :end]  # views, (B, H, S, D)


class KVCache:
    """The cache of a whole model: one :class:`LayerCache` per block, and where the next token
    goes (``length``, which is also its position embedding's index).

    Made by :func:`companion.generation.generate`; pass it to ``GPT.forward(idx, cache=cache)``
    to run only the new tokens ``idx`` (B, T) after the ``cache.length`` stored ones.

    >>> from companion.model import GPT, GPTConfig
    >>> model = GPT(GPTConfig(vocab_size=11, context_length=8, n_layer=2, n_head=2, d_model=16))
    >>> cache = KVCache(model.config, batch_size=1)
    >>> _ = model(torch.tensor([[1, 2, 3]]), cache=cache)  # prefill: positions 0, 1, 2
    >>> _ = model(torch.tensor([[4]]), cache=cache)  # decode: position 3 only
    >>> cache.length, tuple(cache.layers[0].keys.shape)  # (B, H, max_length, D)
    (4, (1, 2, 8, 8))
    """

    def __init__(
        self,
        config,
        batch_size: int,
        *,
        max_length: int | None = None,
        device: torch.device | str | None = None,
        dtype: torch.dtype = torch.float32,
    ) -> None:
        self.max_length = config.context_length if max_length is None else max_length
        if not 1 <= self.max_length <= config.context_length:
            raise ValueError(
                f"max_length={self.max_length} must be between 1 and context_length="
                f"{config.context_length}: the model has no position beyond its context"
            )
        head_size = config.d_model // config.n_head
        n_kv_head = getattr(config, "n_kv_head", None) or config.n_head  # grouped-query: fewer
        self.layers = [
            LayerCache(
                batch_size, n_kv_head, head_size, self.max_length, device=device, dtype=dtype
            )
            for _ in range(config.n_layer)
        ]

    @property
    def length(self) -> int:
        """Positions stored so far (every layer holds the same number)."""
        return self.layers[0].length

    def reset(self) -> None:
        """Forget every stored position (the buffers are kept for reuse)."""
        for layer in self.layers:
            layer.length = 0

    def nbytes(self) -> int:
        """Bytes the stored positions take (keys and values, all layers)."""
        return sum(
            (layer.keys[:, :, : layer.length].nelement() * 2) * layer.keys.element_size()
            for layer in self.layers
        )


def bytes_per_token(config, *, dtype: torch.dtype = torch.float32) -> int:
    """Cache memory for one more position of one sequence: keys and values, C numbers each, per
    layer (with grouped-query attention, ``n_kv_head · D`` numbers each instead of C).

    >>> from companion.model import GPTConfig
    >>> bytes_per_token(GPTConfig(50257, 1024, 12, 12, 768))  # GPT-2 small: 2 · 12 · 768 · 4
    73728
    """
    n_kv_head = getattr(config, "n_kv_head", None) or config.n_head
    width = n_kv_head * (config.d_model // config.n_head)  # numbers per key (and per value)
    return 2 * config.n_layer * width * torch.empty((), dtype=dtype).element_size()
