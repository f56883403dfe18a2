"""What a training run costs: FLOPs per token, a run's FLOPs, tokens per parameter, and MFU.

Taught at the end of ``04_pretraining.ipynb``. A *FLOP* is one floating-point addition or
multiplication; a matrix product (m × k) @ (k × n) costs 2·m·k·n of them (a multiply and an add
per term). Almost all of a GPT's arithmetic is such products, so counting them counts the run.

**Per token, forward** (one token, a window of T tokens, L blocks of width C, vocabulary V):

* every weight matrix multiplies the token's vector once: 2 FLOPs per weight. The matrices are,
  per block, qkv (C × 3C), the attention's output (C × C) and the MLP (C × 4C, 4C × C), 12·C²;
  and the output head (C × V) once. Call their sum ``N = 12·L·C² + V·C`` (the token and position
  embeddings are looked up, not multiplied; biases and layer norms are a few FLOPs per channel);
* attention multiplies the token's query by T keys and its weights by T values: 2·T·C each, so
  4·T·C per block (computed for every key, even the masked ones: the causal mask does not save
  the work in these kernels).

So a forward pass costs ``2·N + 4·L·T·C`` per token. **Backward** costs twice the forward (each
product needs a gradient for both of its inputs), so a training token costs three times that:

    FLOPs per training token = 6·N + 12·L·T·C        (Kaplan et al. 2020, section 2.1)

:func:`flops_per_token` computes it and a test checks it against
``torch.utils.flop_counter.FlopCounterMode`` counting the model's products one by one.

**Compute-optimal** (Hoffmann et al. 2022, "Chinchilla"): for a fixed budget of FLOPs, the loss
is lowest with about 20 training tokens per parameter. **MFU** (model FLOPs utilisation, PaLM,
Chowdhery et al. 2022): the FLOPs per second a run achieves by this count, as a share of what
the machine's arithmetic can do, here measured with one large matrix product
(:func:`measure_peak_flops`) rather than read from a data sheet.

Left out: FLOPs of generation and evaluation passes (forward only: 2·N + 4·L·T·C per token),
activation recomputation, and the data sheets' peak numbers.
"""

from __future__ import annotations

import math
import time

import torch

from companion.environment import DeviceLike, resolve_device
from companion.model import GPTConfig, count_parameters

COMPUTE_OPTIMAL_TOKENS_PER_PARAMETER = 20  # Hoffmann et al. 2022, Table 3 (≈ 20 at every size)


def matmul_parameters(config: GPTConfig) -> int:
    """``N``: the weights that multiply every token, ``12·L·C² + V·C`` (module docstring).

    >>> matmul_parameters(GPTConfig(vocab_size=768, context_length=64, n_layer=4, n_head=4,
    ...                             d_model=128))  # 12·4·128² + 768·128
    884736
    """
    C, L, V = config.d_model, config.n_layer, config.vocab_size
    return 12 * L * C * C + V * C  # qkv 3C², proj C², MLP 8C² per block; the head V·C once


def flops_per_token(config: GPTConfig, context: int | None = None, *, training: bool = True):
    """FLOPs to train on one token (``6·N + 12·L·T·C``), or, with ``training=False``, to run it
    forward (``2·N + 4·L·T·C``). ``context`` is the window T (default the model's).

    >>> c = GPTConfig(vocab_size=768, context_length=64, n_layer=4, n_head=4, d_model=128)
    >>> flops_per_token(c)  # 6 · 884736 + 12 · 4 · 64 · 128
    5701632
    """
    T = config.context_length if context is None else context
    if isinstance(T, bool) or not isinstance(T, int) or not 1 <= T <= config.context_length:
        raise ValueError(
            f"context={context!r} must be a whole number of tokens from 1 to the model's "
            f"context_length {config.context_length}"
        )
    forward = 2 * matmul_parameters(config) + 4 * config.n_layer * T * config.d_model
    return 3 * forward if training else forward


def training_flops(config: GPTConfig, tokens: int, context: int | None = None) -> int:
    """FLOPs of a run that trains on ``tokens`` tokens in windows of ``context``."""
    _check_tokens(tokens)
    return tokens * flops_per_token(config, context)


def tokens_per_parameter(config: GPTConfig, tokens: int) -> float:
    """Training tokens per parameter (all parameters, as Hoffmann et al. count them); about
    :data:`COMPUTE_OPTIMAL_TOKENS_PER_PARAMETER` is compute-optimal."""
    _check_tokens(tokens)
    return tokens / count_parameters(config)


@torch.no_grad()
def measure_peak_flops(
    device: DeviceLike = "cpu", *, size: int = 2048, repeats: int = 5, dtype=torch.float32
) -> float:
    """FLOPs per second of the fastest of ``repeats`` (size × size) @ (size × size) products
    on ``device``: the ceiling that MFU is measured against (2·size³ FLOPs each).

    The product runs with torch's current threads: measure with the threads the run used.
    """
    if isinstance(size, bool) or not isinstance(size, int) or size < 1:
        raise ValueError(f"size={size!r} must be a positive int (the matrices' side), e.g. 2048")
    if isinstance(repeats, bool) or not isinstance(repeats, int) or repeats < 1:
        raise ValueError(f"repeats={repeats!r} must be a positive int, e.g. 5")
    device = resolve_device(device)
    generator = torch.Generator(device="cpu").manual_seed(0)
    a = torch.randn(size, size, generator=generator).to(device, dtype)
    b = torch.randn(size, size, generator=generator).to(device, dtype)
    a @ b  # a first product warms up (threads, caches) and is not timed
    seconds = []
    for _ in range(repeats):
        _sync(device)
        started = time.perf_counter()
        a @ b  # (size, size)
        _sync(device)
        seconds.append(time.perf_counter() - started)
    return 2 * size**3 / min(seconds)


def mfu(config: GPTConfig, tokens_per_second: float, peak_flops: float, context=None) -> float:
    """Model FLOPs utilisation: ``tokens/s × FLOPs per token / peak`` (a share, 0-1).

    >>> c = GPTConfig(vocab_size=768, context_length=64, n_layer=4, n_head=4, d_model=128)
    >>> round(mfu(c, tokens_per_second=1000, peak_flops=5.701632e10), 3)
    0.1
    """
    if not (math.isfinite(peak_flops) and peak_flops > 0):
        raise ValueError(f"peak_flops={peak_flops!r} must be a positive number of FLOPs per second")
    if not (math.isfinite(tokens_per_second) and tokens_per_second >= 0):
        raise ValueError(f"tokens_per_second={tokens_per_second!r} must be a number >= 0")
    return tokens_per_second * flops_per_token(config, context) / peak_flops


def _check_tokens(tokens) -> None:
    if isinstance(tokens, bool) or not isinstance(tokens, int) or tokens < 0:
        raise ValueError(f"tokens={tokens!r} must be a whole number of tokens >= 0")


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    elif device.type == "mps":
        torch.mps.synchronize()
