"""Scaled dot-product attention and multi-head self-attention, from scratch and fused.

Taught in ``02_attention.ipynb``. Shape vocabulary: B batch, T time (query positions), S key
positions (equal to T in self-attention), C channels (``d_model``), H heads, D head size (C / H).

What is here:

* :func:`scaled_dot_product_attention`: ``softmax(q kᵀ / √D) v`` written out, returning the
  attention weights alongside the output (PyTorch's fused kernel does not give them back).
* :class:`MultiHeadAttention`: project to queries, keys and values, run H heads in parallel,
  concatenate, project back. ``attention="fused"`` calls
  ``torch.nn.functional.scaled_dot_product_attention`` (fast, the default);
  ``attention="manual"`` calls the from-scratch function (teaches, and returns the weights).
  :meth:`MultiHeadAttention.forward_per_head` is the naive loop over heads, for teaching.

What is left out: cross-attention from a second sequence, grouped/multi-query heads, rotary
position embeddings and the KV cache (the inference chapter adds one).
"""

from __future__ import annotations

import math
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

AttentionImpl = Literal["fused", "manual"]
ATTENTION_IMPLS: tuple[str, ...] = ("fused", "manual")


def _check_qkv(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> None:
    """Raise a ``ValueError`` naming the shapes unless q (..., T, D), k (..., S, D), v (..., S, Dv)."""
    shapes = f"q {tuple(q.shape)}, k {tuple(k.shape)}, v {tuple(v.shape)}"
    if q.dim() < 2 or k.dim() < 2 or v.dim() < 2:
        raise ValueError(f"q, k, v need at least 2 dimensions (..., T, D); got {shapes}")
    if not (q.dim() == k.dim() == v.dim()) or not (q.shape[:-2] == k.shape[:-2] == v.shape[:-2]):
        raise ValueError(
            f"q, k, v must share their leading (batch, head) dimensions; got {shapes}. "
            "Reshape them to (..., T, D) with the same '...'"
        )
    if q.shape[-1] != k.shape[-1]:
        raise ValueError(
            f"queries and keys must have the same size D to be dotted together; got {shapes}. "
            "Project both to the same head size"
        )
    if k.shape[-2] != v.shape[-2]:
        raise ValueError(
            f"keys and values must have one row per key position (same S); got {shapes}. "
            "Pass one value per key"
        )


def causal_mask(T: int, S: int | None = None, *, device: torch.device | str | None = None):
    """Boolean (T, S) mask, True where query t may look at key s, i.e. where s <= t.

    >>> causal_mask(3).int()
    tensor([[1, 0, 0],
            [1, 1, 0],
            [1, 1, 1]], dtype=torch.int32)
    """
    S = T if S is None else S
    return torch.ones(T, S, dtype=torch.bool, device=device).tril()  # (T, S)


def scaled_dot_product_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    *,
    causal: bool = False,
    mask: torch.Tensor | None = None,
    dropout_p: float = 0.0,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Attention from scratch: ``softmax(q kᵀ / √D) v``; returns ``(out, weights)``.

    q is (..., T, D), k is (..., S, D), v is (..., S, Dv); out is (..., T, Dv) and weights
    (..., T, S), each row a probability distribution over the keys. ``causal=True`` hides key
    s from query t when s > t; ``mask`` is a boolean tensor broadcastable to (..., T, S), True
    where attending is allowed (PyTorch's convention). ``dropout_p`` drops weights at random
    (training only; the returned weights are the ones before dropout).

    Worked example: one query that matches the second of two keys far better than the first.

    >>> q = torch.tensor([[0.0, 4.0]])
    >>> k = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    >>> v = torch.tensor([[10.0], [20.0]])
    >>> out, w = scaled_dot_product_attention(q, k, v)
    >>> w  # scores 0 and 4/√2 ≈ 2.83; softmax gives ≈ 0.06 and 0.94
    tensor([[0.0558, 0.9442]])
    >>> out  # ≈ 0.06 · 10 + 0.94 · 20
    tensor([[19.4419]])
    """
    _check_qkv(q, k, v)
    T, S, D = q.shape[-2], k.shape[-2], q.shape[-1]
    scores = q @ k.transpose(-2, -1) / math.sqrt(D)  # (..., T, D) @ (..., D, S) -> (..., T, S)
    allowed = None
    if causal:
        allowed = causal_mask(T, S, device=q.device)  # (T, S)
    if mask is not None:
        if mask.dtype != torch.bool:
            raise ValueError(
                f"mask must be a boolean tensor (True = may attend), got dtype {mask.dtype}; "
                "convert it with mask.bool()"
            )
        try:
            torch.broadcast_shapes(mask.shape, scores.shape)
        except RuntimeError as err:
            raise ValueError(
                f"mask of shape {tuple(mask.shape)} does not broadcast to the scores' shape "
                f"{tuple(scores.shape)} (..., T, S); give it shape (T, S) or (..., T, S)"
            ) from err
        allowed = mask if allowed is None else allowed & mask
    if allowed is not None:
        scores = scores.masked_fill(~allowed, float("-inf"))  # (..., T, S)
    weights = scores.softmax(dim=-1)  # (..., T, S), rows sum to 1
    used = F.dropout(weights, p=dropout_p) if dropout_p > 0 else weights
    out = used @ v  # (..., T, S) @ (..., S, Dv) -> (..., T, Dv)
    return out, weights


class MultiHeadAttention(nn.Module):
    """Multi-head self-attention: H heads of size D = C / H, run in parallel, then mixed.

    ``forward(x)`` with x (B, T, C) returns ``(out, weights)``: out is (B, T, C); weights is
    (B, H, T, T) when ``return_weights=True`` and ``None`` otherwise (nothing is kept on the
    module). Parameters: ``qkv`` (C → 3C, queries, keys and values stacked in that order) and
    ``proj`` (C → C, the output projection).

    >>> mha = MultiHeadAttention(d_model=8, n_heads=2)
    >>> out, weights = mha(torch.zeros(1, 5, 8), attention="manual", return_weights=True)
    >>> tuple(out.shape), tuple(weights.shape)
    ((1, 5, 8), (1, 2, 5, 5))
    """

    def __init__(
        self,
        d_model: int,
        n_heads: int,
        *,
        causal: bool = True,
        bias: bool = True,
        dropout: float = 0.0,
    ) -> None:
        super().__init__()
        if n_heads < 1 or d_model < 1 or d_model % n_heads != 0:
            raise ValueError(
                f"d_model={d_model} must be a positive multiple of n_heads={n_heads} (each head "
                f"gets d_model / n_heads channels); choose e.g. d_model={max(n_heads, 1) * 64}"
            )
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"dropout={dropout} must be in [0, 1); use 0.0 to switch it off")
        self.d_model, self.n_heads, self.head_size = d_model, n_heads, d_model // n_heads
        self.causal, self.dropout = causal, dropout
        self.qkv = nn.Linear(d_model, 3 * d_model, bias=bias)  # queries, keys, values at once
        self.proj = nn.Linear(d_model, d_model, bias=bias)  # mixes the concatenated heads
        self.resid_dropout = nn.Dropout(dropout)

    def _split_heads(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        B, T, C = x.shape
        q, k, v = self.qkv(x).split(C, dim=-1)  # 3 × (B, T, C)
        H, D = self.n_heads, self.head_size
        q = q.view(B, T, H, D).transpose(1, 2)  # (B, H, T, D)
        k = k.view(B, T, H, D).transpose(1, 2)  # (B, H, T, D)
        v = v.view(B, T, H, D).transpose(1, 2)  # (B, H, T, D)
        return q, k, v

    def _check_input(self, x: torch.Tensor) -> None:
        if x.dim() != 3 or x.shape[-1] != self.d_model:
            raise ValueError(
                f"expected input of shape (B, T, C={self.d_model}), got {tuple(x.shape)}; "
                "add a batch dimension with x[None] if you have a single sequence"
            )

    def forward(
        self,
        x: torch.Tensor,
        *,
        attention: AttentionImpl = "fused",
        return_weights: bool = False,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """(B, T, C) → ``(out (B, T, C), weights (B, H, T, T) or None)``."""
        self._check_input(x)
        if attention not in ATTENTION_IMPLS:
            raise ValueError(f"attention={attention!r} is not one of {ATTENTION_IMPLS}")
        if return_weights and attention != "manual":
            raise ValueError(
                "the fused kernel does not expose the attention weights; "
                "pass attention='manual' together with return_weights=True"
            )
        B, T, C = x.shape
        q, k, v = self._split_heads(x)  # 3 × (B, H, T, D)
        p = self.dropout if self.training else 0.0
        weights = None
        if attention == "fused":
            y = F.scaled_dot_product_attention(q, k, v, is_causal=self.causal, dropout_p=p)
        else:
            y, weights = scaled_dot_product_attention(q, k, v, causal=self.causal, dropout_p=p)
        y = y.transpose(1, 2).contiguous().view(B, T, C)  # (B, H, T, D) -> (B, T, H·D = C)
        out = self.resid_dropout(self.proj(y))  # (B, T, C)
        return out, (weights if return_weights else None)

    def forward_per_head(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The naive version: one head at a time, in a Python loop; returns ``(out, weights)``.

        Same parameters and same result as ``forward(x, attention="manual")`` (without dropout).
        Head h uses columns ``h·D : (h+1)·D`` of the query, key and value projections.
        """
        self._check_input(x)
        C, D = self.d_model, self.head_size
        W, b = self.qkv.weight, self.qkv.bias  # (3C, C), (3C,)
        heads, maps = [], []
        for h in range(self.n_heads):
            rows = [part * C + h * D + i for part in range(3) for i in range(D)]
            w_h = W[rows]  # (3D, C): this head's query, key and value rows
            b_h = None if b is None else b[rows]  # (3D,)
            q, k, v = F.linear(x, w_h, b_h).split(D, dim=-1)  # 3 × (B, T, D)
            y_h, a_h = scaled_dot_product_attention(q, k, v, causal=self.causal)  # (B, T, D)
            heads.append(y_h)
            maps.append(a_h)  # (B, T, T)
        y = torch.cat(heads, dim=-1)  # H × (B, T, D) -> (B, T, C)
        return self.proj(y), torch.stack(maps, dim=1)  # (B, T, C), (B, H, T, T)


def time_attention(
    lengths: list[int],
    *,
    n_heads: int = 4,
    head_size: int = 64,
    attention: AttentionImpl = "fused",
    repeats: int = 3,
    seed: int = 0,
    device: torch.device | str | None = "cpu",
) -> list[float]:
    """Best-of-``repeats`` seconds for one causal attention call at each sequence length T.

    Inputs are random (1, H, T, D) queries, keys and values drawn with ``seed``. Used by
    ``02_attention.ipynb`` and ``benchmarks/bench_attention.py`` to show cost growing like T².
    """
    import time

    if attention not in ATTENTION_IMPLS:
        raise ValueError(f"attention={attention!r} is not one of {ATTENTION_IMPLS}")
    generator = torch.Generator().manual_seed(seed)
    seconds = []
    for T in lengths:
        q, k, v = (torch.randn(1, n_heads, T, head_size, generator=generator) for _ in range(3))
        q, k, v = q.to(device), k.to(device), v.to(device)  # (1, H, T, D) each
        best = float("inf")
        for _ in range(repeats):
            start = time.perf_counter()
            if attention == "fused":
                F.scaled_dot_product_attention(q, k, v, is_causal=True)
            else:
                scaled_dot_product_attention(q, k, v, causal=True)
            if q.device.type == "cuda":
                torch.cuda.synchronize(q.device)
            best = min(best, time.perf_counter() - start)
        seconds.append(best)
    return seconds


def power_law_exponent(xs: list[float], ys: list[float]) -> float:
    """Slope of the least-squares line through (log x, log y): y ∝ x^slope.

    >>> round(power_law_exponent([1, 2, 4], [3, 12, 48]), 6)
    2.0
    """
    lx, ly = (
        torch.tensor(xs, dtype=torch.float64).log(),
        torch.tensor(ys, dtype=torch.float64).log(),
    )
    lx, ly = lx - lx.mean(), ly - ly.mean()
    return float((lx * ly).sum() / (lx * lx).sum())
