"""What changed since GPT-2, each piece against a hand computation or a slow reference."""

from __future__ import annotations

import doctest
import math

import pytest
import torch

import companion.llama_layers
import companion.quantization
import companion.smollm2
from companion.environment import make_generator
from companion.generation import generate
from companion.kv_cache import KVCache
from companion.llama import GroupedQueryAttention, Llama, LlamaConfig, count_parameters
from companion.llama_layers import (
    RMSNorm,
    RotaryEmbedding,
    apply_rope,
    swiglu,
    undo_rope_permutation,
)
from companion.model import GPTConfig
from companion.model import count_parameters as count_gpt_parameters

LLAMA_TINY = LlamaConfig(
    vocab_size=13, context_length=16, n_layer=2, n_head=4, d_model=16, d_ff=24, n_kv_head=2,
    rope_base=100.0, tie_embeddings=False,
)  # fmt: skip


@pytest.mark.parametrize(
    "module", [companion.llama_layers, companion.llama, companion.quantization, companion.smollm2]
)
def test_docstring_examples_run(module):
    result = doctest.testmod(module)
    assert result.attempted > 0 and result.failed == 0


def test_rmsnorm_by_hand():
    norm = RMSNorm(3, eps=0.0)
    with torch.no_grad():
        norm.weight.copy_(torch.tensor([1.0, 2.0, 0.5]))
    x = torch.tensor([1.0, -2.0, 2.0])  # mean square (1 + 4 + 4) / 3 = 3
    expected = torch.tensor([1.0, -4.0, 1.0]) / math.sqrt(3)
    assert torch.allclose(norm(x), expected)


def test_rope_turns_pairs_and_keeps_only_the_distance():
    rope = RotaryEmbedding(head_size=2, max_length=8, base=10000.0)  # one pair, angle = position
    x = torch.tensor([[1.0, 0.0]]).expand(8, 2)  # the same vector at positions 0 … 7
    turned = rope(x)
    assert torch.allclose(turned[3], torch.tensor([math.cos(3), math.sin(3)]))
    assert torch.allclose(turned.norm(dim=-1), torch.ones(8))  # a rotation keeps the length
    q, k = torch.randn(2, 1, 4, generator=make_generator(0)).unbind(0)  # (1, 4) each
    rope4 = RotaryEmbedding(head_size=4, max_length=16, base=100.0)
    scores = [
        (rope4(q, start=s) * rope4(k, start=s - 3)).sum().item() for s in (3, 7, 12)
    ]  # query at s, key three positions earlier
    assert max(scores) - min(scores) < 1e-5  # only the distance matters
    with pytest.raises(ValueError, match="even"):
        RotaryEmbedding(head_size=3, max_length=4)


def test_apply_rope_is_rotate_half_layout():
    cos, sin = torch.zeros(1, 4), torch.ones(1, 4)  # every pair turned by 90°
    out = apply_rope(torch.tensor([[1.0, 2.0, 3.0, 4.0]]), cos, sin)  # pairs (1, 3), (2, 4)
    assert out.tolist() == [[-3.0, -4.0, 1.0, 2.0]]


def test_undo_rope_permutation_inverts_llama_cpps():
    """The reference is the permutation of llama.cpp's convert_hf_to_gguf.py."""

    def llama_cpp_permute(w: torch.Tensor, n_head: int) -> torch.Tensor:
        return (
            w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:])
            .swapaxes(1, 2)
            .reshape(w.shape)
        )

    w = torch.arange(24.0 * 2).reshape(24, 2)  # 3 heads of size 8, 2 input channels
    assert torch.equal(undo_rope_permutation(llama_cpp_permute(w, 3), 3), w)


def test_swiglu_by_hand():
    g, u = torch.tensor([1.0, -1.0]), torch.tensor([2.0, 3.0])
    sigmoid = 1 / (1 + math.exp(-1))
    assert torch.allclose(swiglu(g, u), torch.tensor([2 * sigmoid, -3 * (1 - sigmoid)]))


def test_grouped_query_attention_equals_the_per_head_loop_and_shares_heads():
    torch.manual_seed(0)
    rope = RotaryEmbedding(4, 8, base=100.0)
    mha = GroupedQueryAttention(16, 4, n_kv_head=2, rotary=rope)
    assert mha.qkv.weight.shape == (16 + 2 * 2 * 4, 16)  # queries C, keys and values 2 heads
    x = torch.randn(2, 5, 16)
    fused = mha(x)
    naive, weights = mha.forward_per_head(x)
    scratch, scratch_weights = mha.forward_with_weights(x)
    assert torch.allclose(fused, naive, atol=1e-5) and torch.allclose(fused, scratch, atol=1e-5)
    assert torch.allclose(weights, scratch_weights, atol=1e-6)
    # with one key/value head per query head and the keys copied, GQA is plain multi-head
    full = GroupedQueryAttention(16, 4, n_kv_head=4, rotary=rope)
    with torch.no_grad():
        q, k, v = mha.qkv.weight.split([16, 8, 8])
        repeat = lambda w: w.reshape(2, 4, 16).repeat_interleave(2, dim=0).reshape(16, 16)  # noqa: E731
        full.qkv.weight.copy_(torch.cat([q, repeat(k), repeat(v)]))
        full.proj.weight.copy_(mha.proj.weight)
    assert torch.allclose(full(x), fused, atol=1e-6)
    with pytest.raises(ValueError, match="must divide"):
        GroupedQueryAttention(16, 4, n_kv_head=3, rotary=rope)


def test_llama_style_gpt_generates_the_same_with_and_without_the_cache():
    torch.manual_seed(0)
    model = Llama(LLAMA_TINY).eval()
    assert model.wpe is None and model.lm_head.weight is not model.wte.weight
    assert count_parameters(LLAMA_TINY) == sum(p.numel() for p in model.parameters())
    x = torch.tensor([[1, 2, 3]])
    for knobs in ({"temperature": 0}, {"temperature": 1.0, "top_p": 0.9}):
        runs = [
            generate(model, x, 20, use_cache=c, generator=make_generator(1), **knobs)
            for c in (True, False)
        ]  # 23 tokens: past the 16-token window too
        assert torch.equal(*runs)
    maps = model.attention_maps(x)
    assert maps.shape == (2, 1, 4, 3, 3)


def sharp_llama(seed: int = 0) -> Llama:
    """The tiny Llama-style model with its weights tripled, so that attention is far from uniform
    and a position off by one moves the logits well above float32 rounding."""
    torch.manual_seed(seed)
    model = Llama(LLAMA_TINY).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.mul_(3.0)
    return model


def test_llama_style_cached_logits_equal_the_full_forward_at_every_step():
    """Prefill 3 positions, then one token at a time up to the 16-token window: at every step the
    cached logits equal those of the full forward over the same tokens.

    Tolerance: a float32 sum of n terms differs by reordering by about n · 6e-8 of its size; here
    every sum has at most 24 terms of size ≲ 30 through 2 layers, so differences stay below 1e-4
    (measured: ~1e-6). A rotary position off by one, or a cache in the wrong order, changes the
    logits by more than 1e-2 (checked in the test below)."""
    model = sharp_llama()
    ids = torch.randint(0, LLAMA_TINY.vocab_size, (2, 16), generator=make_generator(5))
    cache = KVCache(LLAMA_TINY, batch_size=2)
    with torch.no_grad():
        step = model(ids[:, :3], cache=cache)[0]  # (2, 3, V)
        assert (step - model(ids[:, :3])[0]).abs().max() < 1e-4
        for n in range(3, 16):
            cached = model(ids[:, n : n + 1], cache=cache)[0][:, -1]  # (2, V)
            full = model(ids[:, : n + 1])[0][:, -1]  # (2, V)
            assert (cached - full).abs().max() < 1e-4, f"step {n}"


def test_the_cached_logits_test_can_fail(monkeypatch):
    """The same comparison fails when the cached steps turn the new token by a position off by one
    (the mistake the greedy tokens of a near-random model did not show)."""
    model = sharp_llama()
    ids = torch.randint(0, LLAMA_TINY.vocab_size, (1, 8), generator=make_generator(5))
    turn = RotaryEmbedding.forward

    def off_by_one(self, x, start=0):
        return turn(self, x, start + 1 if x.shape[-2] == 1 else start)  # single steps only

    monkeypatch.setattr(RotaryEmbedding, "forward", off_by_one)
    cache = KVCache(LLAMA_TINY, batch_size=1)
    with torch.no_grad():
        model(ids[:, :7], cache=cache)
        cached = model(ids[:, 7:], cache=cache)[0][:, -1]  # (1, V), turned as position 8
        full = model(ids)[0][:, -1]  # (1, V): 8 positions at once, turned right
    assert (cached - full).abs().max() > 1e-2


@pytest.mark.parametrize("temperature", [0.3, 2.0])
def test_llama_style_sampling_with_the_cache_equals_without_draw_for_draw(temperature):
    """Far from temperature 1 (sharper and flatter): the same generator gives the same tokens on
    the cached and the uncached path, batch of 2, up to the end of the window."""
    model = sharp_llama()
    prompt = torch.tensor([[1, 2, 3], [4, 5, 6]])
    runs = [
        generate(
            model, prompt, 13, temperature=temperature, use_cache=c, generator=make_generator(2)
        )
        for c in (True, False)
    ]
    assert torch.equal(*runs)
    assert len(set(runs[0][0, 3:].tolist())) > 1  # a real sample, not one repeated token


def test_gpt2_defaults_and_bad_options():
    gpt2 = GPTConfig(50257, 1024, 12, 12, 768)
    assert count_gpt_parameters(gpt2) == 124439808  # unchanged by the Llama model
    with pytest.raises(TypeError, match="norm"):
        GPTConfig(50257, 1024, 12, 12, 768, norm="rmsnorm")  # chapter 3's GPT has no such option
    for bad, match in (
        ({"n_kv_head": 5}, "n_kv_head=5 must divide"),
        ({"d_ff": 0}, "d_ff=0"),
        ({"n_head": 4, "d_model": 12}, "even"),
    ):
        with pytest.raises(ValueError, match=match):
            LlamaConfig(**{"vocab_size": 5, "context_length": 4, "n_layer": 1, "n_head": 2,
                           "d_model": 8, "n_kv_head": 1, "d_ff": 4, **bad})  # fmt: skip
