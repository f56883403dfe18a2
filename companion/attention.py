"""Scaled dot-product attention and multi-head self-attention, from scratch and fused.

Taught in ``02_attention.ipynb``. Shape vocabulary: B batch, T time (query positions), S key
positions (equal to T in self-attention), C channels (``d_model``), H heads, D head size (C / H).

What is here:

* :func:`scaled_dot_product_attention`: ``softmax(q kᵀ / √D) v`` written out, returning the
  attention weights alongside the output (PyTorch's fused kernel does not give them back).
* :func:`causal_mask`: which keys each query may see. When keys outnumber queries (S > T), the
  queries are the *last* T positions, so the mask is aligned bottom-right: query t sees keys
  ``0 … S - T + t``.
* :class:`MultiHeadAttention`: project to queries, keys and values, run H heads in parallel,
  concatenate, project back. ``forward`` calls PyTorch's fused kernel
  (``torch.nn.functional.scaled_dot_product_attention``); ``forward_with_weights`` calls the
  from-scratch function and returns the weights too (for plots); ``forward_per_head`` is the
  naive loop over heads, for teaching.

Later chapters build on this module without changing it: the KV cache
(:mod:`companion.kv_cache`, ``07_inference.ipynb``) runs attention over stored keys, and
Llama-style grouped-query attention with rotary positions (:mod:`companion.llama`,
``09_real_model.ipynb``) is a subclass. What is left out: cross-attention from a second sequence.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn


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
    """Boolean (T, S) mask, True where query t may look at key s.

    The T queries are the last T of the S positions (S defaults to T), so query t sits at
    position ``S - T + t`` and sees every key up to it: the mask is aligned bottom-right.

    >>> causal_mask(3).int()
    tensor([[1, 0, 0],
            [1, 1, 0],
            [1, 1, 1]], dtype=torch.int32)
    >>> causal_mask(1, 4).int()  # one new query after three earlier keys sees all four
    tensor([[1, 1, 1, 1]], dtype=torch.int32)
    """
    S = T if S is None else S
    return torch.ones(T, S, dtype=torch.bool, device=device).tril(diagonal=S - T)  # (T, S)


def scaled_dot_product_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    *,
    causal: bool = False,
    dropout_p: float = 0.0,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Attention from scratch: ``softmax(q kᵀ / √D) v``; returns ``(out, weights)``.

    q is (..., T, D), k is (..., S, D), v is (..., S, Dv); out is (..., T, Dv) and weights
    (..., T, S), each row a probability distribution over the keys. ``causal=True`` hides the
    keys after each query (:func:`causal_mask`). ``dropout_p`` drops weights at random (training
    only; the returned weights are the ones before dropout).

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
    if causal:
        allowed = causal_mask(T, S, device=q.device)  # (T, S)
        scores = scores.masked_fill(~allowed, float("-inf"))  # (..., T, S)
    weights = scores.softmax(dim=-1)  # (..., T, S), rows sum to 1
    used = F.dropout(weights, p=dropout_p) if dropout_p > 0 else weights
    out = used @ v  # (..., T, S) @ (..., S, Dv) -> (..., T, Dv)
    return out, weights


class MultiHeadAttention(nn.Module):
    """Multi-head self-attention: H heads of size D = C / H, run in parallel, then mixed.

    ``forward(x)`` maps x (B, T, C) to (B, T, C) with the fused kernel; nothing is kept on the
    module. Parameters: ``qkv`` (C → 3C, queries, keys and values stacked in that order) and
    ``proj`` (C → C, the output projection).

    >>> mha = MultiHeadAttention(d_model=8, n_head=2)
    >>> out, weights = mha.forward_with_weights(torch.zeros(1, 5, 8))
    >>> tuple(mha(torch.zeros(1, 5, 8)).shape), tuple(weights.shape)
    ((1, 5, 8), (1, 2, 5, 5))
    """

    def __init__(
        self, d_model: int, n_head: int, *, causal: bool = True, bias: bool = True,
        dropout: float = 0.0,
    ) -> None:  # fmt: skip
        super().__init__()
        if n_head < 1 or d_model % n_head != 0:
            raise ValueError(
                f"d_model={d_model} must be a positive multiple of n_head={n_head} (each head "
                f"gets d_model / n_head channels); choose e.g. d_model={max(n_head, 1) * 64}"
            )
        self.n_head, self.head_size = n_head, d_model // n_head
        self.causal, self.dropout = causal, dropout
        self.qkv = nn.Linear(d_model, 3 * d_model, bias=bias)  # queries, keys, values
        self.proj = nn.Linear(d_model, d_model, bias=bias)  # mixes the concatenated heads
        self.resid_dropout = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, T, C) → (B, T, C), with PyTorch's fused attention kernel."""
        q, k, v = self.split_heads(x)  # 3 × (B, H, T, D)
        p = self.dropout if self.training else 0.0
        y = F.scaled_dot_product_attention(q, k, v, is_causal=self.causal, dropout_p=p)
        return self.merge_heads(y)  # (B, H, T, D) -> (B, T, C)

    def forward_with_weights(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The same with the from-scratch attention: ``(out (B, T, C), weights (B, H, T, T))``."""
        q, k, v = self.split_heads(x)  # 3 × (B, H, T, D)
        p = self.dropout if self.training else 0.0
        y, weights = scaled_dot_product_attention(q, k, v, causal=self.causal, dropout_p=p)
        return self.merge_heads(y), weights  # (B, T, C), (B, H, T, T)

    def split_heads(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Queries, keys and values of x (B, T, C), each (B, H, T, D)."""
        B, T, C = x.shape
        H, D = self.n_head, self.head_size
        q, k, v = self.qkv(x).split(C, dim=-1)  # (B, T, 3C) -> 3 × (B, T, C)
        q = q.view(B, T, H, D).transpose(1, 2)  # (B, H, T, D)
        k = k.view(B, T, H, D).transpose(1, 2)  # (B, H, T, D)
        v = v.view(B, T, H, D).transpose(1, 2)  # (B, H, T, D)
        return q, k, v

    def merge_heads(self, y: torch.Tensor) -> torch.Tensor:
        """The heads' outputs (B, H, T, D), concatenated and projected back: (B, T, C)."""
        B, H, T, D = y.shape
        y = y.transpose(1, 2).contiguous().view(B, T, H * D)  # (B, H, T, D) -> (B, T, C)
        return self.resid_dropout(self.proj(y))  # (B, T, C) @ (C, C) -> (B, T, C)

    def forward_per_head(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The naive version: one head at a time, in a Python loop; returns ``(out, weights)``.

        Same parameters and same result as :meth:`forward_with_weights` (without dropout).
        Head h uses rows ``h·D : (h+1)·D`` of each of the query, key and value projections.
        """
        C, D = x.shape[-1], self.head_size
        W, b = self.qkv.weight, self.qkv.bias  # (3C, C), (3C,)
        heads, maps = [], []
        for h in range(self.n_head):
            starts = (h * D, C + h * D, 2 * C + h * D)  # its query, key and value rows
            rows = [start + i for start in starts for i in range(D)]
            w_h = W[rows]  # (3D, C): this head's query, key and value rows
            b_h = None if b is None else b[rows]  # (3D,)
            q, k, v = F.linear(x, w_h, b_h).split(D, dim=-1)  # 3 × (B, T, D)
            y_h, a_h = scaled_dot_product_attention(q, k, v, causal=self.causal)  # (B, T, D)
            heads.append(y_h)
            maps.append(a_h)  # (B, T, T)
        y = torch.cat(heads, dim=-1)  # H × (B, T, D) -> (B, T, C)
        return self.proj(y), torch.stack(maps, dim=1)  # (B, T, C), (B, H, T, T)
