"""FLOPs per token against a count of the model's matrix products, and the MFU arithmetic."""

from __future__ import annotations

import doctest

import pytest
import torch
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.utils.flop_counter import FlopCounterMode

import companion.compute
from companion.compute import flops_per_token, matmul_parameters, measure_peak_flops, mfu
from companion.model import GPT, GPTConfig, count_parameters


def test_docstring_examples_run():
    result = doctest.testmod(companion.compute)
    assert result.attempted > 0 and result.failed == 0


@pytest.mark.parametrize(
    "config",
    [
        GPTConfig(vocab_size=768, context_length=64, n_layer=4, n_head=4, d_model=128),
        GPTConfig(vocab_size=50, context_length=24, n_layer=2, n_head=3, d_model=48),
    ],
)
def test_flops_per_token_equal_a_count_of_the_models_matrix_products(config):
    torch.manual_seed(0)
    model = GPT(config)
    B, T = 2, config.context_length
    x = torch.randint(0, config.vocab_size, (B, T))
    # the math kernel writes attention as two batched products, which the counter sees
    with sdpa_kernel(SDPBackend.MATH), FlopCounterMode(display=False) as counter:
        _, loss = model(x, x)
        forward = counter.get_total_flops()
        loss.backward()
    total = counter.get_total_flops()
    # every product counted exactly: integers, no tolerance needed
    assert forward == B * T * flops_per_token(config, training=False)
    assert total == B * T * flops_per_token(config)


def test_matmul_parameters_leave_out_embeddings_biases_and_norms():
    c = GPTConfig(vocab_size=768, context_length=64, n_layer=4, n_head=4, d_model=128)
    extra = count_parameters(c) - matmul_parameters(c)
    position = 64 * 128  # looked up, not multiplied
    per_block = 3 * 128 + 128 + 4 * 128 + 128 + 2 * 2 * 128  # biases of 4 linears, 2 norms
    assert extra == position + 4 * per_block + 2 * 128  # and the final norm


def test_peak_is_positive_and_mfu_of_the_peak_itself_is_one():
    peak = measure_peak_flops("cpu", size=256, repeats=2)
    assert peak > 1e6
    c = GPTConfig(vocab_size=11, context_length=8, n_layer=1, n_head=1, d_model=4)
    tokens_per_second = peak / flops_per_token(c)
    assert mfu(c, tokens_per_second, peak) == pytest.approx(1.0)


def test_the_scale_command_trains_and_reports_its_compute(tmp_path, capsys):
    import json

    from companion.scale import main

    main([
        "--layers", "1", "--heads", "2", "--width", "16", "--context", "16", "--documents", "30",
        "--steps", "3", "--batch", "2", "--out", str(tmp_path), "--quiet",
    ])  # fmt: skip
    figures = json.loads(capsys.readouterr().out)
    config = GPTConfig(vocab_size=768, context_length=16, n_layer=1, n_head=2, d_model=16)
    assert figures["processes"] == 1 and figures["tokens_trained"] == 3 * 2 * 16
    assert figures["flops"] == 3 * 2 * 16 * flops_per_token(config)
    assert figures["parameters"] == count_parameters(config)
    assert 0 < figures["mfu"] < 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["step-000003"]


def test_compute_refuses_impossible_inputs():
    c = GPTConfig(vocab_size=11, context_length=8, n_layer=1, n_head=1, d_model=4)
    for context in (0, -8, 3.5, True, 9):  # 9: longer than the model's window
        with pytest.raises(ValueError, match="context"):
            flops_per_token(c, context)
    for tokens in (-1, 2.5, float("nan")):
        with pytest.raises(ValueError, match="tokens"):
            companion.compute.training_flops(c, tokens)
        with pytest.raises(ValueError, match="tokens"):
            companion.compute.tokens_per_parameter(c, tokens)
    for peak in (0, -1.0, float("nan"), float("inf")):
        with pytest.raises(ValueError, match="peak_flops"):
            mfu(c, 1000, peak)
    with pytest.raises(ValueError, match="size"):
        measure_peak_flops(size=0)
    with pytest.raises(ValueError, match="repeats"):
        measure_peak_flops(size=8, repeats=0)


def test_the_scale_command_refuses_bad_arguments_before_it_trains(tmp_path, capsys):
    from companion.scale import main

    (tmp_path / "step-000003").mkdir()  # an earlier run's checkpoint
    new = str(tmp_path / "new")
    cases = {
        ("--out", str(tmp_path)): "already holds checkpoints",
        ("--out", " "): "--out is empty",
        ("--out", new, "--resume", str(tmp_path / "missing")): "no such checkpoint folder",
        ("--out", new, "--threads", "0"): "--threads 0",
    }
    for args, message in cases.items():
        with pytest.raises(SystemExit):
            main([*args, "--quiet"])
        assert message in capsys.readouterr().err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["step-000003"]  # nothing written
