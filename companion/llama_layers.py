"""What changed since GPT-2: RMSNorm, rotary position embeddings and the SwiGLU feed-forward.

Taught in ``09_real_model.ipynb`` (section 2). Llama-style models (Llama, Mistral, Qwen,
SmolLM2) keep GPT-2's pre-norm block and change four of its parts; :mod:`companion.llama` builds
the model from these pieces:

* **RMSNorm**: divide by the root mean square, scale; no mean subtracted, no bias.
  :class:`RMSNorm`.
* **Rotary position embeddings**: no position table added to the tokens; instead each query and
  key is rotated by an angle proportional to its position, so their dot product depends on the
  *distance* between positions. :class:`RotaryEmbedding`, :func:`apply_rope`.
* **SwiGLU**: ``down(silu(gate(x)) * up(x))``, a gated feed-forward layer. :func:`swiglu`.
* **Grouped-query attention** (``n_kv_head`` < ``n_head``): several query heads share one key
  and value head, so the KV cache shrinks. :class:`companion.llama.GroupedQueryAttention`.

Shape vocabulary: B batch, T time, C channels, H heads, D head size. Left out: RoPE scaling for
longer contexts (NTK, YaRN), sliding-window attention, mixture-of-experts feed-forward layers.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class RMSNorm(nn.Module):
    """``x / sqrt(mean(x²) + eps) * weight`` over the last dimension (C); no bias, no mean.

    Worked example: x = (3, 4) has mean square (9 + 16) / 2 = 12.5, root √12.5 ≈ 3.536.

    >>> RMSNorm(2, eps=0.0)(torch.tensor([3.0, 4.0]))
    tensor([0.8485, 1.1314], grad_fn=<MulBackward0>)
    """

    def __init__(self, size: int, *, eps: float = 1e-5) -> None:
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(size))  # (C,), learnt scale per channel

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        mean_square = x.pow(2).mean(dim=-1, keepdim=True)  # (..., 1)
        return self.weight * (x * torch.rsqrt(mean_square + self.eps))  # (..., C)


class RotaryEmbedding(nn.Module):
    """The cosines and sines of rotary position embeddings, one row per position (RoFormer).

    Channel pair i of a head (channels i and i + D/2, the "rotate half" layout of Hugging Face
    and of this course) turns by the angle ``position · base^(-2i/D)``: the first pairs turn fast,
    the last ones slowly. The tables are computed once for ``max_length`` positions and shared by
    every attention layer.

    >>> rope = RotaryEmbedding(head_size=4, max_length=3, base=100.0)
    >>> rope.cos[1]  # position 1: angles 1 and 1/10 (base^(-2/4) = 0.1), each used twice
    tensor([0.5403, 0.9950, 0.5403, 0.9950])
    """

    def __init__(self, head_size: int, max_length: int, *, base: float = 10000.0) -> None:
        super().__init__()
        if head_size % 2:
            raise ValueError(f"head_size={head_size} must be even: RoPE turns channels in pairs")
        self.head_size, self.base = head_size, base
        inv_freq = 1.0 / base ** (torch.arange(0, head_size, 2).float() / head_size)  # (D/2,)
        angles = torch.outer(torch.arange(max_length).float(), inv_freq)  # (L, D/2)
        angles = torch.cat([angles, angles], dim=-1)  # (L, D): pair i is channels i and i + D/2
        self.register_buffer("cos", angles.cos(), persistent=False)  # (L, D)
        self.register_buffer("sin", angles.sin(), persistent=False)  # (L, D)

    def forward(self, x: torch.Tensor, start: int = 0) -> torch.Tensor:
        """Rotate x (..., T, D), whose rows sit at positions ``start`` … ``start + T - 1``."""
        T = x.shape[-2]
        return apply_rope(x, self.cos[start : start + T], self.sin[start : start + T])

    def extra_repr(self) -> str:
        return f"head_size={self.head_size}, base={self.base:g}, max_length={self.cos.shape[0]}"


def rotate_half(x: torch.Tensor) -> torch.Tensor:
    """(x1, x2) → (-x2, x1) for the two halves of the last dimension: a 90° turn of each pair.

    >>> rotate_half(torch.tensor([1.0, 2.0, 3.0, 4.0]))
    tensor([-3., -4.,  1.,  2.])
    """
    half = x.shape[-1] // 2
    return torch.cat([-x[..., half:], x[..., :half]], dim=-1)


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Turn each channel pair of x (..., T, D) by its angle: ``x·cos + rotate_half(x)·sin``.

    Worked example: the pair (1, 0) turned by 90° becomes (0, 1).

    >>> import math
    >>> c, s = torch.full((1, 2), math.cos(math.pi / 2)), torch.full((1, 2), math.sin(math.pi / 2))
    >>> apply_rope(torch.tensor([[1.0, 0.0]]), c, s).round(decimals=6)
    tensor([[0., 1.]])
    """
    return x * cos + rotate_half(x) * sin  # (..., T, D) * (T, D) -> (..., T, D)


def swiglu(gate: torch.Tensor, up: torch.Tensor) -> torch.Tensor:
    """The SwiGLU gate: ``silu(gate) * up``, silu(g) = g · sigmoid(g) (Shazeer 2020).

    >>> swiglu(torch.tensor([0.0, 2.0]), torch.tensor([5.0, 1.0]))  # silu(0) = 0, silu(2) ≈ 1.76
    tensor([0.0000, 1.7616])
    """
    return F.silu(gate) * up


def undo_rope_permutation(weight: torch.Tensor, n_head: int) -> torch.Tensor:
    """Reorder the rows of a query or key weight (H·D, C) from llama.cpp's RoPE layout to ours.

    llama.cpp turns *adjacent* channels (0, 1), (2, 3) … of each head as pairs; Hugging Face and
    this course turn channels i and i + D/2. Converters to GGUF therefore interleave each head's
    rows: row 2i of a head holds our row i, row 2i + 1 our row i + D/2. Undoing it puts the rows
    back, so the same rotation code gives the same queries and keys. (Attention scores are
    unchanged by a permutation applied to both queries and keys, but RoPE pairs channels, so the
    pairing has to match the layout.)

    >>> undo_rope_permutation(torch.arange(4.0)[:, None], n_head=1).flatten()  # rows 0 2 1 3
    tensor([0., 2., 1., 3.])
    """
    rows, C = weight.shape
    D = rows // n_head
    # (H, D/2, 2, C): llama.cpp's rows as (head, pair, member); ours are (head, member, pair)
    return weight.reshape(n_head, D // 2, 2, C).transpose(1, 2).reshape(rows, C)
