"""Quantised weights: GGUF's Q8_0 and Q4_1 blocks, turned back into float32 by hand.

Taught in ``09_real_model.ipynb`` (section 1). A quantised tensor is stored row by row in
**blocks of 32 weights**; each block keeps one or two float16 numbers and 32 small integers:

* **Q8_0** (34 bytes a block, 8.5 bits a weight): a scale d and 32 signed bytes q;
  weight = d · q.
* **Q4_1** (20 bytes a block, 5 bits a weight): a scale d, a minimum m, and 32 four-bit q
  (0 … 15), two to a byte: the low nibbles of the 16 bytes are weights 0-15, the high nibbles
  weights 16-31; weight = d · q + m.

float32 takes 32 bits a weight, so Q4_1 stores a weight in about a sixth of the space. The
price is rounding: within a block the weights fall on 16 evenly spaced levels between the
block's minimum and maximum. :func:`quantize_q4_1` does the rounding (so the notebook can
measure what it costs); :func:`dequantize` undoes the storage, exactly as ``gguf``'s own
``gguf.quants.dequantize`` does (tested). Left out: the k-quants (Q4_K …), importance
matrices, and computing with quantised weights directly (we dequantise once, at load time).
"""

from __future__ import annotations

import numpy as np
import torch

BLOCK = 32  # weights per block, for both types
BYTES_PER_BLOCK = {"Q8_0": 2 + 32, "Q4_1": 2 + 2 + 16}  # float16 scale (+ min), then the q's


def bits_per_weight(kind: str) -> float:
    """Storage per weight, scales included.

    >>> bits_per_weight("Q8_0"), bits_per_weight("Q4_1"), bits_per_weight("F32")
    (8.5, 5.0, 32.0)
    """
    if kind == "F32":
        return 32.0
    return BYTES_PER_BLOCK[kind] * 8 / BLOCK


def _blocks(data: np.ndarray, kind: str) -> np.ndarray:
    """The raw bytes (rows, bytes per row) as (number of blocks, bytes per block); a
    ``ValueError`` for anything else (float weights passed as bytes would be silently cast)."""
    size = BYTES_PER_BLOCK[kind]
    if not isinstance(data, np.ndarray) or data.dtype != np.uint8 or data.ndim != 2:
        got = f"{data.dtype} {data.shape}" if isinstance(data, np.ndarray) else type(data).__name__
        raise ValueError(
            f"{kind} data must be the file's raw bytes, a uint8 array (rows, bytes per row); got "
            f"{got}. Pass tensor.data from the GGUF reader (quantize_q4_1 makes such bytes)"
        )
    if data.shape[1] % size:
        raise ValueError(
            f"{kind} rows of {data.shape[1]} bytes do not split into blocks of {size} bytes; the "
            f"data is cut short or is of another type"
        )
    return np.ascontiguousarray(data).reshape(-1, size)


def dequantize_q8_0(data: np.ndarray) -> torch.Tensor:
    """Q8_0 bytes (rows, 34 · blocks per row) → float32 (rows, 32 · blocks per row): d · q.

    >>> block = np.concatenate([np.float16(0.5).reshape(1).view(np.uint8),
    ...                         np.arange(-16, 16, dtype=np.int8).view(np.uint8)])
    >>> dequantize_q8_0(block[None])[0, :4]  # 0.5 · (-16, -15, -14, -13)
    tensor([-8.0000, -7.5000, -7.0000, -6.5000])
    """
    b = _blocks(data, "Q8_0")  # (N, 34)
    rows = data.shape[0]
    d = b[:, :2].copy().view(np.float16).astype(np.float32)  # (N, 1): the block's scale
    q = b[:, 2:].view(np.int8).astype(np.float32)  # (N, 32): signed bytes
    return torch.from_numpy(d * q).reshape(rows, -1)  # (rows, in)


def dequantize_q4_1(data: np.ndarray) -> torch.Tensor:
    """Q4_1 bytes (rows, 20 · blocks per row) → float32 (rows, 32 · blocks per row): d · q + m.

    >>> block = np.concatenate([np.float16(0.5).reshape(1).view(np.uint8),  # d
    ...                         np.float16(-1.0).reshape(1).view(np.uint8),  # m
    ...                         np.full(16, 0x31, dtype=np.uint8)])  # low nibble 1, high 3
    >>> w = dequantize_q4_1(block[None])[0]
    >>> w[0].item(), w[16].item()  # 0.5 · 1 - 1 and 0.5 · 3 - 1
    (-0.5, 0.5)
    """
    b = _blocks(data, "Q4_1")  # (N, 20)
    rows = data.shape[0]
    d = b[:, 0:2].copy().view(np.float16).astype(np.float32)  # (N, 1): scale
    m = b[:, 2:4].copy().view(np.float16).astype(np.float32)  # (N, 1): minimum
    qs = b[:, 4:]  # (N, 16): two 4-bit numbers per byte
    q = np.concatenate([qs & 0x0F, qs >> 4], axis=1).astype(np.float32)  # (N, 32)
    return torch.from_numpy(d * q + m).reshape(rows, -1)  # (rows, in)


def dequantize(data: np.ndarray, kind: str, *, rows_at_once: int = 4096) -> torch.Tensor:
    """Any of the three tensor types in the SmolLM2 file as float32 (F32 is copied as is).

    Quantised rows are dequantised ``rows_at_once`` at a time into the finished tensor, so the
    working copies (the q's as floats, d · q) stay small: for the token embedding, 49,152 rows,
    they would otherwise take twice its 113 MB float32 size on top of it.
    """
    if kind == "F32":
        if not isinstance(data, np.ndarray) or data.dtype != np.float32:
            got = data.dtype if isinstance(data, np.ndarray) else type(data).__name__
            raise ValueError(f"F32 data must be a float32 array, got {got}")
        return torch.from_numpy(np.array(data, dtype=np.float32))
    kinds = {"Q8_0": dequantize_q8_0, "Q4_1": dequantize_q4_1}
    if kind not in kinds:
        raise ValueError(f"tensor type {kind!r} is not supported; expected F32, Q8_0 or Q4_1")
    _blocks(data, kind)  # the checks, with their messages, before anything is allocated
    rows, n_bytes = data.shape
    out = torch.empty(rows, n_bytes // BYTES_PER_BLOCK[kind] * BLOCK)  # (rows, in)
    for start in range(0, rows, rows_at_once):
        out[start : start + rows_at_once] = kinds[kind](data[start : start + rows_at_once])
    return out


def quantize_q4_1(weight: torch.Tensor) -> np.ndarray:
    """float weights (rows, in), ``in`` a multiple of 32 → Q4_1 bytes (rows, 20 · in / 32).

    Per block: m = the minimum, d = (maximum - m) / 15, q = round((w - m) / d) in 0 … 15; d and m
    are stored as float16 (rounded first, so that dequantising uses exactly the stored values).

    >>> w = torch.linspace(-1, 1, 32)[None]
    >>> err = (dequantize_q4_1(quantize_q4_1(w)) - w).abs().max().item()
    >>> err <= (2 / 15) / 2 + 1e-3  # at most half a level, d / 2, plus float16 rounding
    True
    """
    if not isinstance(weight, torch.Tensor) or weight.dim() != 2 or not weight.is_floating_point():
        got = (
            f"{weight.dtype} {tuple(weight.shape)}"
            if isinstance(weight, torch.Tensor)
            else (type(weight).__name__)
        )
        raise ValueError(f"weight must be a 2-D float tensor (rows, in), got {got}")
    rows, n = weight.shape
    if n % BLOCK:
        raise ValueError(f"rows of {n} weights do not split into blocks of {BLOCK}; pad them")
    w = weight.detach().float().reshape(-1, BLOCK).cpu().numpy()  # (N, 32)
    low, high = w.min(axis=1, keepdims=True), w.max(axis=1, keepdims=True)  # (N, 1)
    d = ((high - low) / 15).astype(np.float16)  # stored scale
    m = low.astype(np.float16)  # stored minimum
    d32, m32 = d.astype(np.float32), m.astype(np.float32)
    safe = np.where(d32 == 0, 1.0, d32)  # a constant block: every q is 0
    q = np.clip(np.rint((w - m32) / safe), 0, 15).astype(np.uint8)  # (N, 32)
    packed = q[:, :16] | (q[:, 16:] << 4)  # (N, 16): weights j and j + 16 share byte j
    out = np.concatenate([d.view(np.uint8), m.view(np.uint8), packed], axis=1)  # (N, 20)
    return out.reshape(rows, -1)
