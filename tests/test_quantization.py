"""Q8_0 and Q4_1 by hand: raw blocks built byte by byte, the floats they stand for worked out
one weight at a time. No model file and no ``gguf`` needed (test_smollm2.py compares with
``gguf``'s own dequantisation on the real file, where both are installed).

Two rows of two blocks each, every block with its own scale (and minimum), so a scale or minimum
read from the wrong block, or blocks put in the wrong row, changes the result. Every scale and
minimum is a float16 number and every product and sum a small multiple of a power of two, so the
float32 results are exact and compared with ``torch.equal``.
"""

from __future__ import annotations

import struct

import numpy as np
import pytest
import torch

from companion.quantization import (
    BYTES_PER_BLOCK,
    dequantize,
    dequantize_q4_1,
    dequantize_q8_0,
    quantize_q4_1,
)

ROWS, BLOCKS_PER_ROW = 2, 2  # block k sits in row k // 2, at weights 32 · (k % 2) onwards


def as_rows(blocks: list[bytes]) -> np.ndarray:
    """Blocks in order, two to a row: (ROWS, BLOCKS_PER_ROW · bytes per block) uint8."""
    raw = np.frombuffer(b"".join(blocks), dtype=np.uint8)
    return raw.reshape(ROWS, -1)


def expected_rows(weights: list[list[float]]) -> torch.Tensor:
    """Each block's 32 weights, placed as ``as_rows`` places the blocks: (ROWS, 64)."""
    rows = [weights[2 * r] + weights[2 * r + 1] for r in range(ROWS)]
    return torch.tensor(rows, dtype=torch.float32)


# --- Q8_0: weight = d · q, q a signed byte ---------------------------------------------------------

Q8_SCALES = [0.5, -0.25, 2.0, 0.125]


def q8_values(k: int) -> list[int]:
    """Block k's 32 signed bytes: -128 … 127 in steps of k + 7, different for every block."""
    return [(i * (k + 7) + 40 * k) % 256 - 128 for i in range(32)]


def q8_0_block(d: float, q: list[int]) -> bytes:
    return struct.pack("<e", d) + struct.pack("32b", *q)  # float16 scale, then 32 int8


def test_q8_0_on_several_blocks_by_hand():
    blocks = [q8_0_block(d, q8_values(k)) for k, d in enumerate(Q8_SCALES)]
    assert len(blocks[0]) == BYTES_PER_BLOCK["Q8_0"] == 34
    weights = [[d * q for q in q8_values(k)] for k, d in enumerate(Q8_SCALES)]
    want = expected_rows(weights)
    # Block 3 (row 1, weights 32-63) starts q = 120 - 128; block 1's second q is 8 + 40 - 128.
    assert want[1, 32].item() == 0.125 * -8 and want[0, 33].item() == -0.25 * -80
    got = dequantize_q8_0(as_rows(blocks))
    assert got.dtype == torch.float32 and got.shape == (ROWS, 64)
    assert torch.equal(got, want)
    assert torch.equal(dequantize(as_rows(blocks), "Q8_0"), want)


# --- Q4_1: weight = d · q + m, q four bits, low nibbles first ------------------------------------

Q4_SCALES = [0.5, 0.25, 1.5, 0.0625]
Q4_MINIMUMS = [-1.0, 2.0, -0.5, 0.75]


def q4_values(k: int) -> list[int]:
    """Block k's 32 four-bit numbers: each of 0 … 15 twice, in an order of its own (the second
    half shifted by 5, so that no weight shares its value with the one it shares a byte with)."""
    step = 2 * k + 1  # odd, so i · step runs through every value mod 16
    return [(i * step + k + 5 * (i // 16)) % 16 for i in range(32)]


def q4_1_block(d: float, m: float, q: list[int]) -> bytes:
    """Byte j holds weight j in its low four bits and weight j + 16 in its high four bits."""
    packed = bytes(q[j] | (q[j + 16] << 4) for j in range(16))
    return struct.pack("<ee", d, m) + packed


def q4_1_case() -> tuple[np.ndarray, torch.Tensor]:
    blocks = [
        q4_1_block(d, m, q4_values(k))
        for k, (d, m) in enumerate(zip(Q4_SCALES, Q4_MINIMUMS, strict=True))
    ]
    assert len(blocks[0]) == BYTES_PER_BLOCK["Q4_1"] == 20
    weights = [
        [d * q + m for q in q4_values(k)]
        for k, (d, m) in enumerate(zip(Q4_SCALES, Q4_MINIMUMS, strict=True))
    ]
    return as_rows(blocks), expected_rows(weights)


def test_q4_1_on_several_blocks_by_hand():
    data, want = q4_1_case()
    # Block 1 (row 0, weights 32-63) starts q = 1, 4, 7; block 2 (row 1) starts q = 2, 7, 12.
    assert want[0, 32:35].tolist() == [0.25 * 1 + 2.0, 0.25 * 4 + 2.0, 0.25 * 7 + 2.0]
    assert want[1, :3].tolist() == [1.5 * 2 - 0.5, 1.5 * 7 - 0.5, 1.5 * 12 - 0.5]
    assert want[0, [0, 16]].tolist() == [0.5 * 0 - 1.0, 0.5 * 5 - 1.0]  # byte 0 of block 0
    got = dequantize_q4_1(data)
    assert got.dtype == torch.float32 and got.shape == (ROWS, 64)
    assert torch.equal(got, want)
    assert torch.equal(dequantize(data, "Q4_1"), want)


def test_quantize_q4_1_writes_the_same_bytes_by_hand():
    """Weights that lie exactly on each block's 16 levels, each level used (so the block's
    minimum is m and its maximum m + 15 d): quantising gives back the hand-built bytes."""
    data, weights = q4_1_case()
    assert np.array_equal(quantize_q4_1(weights), data)
    assert torch.equal(dequantize_q4_1(quantize_q4_1(weights)), weights)


def test_f32_is_copied_and_other_types_are_refused():
    w = np.arange(6, dtype=np.float32).reshape(2, 3)
    assert torch.equal(dequantize(w, "F32"), torch.from_numpy(w))
    with pytest.raises(ValueError, match="Q4_K"):
        dequantize(w, "Q4_K")


def test_dequantising_a_few_rows_at_a_time_gives_the_same_tensor():
    w = torch.randn(7, 64, generator=torch.Generator().manual_seed(0))
    data = quantize_q4_1(w)
    whole = dequantize(data, "Q4_1", rows_at_once=7)
    assert torch.equal(dequantize(data, "Q4_1", rows_at_once=3), whole)
    assert torch.equal(dequantize(data, "Q4_1"), whole)
