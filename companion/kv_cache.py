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

:class:`CachedGPT` is chapter 3's GPT with the cache: the same modules and parameters (held, not
copied), a ``forward(idx, cache=cache)`` that runs only the new tokens, and the ``decoder`` step
function :func:`companion.generation.generate` uses. Nothing in chapter 3's code changes:
:func:`attend_with_cache` runs a block's own attention projections over the stored keys.

With grouped-query attention (``n_kv_head`` < ``n_head``, ``09_real_model.ipynb``) the buffers hold
only the ``n_kv_head`` key/value heads. Left out: paged or shared caches across requests,
quantised caches, and sliding-window attention
(the model has absolute position embeddings; :func:`companion.generation.generate` explains what
happens past the context window).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

from companion.attention import MultiHeadAttention, causal_mask
from companion.model import GPT


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

    Made by a model's ``decoder`` when :func:`companion.generation.generate` runs it; pass it to
    ``CachedGPT.forward(idx, cache=cache)`` to run only the new tokens ``idx`` (B, T) after the
    ``cache.length`` stored ones.

    >>> from companion.model import GPTConfig
    >>> model = CachedGPT(GPT(GPTConfig(vocab_size=11, context_length=8, n_layer=2, n_head=2,
    ...                                 d_model=16)))
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
        self.context_length = config.context_length
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

    def check_room(self, T: int) -> None:
        """A ``ValueError`` unless T more positions fit after the stored ones."""
        if self.length + T > self.max_length:
            raise ValueError(
                f"the cache holds {self.length} positions and has room for {self.max_length}; "
                f"{T} more do not fit. Start again without the cache on the last "
                f"{self.context_length} tokens (what companion.generation.generate does past "
                "the window)"
            )

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


def attend_with_cache(attn: MultiHeadAttention, x: torch.Tensor, cache: LayerCache) -> torch.Tensor:
    """``attn``'s causal self-attention for the T new positions x (B, T, C), after the stored ones
    (:func:`attend_new` on its own projections)."""
    q, k, v = attn.split_heads(x)  # 3 × (B, H, T, D)
    return attn.merge_heads(attend_new(q, k, v, cache))  # (B, H, T, D) -> (B, T, C)


def attend_new(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    cache: LayerCache,
    share: Callable[[torch.Tensor], torch.Tensor] = lambda kv: kv,
) -> torch.Tensor:
    """Causal attention of T new queries q (B, H, T, D) over the stored keys and values and the
    new ones k, v (B, Hkv, T, D), which join the cache; returns (B, H, T, D). ``share`` turns
    (B, Hkv, S, D) into (B, H, S, D) (grouped-query attention; by default Hkv = H, nothing to do).

    The new positions see every stored key and, among themselves, the earlier ones. PyTorch's
    ``is_causal=True`` aligns its mask top-left (query t sees keys 0 … t), which is wrong once
    S > T, so those steps pass :func:`companion.attention.causal_mask` (T, S) explicitly; a single
    new token (T = 1) may see all S keys and needs no mask. With an empty cache (the prompt), the
    call is the one without a cache.
    """
    if cache.length == 0:  # no past: attend over the new keys themselves, as without a cache
        cache.append(k, v)
    else:
        k, v = cache.append(k, v)  # 2 × (B, Hkv, S, D): the stored positions and the new ones
    k, v = share(k), share(v)  # (B, H, S, D)
    T, S = q.shape[2], k.shape[2]
    if T == S:
        return F.scaled_dot_product_attention(q, k, v, is_causal=True)
    mask = causal_mask(T, S, device=q.device) if T > 1 else None  # (T, S) or all keys
    return F.scaled_dot_product_attention(q, k, v, attn_mask=mask)


def check_cached_input(model: nn.Module, idx: torch.Tensor, targets, cache: KVCache) -> None:
    """The checks of a cached forward: no targets, ids the model can read (its own
    ``_check_input``), and room in the cache for them."""
    if targets is not None:
        raise ValueError("targets need the whole sequence: call the model without a cache")
    model._check_input(idx)
    cache.check_room(idx.shape[1])


def stored_transposed(weight: torch.Tensor) -> torch.Tensor:
    """The same (out, in) matrix, stored column by column: strides (1, out), as (in, out) in
    memory, the layout of GPT-2's own code and Hugging Face's Conv1D.

    A decoding step multiplies one vector (1, in) by every weight, and common CPU BLAS libraries
    run that product about a quarter faster from this layout (measured by
    ``benchmarks/bench_generate.py``). Shape and values are unchanged.

    >>> stored_transposed(torch.zeros(3, 2)).stride()
    (1, 3)
    """
    return weight.t().contiguous().t()


def cached_decoder(
    logits: Callable[[torch.Tensor, KVCache | None], torch.Tensor],
    config,
    batch_size: int,
    max_length: int,
    *,
    device: torch.device,
    dtype: torch.dtype,
) -> Callable[[torch.Tensor], torch.Tensor]:
    """The step function of a cached model (its ``decoder``): every id so far (B, T) → the next
    token's logits (B, V), running only the ids the cache has not seen.

    ``logits(idx, cache)`` is the model's unchecked forward, (B, T, V). The first step runs the
    whole prompt (prefill), each later step one token. Once the sequence no longer fits the
    window (more than ``max_length`` ids), every stored key and value sits at the wrong position,
    so each step runs the last ``context_length`` ids afresh, without the cache: the same call as
    the plain loop, so the tokens stay the same (:func:`companion.generation.generate`).
    """
    cache = KVCache(config, batch_size, max_length=max_length, device=device, dtype=dtype)
    L = config.context_length

    def next_logits(idx: torch.Tensor) -> torch.Tensor:
        if idx.shape[1] <= cache.max_length:
            return logits(idx[:, cache.length :], cache)[:, -1]  # (B, T_new, V) -> (B, V)
        return logits(idx[:, -L:], None)[:, -1]  # (B, L, V) -> (B, V)

    return next_logits


class CachedGPT(nn.Module):
    """Chapter 3's GPT with a KV cache: ``forward(idx, cache=cache)`` runs only the new tokens.

    ``model`` is held, not copied: the parameters are the GPT's own. Its blocks' linear weights
    are given the layout decoding runs fastest from (:func:`stored_transposed`; same shapes and
    values). Without a cache, ``forward`` is the GPT's.

    >>> from companion.model import GPTConfig
    >>> gpt = GPT(GPTConfig(vocab_size=11, context_length=8, n_layer=1, n_head=2, d_model=16))
    >>> cached = CachedGPT(gpt)
    >>> cached.model is gpt, cached.model.wte.weight is gpt.wte.weight
    (True, True)
    """

    def __init__(self, model: GPT) -> None:
        super().__init__()
        self.model = model
        self.config = model.config
        for module in model.blocks.modules():
            if isinstance(module, nn.Linear):
                module.weight.data = stored_transposed(module.weight.data)

    def forward(
        self,
        idx: torch.Tensor,
        targets: torch.Tensor | None = None,
        *,
        cache: KVCache | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Without a cache, ``GPT.forward``. With one, ``idx`` (B, T) holds only the new tokens,
        at positions ``cache.length`` … ``cache.length + T - 1``; their keys and values are added
        to the cache and the result is ``(logits (B, T, V), None)`` (no targets then)."""
        if cache is None:
            return self.model(idx, targets)
        check_cached_input(self.model, idx, targets, cache)
        return self.logits(idx, cache), None

    def logits(self, idx: torch.Tensor, cache: KVCache | None) -> torch.Tensor:
        """The forward pass, unchecked: ids (B, T) → logits (B, T, V), with or without a cache."""
        gpt = self.model
        if cache is None:
            return gpt.lm_head(gpt.hidden_states(idx))  # (B, T, V)
        x = gpt.drop(gpt.embed(idx, cache.length))  # (B, T, C) at positions length …
        for block, layer in zip(gpt.blocks, cache.layers, strict=True):
            x = x + attend_with_cache(block.attn, block.ln1(x), layer)  # (B, T, C)
            x = x + block.mlp(block.ln2(x))  # (B, T, C)
        return gpt.lm_head(gpt.ln_f(x))  # (B, T, C) @ (C, V) -> (B, T, V)

    def decoder(self, batch_size: int, max_length: int) -> Callable[[torch.Tensor], torch.Tensor]:
        """The cached step function for :func:`companion.generation.generate` (see
        :func:`cached_decoder`): a prefill, then one token per step."""
        weight = self.model.wte.weight
        return cached_decoder(
            self.logits, self.config, batch_size, max_length, device=weight.device,
            dtype=weight.dtype,
        )  # fmt: skip


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
