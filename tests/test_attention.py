"""Attention: a hand-checked case, parity with PyTorch, the naive loop, and bad input."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from companion.attention import MultiHeadAttention, causal_mask, scaled_dot_product_attention


def _qkv(*shape: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return tuple(torch.randn(*shape, generator=g) for _ in range(3))


def test_three_tokens_by_hand():
    # D = 1, so the scale √D is 1 and scores are plain products q_t · k_s.
    q = torch.tensor([[1.0], [0.0], [2.0]])
    k = torch.tensor([[0.0], [1.0], [math.log(2.0)]])
    v = torch.tensor([[1.0, 0.0], [0.0, 1.0], [3.0, 3.0]])
    out, weights = scaled_dot_product_attention(q, k, v)
    # Query 0: scores 0, 1, ln 2 → exp 1, e, 2 → weights (1, e, 2) / (3 + e).
    e = math.e
    w0 = torch.tensor([1.0, e, 2.0]) / (3.0 + e)
    # Query 1: all scores 0 → uniform.
    w1 = torch.full((3,), 1 / 3)
    # Query 2: scores 0, 2, 2 ln 2 → exp 1, e², 4.
    w2 = torch.tensor([1.0, e**2, 4.0]) / (5.0 + e**2)
    expected_w = torch.stack([w0, w1, w2])
    torch.testing.assert_close(weights, expected_w)
    torch.testing.assert_close(out, expected_w @ v)
    assert out[1].tolist() == pytest.approx([4 / 3, 4 / 3])

    # Causal: query 0 sees only key 0; query 1 sees keys 0 and 1 equally.
    out_c, weights_c = scaled_dot_product_attention(q, k, v, causal=True)
    assert weights_c[0].tolist() == [1.0, 0.0, 0.0]
    assert weights_c[1].tolist() == pytest.approx([0.5, 0.5, 0.0])
    assert out_c[0].tolist() == [1.0, 0.0]


def test_causal_mask_is_lower_triangular():
    assert causal_mask(3).tolist() == [[True, False, False], [True, True, False], [True] * 3]


def test_causal_mask_aligns_the_last_queries_with_the_last_keys():
    """With S > T keys (earlier tokens' keys kept, as a KV cache does) the T queries are the
    last T positions: their attention must equal the last T rows of full self-attention."""
    assert causal_mask(2, 4).tolist() == [[True, True, True, False], [True, True, True, True]]
    q, k, v = _qkv(2, 3, 7, 8, seed=4)  # (B, H, S, D): a whole sequence of S = 7
    full, full_w = scaled_dot_product_attention(q, k, v, causal=True)
    for T in (1, 3, 7):
        out, w = scaled_dot_product_attention(q[..., -T:, :], k, v, causal=True)
        # The same rows of the same sums, so the same float32 results (up to the kernel's
        # blocking, a few roundings of numbers below 10): 1e-5 holds on any CPU.
        torch.testing.assert_close(out, full[..., -T:, :], atol=1e-5, rtol=0)
        torch.testing.assert_close(w, full_w[..., -T:, :], atol=1e-6, rtol=0)
    mask = causal_mask(3, 7)  # PyTorch's is_causal aligns top-left; an explicit mask does not
    expected = F.scaled_dot_product_attention(q[..., -3:, :], k, v, attn_mask=mask)
    torch.testing.assert_close(expected, full[..., -3:, :], atol=1e-5, rtol=0)


@pytest.mark.parametrize("causal", [False, True])
def test_matches_pytorch_sdpa(causal: bool):
    q, k, v = _qkv(2, 3, 7, 8)
    out, weights = scaled_dot_product_attention(q, k, v, causal=causal)
    expected = F.scaled_dot_product_attention(q, k, v, is_causal=causal)
    torch.testing.assert_close(out, expected, atol=1e-5, rtol=0)
    torch.testing.assert_close(weights.sum(-1), torch.ones(2, 3, 7))
    if causal:
        assert torch.all(weights.triu(diagonal=1) == 0)
    else:
        assert torch.all(weights > 0)


def test_cross_lengths_and_value_width():
    q = torch.randn(3, 4)
    k, v = torch.randn(6, 4), torch.randn(6, 2)
    out, weights = scaled_dot_product_attention(q, k, v)
    assert out.shape == (3, 2) and weights.shape == (3, 6)
    torch.testing.assert_close(out, F.scaled_dot_product_attention(q, k, v), atol=1e-5, rtol=0)


@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("causal", [False, True])
def test_multi_head_matches_nn_multihead_attention(causal: bool, bias: bool):
    torch.manual_seed(0)
    B, T, C, H = 2, 6, 16, 4
    ours = MultiHeadAttention(C, H, causal=causal, bias=bias).eval()
    theirs = nn.MultiheadAttention(C, H, bias=bias, batch_first=True).eval()
    with torch.no_grad():  # the same weights: in_proj is q, k, v stacked like our qkv
        theirs.in_proj_weight.copy_(ours.qkv.weight)
        theirs.out_proj.weight.copy_(ours.proj.weight)
        if bias:
            theirs.in_proj_bias.copy_(ours.qkv.bias)
            theirs.out_proj.bias.copy_(ours.proj.bias)
    x = torch.randn(B, T, C)
    mask = ~causal_mask(T) if causal else None  # nn.MultiheadAttention: True = masked out
    expected, expected_w = theirs(x, x, x, attn_mask=mask, average_attn_weights=False)
    # Same weights, same arithmetic in another order: float32 roundings of values below about
    # 10, so differences near 1e-6; the tolerances leave ten times that for any CPU's kernels.
    torch.testing.assert_close(ours(x), expected, atol=1e-5, rtol=0)
    out, weights = ours.forward_with_weights(x)
    torch.testing.assert_close(out, expected, atol=1e-5, rtol=0)
    torch.testing.assert_close(weights, expected_w, atol=1e-6, rtol=0)


def test_fused_and_from_scratch_paths_agree_with_grads():
    torch.manual_seed(3)
    mha = MultiHeadAttention(16, 2)
    x = torch.randn(3, 12, 16, requires_grad=True)
    fused = mha(x)
    manual, _ = mha.forward_with_weights(x)
    torch.testing.assert_close(fused, manual, atol=1e-5, rtol=0)
    grads = [torch.autograd.grad(y.square().sum(), x)[0] for y in (fused, manual)]
    torch.testing.assert_close(grads[0], grads[1], atol=1e-4, rtol=1e-4)


def test_naive_per_head_loop_equals_batched():
    torch.manual_seed(1)
    mha = MultiHeadAttention(12, 3)
    x = torch.randn(2, 5, 12)
    out, weights = mha.forward_with_weights(x)
    loop_out, loop_weights = mha.forward_per_head(x)
    torch.testing.assert_close(loop_out, out, atol=1e-6, rtol=0)
    torch.testing.assert_close(loop_weights, weights, atol=1e-6, rtol=0)
    assert weights.shape == (2, 3, 5, 5)


def test_weights_only_when_asked_and_not_stashed():
    mha = MultiHeadAttention(8, 2)
    x = torch.randn(1, 4, 8)
    assert mha(x).shape == (1, 4, 8)
    _, weights = mha.forward_with_weights(x)
    assert weights.shape == (1, 2, 4, 4)
    assert not any(isinstance(v, torch.Tensor) for v in vars(mha).values())


def test_dropout_only_in_training():
    torch.manual_seed(2)
    mha = MultiHeadAttention(8, 2, dropout=0.5)
    x = torch.randn(1, 6, 8)
    mha.eval()
    a = mha(x)
    b, _ = mha.forward_with_weights(x)
    torch.testing.assert_close(a, b, atol=1e-6, rtol=0)
    mha.train()
    c = mha(x)
    assert not torch.allclose(a, c)


def test_mismatched_qkv_shapes_raise():
    q = torch.randn(2, 4, 8)
    with pytest.raises(ValueError, match=r"same size D.*k \(2, 4, 6\)"):
        scaled_dot_product_attention(q, torch.randn(2, 4, 6), torch.randn(2, 4, 8))
    with pytest.raises(ValueError, match=r"same S.*v \(2, 5, 8\)"):
        scaled_dot_product_attention(q, torch.randn(2, 4, 8), torch.randn(2, 5, 8))
    with pytest.raises(ValueError, match=r"leading.*k \(3, 4, 8\)"):
        scaled_dot_product_attention(q, torch.randn(3, 4, 8), torch.randn(3, 4, 8))
    with pytest.raises(ValueError, match="at least 2 dimensions"):
        scaled_dot_product_attention(torch.randn(8), torch.randn(8), torch.randn(8))


def test_bad_module_arguments_raise():
    with pytest.raises(ValueError, match="d_model=10 must be a positive multiple of n_head=3"):
        MultiHeadAttention(10, 3)
    with pytest.raises(ValueError, match="dropout probability"):  # torch's own, clear enough
        MultiHeadAttention(8, 2, dropout=1.5)


def _explorer():
    from companion.attention_explorer import AttentionExplorer
    from companion.model import GPT, GPTConfig

    torch.manual_seed(0)
    model = GPT(GPTConfig(vocab_size=128, context_length=16, n_layer=2, n_head=3, d_model=12))
    encode = lambda text: list(text.encode("ascii"))  # noqa: E731 (one byte per token)
    return AttentionExplorer(model, ["the bank", "ab"], encode, chr, device="cpu"), model


def test_explorer_handlers_redraw_for_sentence_layer_and_head():
    explorer, model = _explorer()
    first_image = bytes(explorer.image.value)
    assert first_image.startswith(b"\x89PNG")
    assert explorer.summary.value.startswith("layer 0, head 0: the last token 'k'")
    explorer.head.value = 2
    assert explorer.summary.value.startswith("layer 0, head 2")
    assert bytes(explorer.image.value) != first_image
    explorer.layer.value = 1
    tokens, weights = explorer.current()
    expected = model.attention_maps(torch.tensor([list(b"the bank")]))[1, 0, 2]
    assert tokens == list("the bank")
    torch.testing.assert_close(weights, expected)
    explorer.sentence.value = "ab"
    tokens, weights = explorer.current()
    assert tokens == ["a", "b"] and weights.shape == (2, 2)
    assert "the last token 'b'" in explorer.summary.value
    assert explorer.layer.max == 1 and explorer.head.max == 2


def test_heads_figure_has_one_panel_per_head():
    import matplotlib.pyplot as plt

    from companion.attention_explorer import attention_heads_figure, plot_attention

    maps = torch.softmax(torch.randn(3, 4, 4), dim=-1)
    fig = attention_heads_figure(maps, list("abcd"), layer=1)
    titled = [ax.get_title() for ax in fig.axes if ax.get_title()]
    assert titled == ["layer 1, head 0", "layer 1, head 1", "layer 1, head 2"]
    plt.close(fig)
    with pytest.raises(ValueError, match="does not match 3 tokens"):
        plot_attention(None, maps[0], list("abc"))


def test_residual_stream_matches_the_model_and_starts_context_free():
    from companion.attention_explorer import residual_stream
    from companion.model import GPT, GPTConfig

    torch.manual_seed(0)
    model = GPT(GPTConfig(vocab_size=20, context_length=8, n_layer=2, n_head=2, d_model=8)).eval()
    idx = torch.tensor([[1, 5, 7], [2, 5, 7]])  # token 5 at position 1 after different tokens
    states = residual_stream(model, idx)
    assert states.shape == (3, 2, 3, 8)
    torch.testing.assert_close(model.ln_f(states[-1]), model.hidden_states(idx))
    assert torch.equal(states[0, 0, 1], states[0, 1, 1])  # embeddings ignore context
    assert not torch.allclose(states[1, 0, 1], states[1, 1, 1])  # attention mixes context in


def test_sense_similarity_by_hand():
    from companion.attention_explorer import sense_similarity

    a = torch.tensor([[1.0, 0.0], [2.0, 0.0], [0.0, 1.0]])
    b = torch.tensor([[0.0, 3.0], [0.0, 1.0]])
    sims = sense_similarity(a, b)
    # within a: pairs (0,1)=1, (0,2)=0, (1,2)=0 → 1/3; within b: 1; across: (0+0+1+... )/6
    assert sims == pytest.approx({"within a": 1 / 3, "within b": 1.0, "across": 2 / 6})
    with pytest.raises(ValueError, match="at least 2 vectors"):
        sense_similarity(a[:1], b)


def test_explorer_docstring_examples_run():
    import doctest

    import companion.attention_explorer

    result = doctest.testmod(companion.attention_explorer)
    assert result.attempted > 0 and result.failed == 0


def test_similarity_by_pair_kind_by_hand():
    from companion.attention_explorer import similarity_by_pair_kind

    # Rows 0 and 1: sense a, template t (cosine 1); row 2: sense a, template u, orthogonal to
    # rows 0 and 1; row 3: sense b, at 45 degrees to every other row (cosine 1/√2).
    s = 2**-0.5
    v = torch.tensor([[1.0, 0.0], [2.0, 0.0], [0.0, 1.0], [1.0, 1.0]])
    sims = similarity_by_pair_kind(v, ["a", "a", "a", "b"], ["t", "t", "u", "w"])
    assert sims == pytest.approx(
        {"same sense, same template": 1.0, "same sense, other template": 0.0, "other sense": s}
    )
    with pytest.raises(ValueError, match="one sense and one template per row"):
        similarity_by_pair_kind(v, ["a"] * 3, ["t"] * 4)
    with pytest.raises(ValueError, match="no pairs of kind"):
        similarity_by_pair_kind(v, ["a", "a", "b", "b"], ["t", "u", "v", "w"])  # no same template


def test_attention_pattern_shares_by_hand_and_on_a_model():
    from companion.attention_explorer import attention_pattern_shares
    from companion.model import GPT, GPTConfig

    # A previous-token head over four tokens: queries 2 and 3 put everything on t - 1.
    previous = torch.tensor([[1.0, 0, 0, 0], [1.0, 0, 0, 0], [0, 1.0, 0, 0], [0, 0, 1.0, 0]])
    uniform = torch.tril(torch.ones(4, 4)) / torch.arange(1, 5)[:, None]  # row t: 1 / (t + 1)
    shares = attention_pattern_shares(torch.stack([previous, uniform]))  # (2,) each
    assert shares["previous"].tolist() == pytest.approx([1.0, (1 / 3 + 1 / 4) / 2])
    assert shares["self"].tolist() == pytest.approx([0.0, (1 / 3 + 1 / 4) / 2])
    assert shares["first"].tolist() == pytest.approx([0.0, (1 / 3 + 1 / 4) / 2])
    assert shares["elsewhere"].tolist() == pytest.approx([0.0, (0 + 1 / 4) / 2])
    torch.manual_seed(0)
    model = GPT(GPTConfig(vocab_size=20, context_length=8, n_layer=2, n_head=3, d_model=12)).eval()
    maps = model.attention_maps(torch.randint(0, 20, (2, 8)))  # (L, B, H, T, T)
    total = sum(attention_pattern_shares(maps).values())  # (L, B, H)
    assert total.shape == (2, 2, 3)
    torch.testing.assert_close(total, torch.ones(2, 2, 3))  # the four shares split each row
    with pytest.raises(ValueError, match="T >= 3"):
        attention_pattern_shares(torch.ones(2, 2))


def test_power_law_exponent_by_hand_and_timing_shape():
    from companion.attention_explorer import power_law_exponent, time_attention

    assert power_law_exponent([1, 2, 4, 8], [5, 10, 20, 40]) == pytest.approx(1.0)
    assert power_law_exponent([2, 4, 8], [0.5 * 2**2, 0.5 * 4**2, 0.5 * 8**2]) == pytest.approx(2.0)
    seconds = time_attention([8, 16], n_head=1, head_size=4, attention="manual", repeats=1)
    assert len(seconds) == 2 and all(s > 0 for s in seconds)
    unmasked = time_attention([8], n_head=1, head_size=4, causal=False, repeats=1)
    assert len(unmasked) == 1 and unmasked[0] > 0
    with pytest.raises(ValueError, match="'fused' or 'manual'"):
        time_attention([8], attention="flash")
