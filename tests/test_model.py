"""The GPT: parity with Hugging Face's GPT-2, parameter counts, causality, and bad input."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from companion.model import GPT, GPTConfig, count_parameters, parameter_breakdown

TINY = GPTConfig(vocab_size=37, context_length=12, n_layer=2, n_head=2, d_model=16)


def _tiny_model(config: GPTConfig = TINY, seed: int = 0) -> GPT:
    torch.manual_seed(seed)
    return GPT(config).eval()


def _ids(B: int, T: int, V: int = TINY.vocab_size, seed: int = 0) -> torch.Tensor:
    return torch.randint(0, V, (B, T), generator=torch.Generator().manual_seed(seed))


def _hf_gpt2(**config) -> torch.nn.Module:
    """A randomly initialised ``transformers`` GPT2LMHeadModel of the given shape."""
    transformers = pytest.importorskip("transformers")
    transformers.logging.set_verbosity_error()
    hf_config = transformers.GPT2Config(bos_token_id=0, eos_token_id=0, **config)
    return transformers.GPT2LMHeadModel(hf_config)


@pytest.fixture(scope="module")
def hf_gpt2():
    torch.manual_seed(0)
    return _hf_gpt2(vocab_size=97, n_positions=24, n_embd=48, n_layer=3, n_head=4).eval()


def test_logits_equal_hugging_face_gpt2(hf_gpt2):
    model = GPT.from_hf_gpt2(hf_gpt2).eval()
    assert model.config == GPTConfig(97, 24, 3, 4, 48, activation="gelu_tanh")
    idx = _ids(2, 24, V=97)
    with torch.no_grad():
        expected = hf_gpt2(idx).logits
        logits, loss = model(idx)
        assert loss is None
        # Both compute the same float32 sums in other orders (HF's Conv1D is addmm on the
        # transposed weight, its attention another kernel): the logits (|logit| < 1 here) agree to
        # a few float32 roundings per layer, about 1e-6. 1e-4 leaves room for any CPU's kernels.
        torch.testing.assert_close(logits, expected, atol=1e-4, rtol=0)
        # The loss agrees too (HF shifts internally; we take targets already shifted).
        _, loss = model(idx[:, :-1], targets=idx[:, 1:])
        hf_loss = hf_gpt2(idx, labels=idx).loss
    torch.testing.assert_close(loss, hf_loss, atol=1e-5, rtol=0)
    assert model.lm_head.weight is model.wte.weight


def test_from_hf_rejects_other_models():
    with pytest.raises(ValueError, match="GPT2LMHeadModel"):
        GPT.from_hf_gpt2(torch.nn.Linear(2, 2))


def test_gpt2_small_parameter_count():
    assert count_parameters(GPTConfig(50257, 1024, 12, 12, 768)) == 124_439_808


@pytest.mark.parametrize(
    "config",
    [TINY, GPTConfig(50, 8, 3, 4, 32, bias=False), GPTConfig(10, 4, 1, 1, 2)],
    ids=["tiny", "no-bias", "smallest"],
)
def test_parameter_formula_equals_module(config: GPTConfig):
    model = GPT(config)
    actual = sum(p.numel() for p in model.parameters())  # the tied head is one tensor
    assert count_parameters(config) == actual
    breakdown = parameter_breakdown(config)
    assert sum(breakdown.values()) == actual
    attention = sum(p.numel() for b in model.blocks for p in b.attn.parameters())
    feed_forward = sum(p.numel() for b in model.blocks for p in b.mlp.parameters())
    assert breakdown["attention"] == attention
    assert breakdown["feed-forward"] == feed_forward


def test_changing_a_future_token_never_changes_an_earlier_logit():
    model = _tiny_model()
    idx = _ids(1, 10)
    changed = idx.clone()
    changed[0, 6] = (idx[0, 6] + 1) % TINY.vocab_size
    with torch.no_grad():
        a, _ = model(idx)
        b, _ = model(changed)
        maps_a, maps_b = model.attention_maps(idx), model.attention_maps(changed)
    assert torch.equal(a[:, :6], b[:, :6])  # exact: masked keys get weight exactly 0
    assert not torch.allclose(a[:, 6:], b[:, 6:])
    assert torch.equal(maps_a[..., :6, :], maps_b[..., :6, :])  # the from-scratch path too


def test_loss_is_mean_cross_entropy_ignoring_minus_100():
    model = _tiny_model()
    idx = _ids(2, 5)
    targets = _ids(2, 5, seed=1)
    targets[0, :3] = -100
    logits, loss = model(idx, targets=targets)
    keep = targets != -100
    expected = -F.log_softmax(logits, -1)[keep].gather(1, targets[keep][:, None]).mean()
    torch.testing.assert_close(loss, expected)
    assert loss.shape == ()


def test_untrained_loss_is_near_ln_vocab():
    model = _tiny_model(
        GPTConfig(vocab_size=500, context_length=16, n_layer=2, n_head=2, d_model=32)
    )
    idx = _ids(4, 16, V=500)
    _, loss = model(idx, targets=_ids(4, 16, V=500, seed=1))
    assert abs(loss.item() - math.log(500)) < 0.1


def test_hidden_states_feed_the_lm_head():
    model = _tiny_model()
    idx = _ids(2, 7)
    hidden = model.hidden_states(idx)
    assert hidden.shape == (2, 7, TINY.d_model)
    logits, _ = model(idx)
    torch.testing.assert_close(hidden @ model.wte.weight.T, logits)


def test_attention_maps_shape_rows_and_causality():
    model = _tiny_model()
    maps = model.attention_maps(_ids(2, 6))
    assert maps.shape == (TINY.n_layer, 2, TINY.n_head, 6, 6)
    torch.testing.assert_close(maps.sum(-1), torch.ones(2, 2, 2, 6))
    assert torch.all(maps.triu(diagonal=1) == 0)
    assert not maps.requires_grad


def test_init_is_deterministic_given_the_global_seed_and_gpt2_style():
    a, b = _tiny_model(seed=3), _tiny_model(seed=3)
    for (name, p), q in zip(a.state_dict().items(), b.state_dict().values(), strict=True):
        assert torch.equal(p, q), name
    big = _tiny_model(GPTConfig(100, 8, 8, 4, 256), seed=0)
    assert abs(big.blocks[0].mlp.fc.weight.std().item() - 0.02) < 1e-3
    assert abs(big.blocks[0].mlp.proj.weight.std().item() - 0.02 / math.sqrt(16)) < 3e-4


def test_gelu_variants_differ():
    exact = _tiny_model(seed=0)
    tanh = _tiny_model(GPTConfig(**{**TINY.to_dict(), "activation": "gelu_tanh"}), seed=0)
    idx = _ids(1, 8)
    assert not torch.equal(exact(idx)[0], tanh(idx)[0])


def test_too_long_sequence_raises():
    model = _tiny_model()
    with pytest.raises(ValueError, match=r"T=13 is longer than context_length=12.*idx\[:, -12:\]"):
        model(_ids(1, 13))


def test_token_outside_vocabulary_raises():
    model = _tiny_model()
    idx = _ids(2, 4)
    idx[1, 2] = 37
    with pytest.raises(ValueError, match=r"idx holds token id 37 at index \(1, 2\).*\[0, 37\)"):
        model(idx)
    with pytest.raises(ValueError, match=r"token id -1"):
        model(torch.tensor([[-1, 2]]))
    with pytest.raises(ValueError, match=r"targets holds token id 40"):
        model(_ids(1, 3), targets=torch.tensor([[1, 40, 2]]))


def test_forward_reads_no_values_off_the_cpu():
    """Off the CPU the id checks are skipped: they would sync the device at every forward.

    On the meta device tensors have no values, so any check that reads one raises here.
    """
    model = _tiny_model().to("meta")
    idx = torch.full((2, 4), 99, device="meta")  # out of range, and nobody looks
    logits, loss = model(idx, targets=idx)
    assert logits.shape == (2, 4, model.config.vocab_size) and loss.shape == ()
    with pytest.raises(ValueError, match="T=13"):  # shape checks stay: they read no values
        model(torch.zeros(1, 13, dtype=torch.long, device="meta"))


def test_other_bad_idx_and_targets_raise():
    model = _tiny_model()
    with pytest.raises(ValueError, match="int64"):
        model(torch.zeros(1, 3))
    with pytest.raises(ValueError, match=r"\(B, T\)"):
        model(torch.tensor([1, 2]))
    with pytest.raises(ValueError, match="T=0"):
        model(torch.zeros(1, 0, dtype=torch.long))
    with pytest.raises(ValueError, match=r"targets shape \(1, 2\) must equal idx shape \(1, 3\)"):
        model(_ids(1, 3), targets=_ids(1, 2))


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"d_model": 30, "n_head": 4}, r"d_model=30 is not divisible by n_head=4"),
        ({"vocab_size": 0}, r"vocab_size=0 must be a positive int"),
        ({"dropout": 1.5}, r"dropout=1.5"),
        ({"activation": "relu"}, r"activation='relu'"),
    ],
)
def test_bad_config_raises(kwargs: dict, message: str):
    with pytest.raises(ValueError, match=message):
        GPTConfig(**{**TINY.to_dict(), **kwargs})


def test_from_hf_rejects_non_standard_gpt2_variants():
    hf_model = _hf_gpt2(vocab_size=11, n_positions=8, n_embd=8, n_layer=1, n_head=2, n_inner=16)
    with pytest.raises(ValueError, match=r"\['n_inner'\]"):
        GPT.from_hf_gpt2(hf_model)
