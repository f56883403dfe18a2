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
