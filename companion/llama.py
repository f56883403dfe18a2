"""A Llama-style model: GPT-2's pre-norm stack with RMSNorm, rotary positions, SwiGLU,
grouped-query attention and an untied LM head; it decodes with a KV cache of its own.

Taught in ``09_real_model.ipynb`` (section 2); SmolLM2-135M is one (:mod:`companion.smollm2`
loads it from its GGUF file). Shape vocabulary: B batch, T time, C channels, H query heads,
Hkv key/value heads, D head size, F feed-forward width, V vocabulary.

Built from the earlier chapters' pieces, not from flags on them:

* :class:`GroupedQueryAttention` is chapter 2's :class:`companion.attention.MultiHeadAttention`
  with fewer key/value heads than query heads (each group of ``H / Hkv`` query heads reads one
  key/value head, so the projections and the cache hold fewer keys and values) and with queries
  and keys turned by their positions (:class:`companion.llama_layers.RotaryEmbedding`);
* :class:`LlamaBlock` is chapter 3's block with :class:`companion.llama_layers.RMSNorm` and the
  gated feed-forward :class:`GatedMLP` (:func:`companion.llama_layers.swiglu`);
* :class:`Llama` is chapter 3's :class:`companion.model.GPT` (its forward, checks, loss and
  attention maps) with no position table and, when the file has one, a separate LM head;
* decoding keeps keys and values in chapter 7's :class:`companion.kv_cache.KVCache`.

Left out: training recipes for this model (the course only runs it), RoPE scaling, sliding-window
attention, mixture-of-experts layers.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F
from torch import nn

from companion.attention import MultiHeadAttention, scaled_dot_product_attention
from companion.kv_cache import KVCache, LayerCache, attend_new, cached_decoder, check_cached_input
from companion.llama_layers import RMSNorm, RotaryEmbedding, swiglu
from companion.model import GPT


@dataclass
class LlamaConfig:
    """The shape of a Llama-style model. SmolLM2-135M is ``LlamaConfig(49152, 8192, 30, 9, 576,
    n_kv_head=3, d_ff=1536, rope_base=100000.0)``."""

    vocab_size: int  # V: number of token ids the model reads and predicts
    context_length: int  # longest sequence the model accepts (rows of the RoPE tables)
    n_layer: int  # number of transformer blocks stacked
    n_head: int  # H: query heads per block; must divide d_model
    d_model: int  # C: width of every token's vector (the residual stream)
    n_kv_head: int  # Hkv: key/value heads, each shared by n_head / n_kv_head query heads
    d_ff: int  # F: width of the gated feed-forward layer
    norm_eps: float = 1e-5  # added to the mean square in every RMSNorm
    rope_base: float = 10000.0  # channel pair i of a head turns by position · base^(-2i/D)
    tie_embeddings: bool = True  # the LM head shares the token embedding's (V, C) weight

    def __post_init__(self) -> None:
        for name in ("vocab_size", "context_length", "n_layer", "n_head", "d_model", "d_ff"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"LlamaConfig.{name}={value!r} must be a positive int")
        if self.d_model % self.n_head != 0:
            raise ValueError(
                f"d_model={self.d_model} is not divisible by n_head={self.n_head}: each head "
                "needs d_model / n_head channels; change d_model or n_head"
            )
        kv = self.n_kv_head
        if not isinstance(kv, int) or kv < 1 or self.n_head % kv != 0:
            raise ValueError(
                f"n_kv_head={kv!r} must divide n_head={self.n_head} (each key/value head serves "
                "an equal group of query heads)"
            )
        if (self.d_model // self.n_head) % 2:
            raise ValueError(
                f"RoPE turns channels in pairs, so the head size d_model / n_head = "
                f"{self.d_model // self.n_head} must be even; change d_model or n_head"
            )

    def to_dict(self) -> dict:
        """The fields as a plain dict."""
        return asdict(self)


class GroupedQueryAttention(MultiHeadAttention):
    """Causal self-attention with ``n_kv_head`` key/value heads for ``n_head`` query heads and
    rotary positions; no biases. ``qkv`` is C → C + 2·Hkv·D (queries, keys, values stacked) and
    query head h reads key/value head ``h // (H / Hkv)``.

    >>> gqa = GroupedQueryAttention(16, 4, n_kv_head=2, rotary=RotaryEmbedding(4, 8))
    >>> tuple(gqa.qkv.weight.shape), tuple(gqa(torch.zeros(1, 5, 16)).shape)
    ((32, 16), (1, 5, 16))
    """

    def __init__(self, d_model: int, n_head: int, *, n_kv_head: int, rotary: RotaryEmbedding):
        nn.Module.__init__(self)  # the parent's parts are built here, with the narrower qkv
        if n_head < 1 or d_model % n_head != 0 or n_kv_head < 1 or n_head % n_kv_head != 0:
            raise ValueError(
                f"n_kv_head={n_kv_head} must divide n_head={n_head}, which must divide "
                f"d_model={d_model}: each key/value head serves an equal group of query heads"
            )
        self.n_head, self.n_kv_head, self.head_size = n_head, n_kv_head, d_model // n_head
        self.causal, self.dropout, self.rotary = True, 0.0, rotary
        kv_width = 2 * n_kv_head * self.head_size  # keys and values: Hkv heads of D each
        self.qkv = nn.Linear(d_model, d_model + kv_width, bias=False)  # queries, keys, values
        self.proj = nn.Linear(d_model, d_model, bias=False)  # mixes the concatenated heads
        self.resid_dropout = nn.Identity()  # no dropout

    def forward(self, x: torch.Tensor, cache: LayerCache | None = None) -> torch.Tensor:
        """(B, T, C) → (B, T, C) with the fused kernel; with a ``cache``, x holds the T new
        positions and attends over the stored ones too (:func:`companion.kv_cache.attend_new`, the
        step chapter 7's cache runs for chapter 3's attention)."""
        q, k, v = self.split_heads(x, 0 if cache is None else cache.length)  # (B, H|Hkv, T, D)
        if cache is not None:
            return self.merge_heads(attend_new(q, k, v, cache, self.share_kv))  # (B, T, C)
        k, v = self.share_kv(k), self.share_kv(v)  # (B, H, T, D)
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        return self.merge_heads(y)  # (B, H, T, D) -> (B, T, C)

    def forward_with_weights(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The same with the from-scratch attention: ``(out (B, T, C), weights (B, H, T, T))``."""
        q, k, v = self.split_heads(x)  # (B, H, T, D), 2 × (B, Hkv, T, D)
        k, v = self.share_kv(k), self.share_kv(v)  # (B, H, T, D)
        y, weights = scaled_dot_product_attention(q, k, v, causal=True)
        return self.merge_heads(y), weights  # (B, T, C), (B, H, T, T)

    def split_heads(
        self, x: torch.Tensor, start: int = 0
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Queries (B, H, T, D), keys and values (B, Hkv, T, D) of x at positions ``start`` …,
        queries and keys turned by their positions."""
        B, T, C = x.shape
        H, Hkv, D = self.n_head, self.n_kv_head, self.head_size
        q, k, v = self.qkv(x).split([C, Hkv * D, Hkv * D], dim=-1)  # (B, T, C + 2·Hkv·D) split
        q = q.view(B, T, H, D).transpose(1, 2)  # (B, H, T, D)
        k = k.view(B, T, Hkv, D).transpose(1, 2)  # (B, Hkv, T, D)
        v = v.view(B, T, Hkv, D).transpose(1, 2)  # (B, Hkv, T, D)
        return self.rotary(q, start), self.rotary(k, start), v

    def share_kv(self, kv: torch.Tensor) -> torch.Tensor:
        """(B, Hkv, S, D) → (B, H, S, D): each key/value head repeated for its group of queries."""
        group = self.n_head // self.n_kv_head
        return kv if group == 1 else kv.repeat_interleave(group, dim=1)

    def forward_per_head(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The naive loop over query heads; returns ``(out, weights)`` like the parent's.

        Head h uses rows ``h·D : (h+1)·D`` of the query projection and those of its key/value
        head g = h // (H / Hkv) in the key and value projections.
        """
        C, D = x.shape[-1], self.head_size
        W = self.qkv.weight  # (C + 2·Hkv·D, C)
        kv = self.n_kv_head * D  # rows of the key (and of the value) projection
        heads, maps = [], []
        for h in range(self.n_head):
            g = h // (self.n_head // self.n_kv_head)  # its key/value head
            starts = (h * D, C + g * D, C + kv + g * D)  # its query, key and value rows
            rows = [start + i for start in starts for i in range(D)]
            q, k, v = F.linear(x, W[rows]).split(D, dim=-1)  # 3 × (B, T, D)
            q, k = self.rotary(q), self.rotary(k)
            y_h, a_h = scaled_dot_product_attention(q, k, v, causal=True)  # (B, T, D)
            heads.append(y_h)
            maps.append(a_h)  # (B, T, T)
        y = torch.cat(heads, dim=-1)  # H × (B, T, D) -> (B, T, C)
        return self.proj(y), torch.stack(maps, dim=1)  # (B, T, C), (B, H, T, T)


class GatedMLP(nn.Module):
    """The SwiGLU feed-forward layer: ``proj(silu(gate) * up)``; ``fc`` makes the two F-wide
    halves, gate and up, stacked like the attention's queries, keys and values. No biases.
    (B, T, C) → (B, T, C)."""

    def __init__(self, d_model: int, d_ff: int) -> None:
        super().__init__()
        self.fc = nn.Linear(d_model, 2 * d_ff, bias=False)  # (C, 2F): gate and up
        self.proj = nn.Linear(d_ff, d_model, bias=False)  # (F, C)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        gate, up = self.fc(x).chunk(2, dim=-1)  # (B, T, C) @ (C, 2F) -> 2 × (B, T, F)
        return self.proj(swiglu(gate, up))  # (B, T, F) @ (F, C) -> (B, T, C)


class LlamaBlock(nn.Module):
    """Chapter 3's pre-norm block with RMSNorm, grouped-query attention and SwiGLU:
    ``x + attn(ln1(x))``, then ``x + mlp(ln2(x))``."""

    def __init__(self, config: LlamaConfig, rotary: RotaryEmbedding) -> None:
        super().__init__()
        C = config.d_model
        self.ln1 = RMSNorm(C, eps=config.norm_eps)
        self.attn = GroupedQueryAttention(
            C, config.n_head, n_kv_head=config.n_kv_head, rotary=rotary
        )
        self.ln2 = RMSNorm(C, eps=config.norm_eps)
        self.mlp = GatedMLP(C, config.d_ff)

    def forward(self, x: torch.Tensor, cache: LayerCache | None = None) -> torch.Tensor:
        """(B, T, C) → (B, T, C); ``cache``: this block's keys and values of earlier positions."""
        x = x + self.attn(self.ln1(x), cache)  # (B, T, C)
        x = x + self.mlp(self.ln2(x))  # (B, T, C)
        return x


class Llama(GPT):
    """A Llama-style language model: token ids (B, T) → next-token logits (B, T, V).

    :class:`companion.model.GPT`'s forward (checks, loss), ``attention_maps`` and init, with
    Llama's blocks, no position table (``wpe`` is None: positions enter in attention) and a
    cached ``decoder`` for :func:`companion.generation.generate`.

    >>> torch.manual_seed(0)  # doctest: +ELLIPSIS
    <torch._C.Generator object at ...>
    >>> config = LlamaConfig(vocab_size=11, context_length=8, n_layer=2, n_head=4, d_model=16,
    ...                      n_kv_head=2, d_ff=24)
    >>> logits, loss = Llama(config)(torch.tensor([[1, 2, 3]]))
    >>> tuple(logits.shape), loss
    ((1, 3, 11), None)
    """

    def __init__(self, config: LlamaConfig) -> None:
        nn.Module.__init__(self)  # GPT's parts are built here, Llama's way
        self.config = config
        C = config.d_model
        self.wte = nn.Embedding(config.vocab_size, C)  # token embedding (V, C)
        self.wpe = None  # no position table: RoPE turns queries and keys instead
        rotary = RotaryEmbedding(C // config.n_head, config.context_length, base=config.rope_base)
        self.drop = nn.Identity()  # Llama trains without dropout
        self.blocks = nn.ModuleList(LlamaBlock(config, rotary) for _ in range(config.n_layer))
        self.ln_f = RMSNorm(C, eps=config.norm_eps)
        self.lm_head = nn.Linear(C, config.vocab_size, bias=False)
        if config.tie_embeddings:
            self.lm_head.weight = self.wte.weight
        self._init_weights()

    def forward(
        self,
        idx: torch.Tensor,
        targets: torch.Tensor | None = None,
        *,
        cache: KVCache | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """``GPT.forward``; with a ``cache``, ``idx`` (B, T) holds only the new tokens, at
        positions ``cache.length`` …, and the result is ``(logits (B, T, V), None)``."""
        if cache is None:
            return super().forward(idx, targets)
        check_cached_input(self, idx, targets, cache)
        return self.lm_head(self.hidden_states(idx, cache)), None

    def hidden_states(self, idx: torch.Tensor, cache: KVCache | None = None) -> torch.Tensor:
        """The final RMSNorm's output (B, T, C); with a ``cache``, for the new tokens only."""
        x = self.wte(idx)  # (B, T, C): no position embedding
        for i, block in enumerate(self.blocks):
            x = block(x, None if cache is None else cache.layers[i])  # (B, T, C)
        return self.ln_f(x)  # (B, T, C)

    def embed(self, idx: torch.Tensor, start: int = 0) -> torch.Tensor:
        """The token embedding (B, T, C): positions enter in attention, not here."""
        return self.wte(idx)

    def decoder(self, batch_size: int, max_length: int) -> Callable[[torch.Tensor], torch.Tensor]:
        """The cached step function (:func:`companion.kv_cache.cached_decoder`). With the cache,
        only the last position's logits are used, so only its vector goes through the LM head:
        for a batch of 30 prompts of 37 tokens, the prompt's pass would otherwise hold
        (30, 37, V) logits, 218 MB at SmolLM2's vocabulary. Past the window (no cache) it is the
        plain forward's own computation, so those steps equal the uncached loop bit for bit."""
        weight = self.wte.weight

        def logits(idx: torch.Tensor, cache: KVCache | None) -> torch.Tensor:
            h = self.hidden_states(idx, cache)  # (B, T, C)
            return self.lm_head(h if cache is None else h[:, -1:])  # (B, T or 1, V)

        return cached_decoder(
            logits, self.config, batch_size, max_length, device=weight.device, dtype=weight.dtype
        )


def parameter_breakdown(config: LlamaConfig) -> dict[str, int]:
    """Where the parameters live, by formula, under the names of
    :func:`companion.model.parameter_breakdown` (no position embedding; an untied LM head
    counted apart).

    >>> parameter_breakdown(LlamaConfig(10, 4, 1, 2, 4, n_kv_head=1, d_ff=3))  # qkv 4 × 8, proj 4 × 4
    {'token embedding (= LM head)': 40, 'position embedding': 0, 'attention': 48, 'feed-forward': 36, 'layer norms': 12}
    """
    V, L, C, F_ = config.vocab_size, config.n_layer, config.d_model, config.d_ff
    kv = config.n_kv_head * (C // config.n_head)  # key (= value) width
    counts = {
        "token embedding (= LM head)": V * C,
        "position embedding": 0,  # RoPE: computed, not learnt
        "attention": L * (C * (C + 2 * kv) + C * C),  # qkv (C, C + 2·kv) and proj (C, C)
        "feed-forward": L * (C * 2 * F_ + F_ * C),  # fc (C, 2F) and proj (F, C)
        "layer norms": (2 * L + 1) * C,  # RMSNorm: a weight per channel
    }
    if not config.tie_embeddings:
        counts["LM head"] = V * C
    return counts


def count_parameters(config: LlamaConfig) -> int:
    """Number of parameters of ``Llama(config)``, by formula.

    >>> count_parameters(LlamaConfig(49152, 8192, 30, 9, 576, n_kv_head=3, d_ff=1536))
    134515008
    """
    return sum(parameter_breakdown(config).values())
