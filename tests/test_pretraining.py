"""The training loop: shifted targets, the loss at initialisation, the schedule, accumulation,
weight-decay groups, resuming exactly, and bad configs."""

from __future__ import annotations

import doctest
import itertools
import json
import math
import warnings

import pytest
import torch
import torch.nn.functional as F

import companion.optimizer
import companion.pretraining
from companion.data import get_batch
from companion.environment import make_generator
from companion.model import GPTConfig
from companion.optimizer import learning_rate_at, make_optimizer
from companion.pretraining import History, TrainConfig, init_model, train

from _tiny import TINY, TOKENIZER, TOKENS, tiny_config


@pytest.mark.parametrize("module", [companion.pretraining, companion.optimizer])
def test_docstring_examples_run(module):
    result = doctest.testmod(module)
    assert result.attempted > 0 and result.failed == 0


def test_targets_are_the_inputs_shifted_by_one():
    tokens = torch.arange(100, 200)
    x, y = get_batch(tokens, 3, 5, generator=make_generator(0))
    assert torch.equal(y[:, :-1], x[:, 1:])  # target t is input t + 1
    assert torch.equal(y[:, -1], x[:, -1] + 1)  # and the last target is the next token
    model = init_model(GPTConfig(200, 8, 1, 1, 8), seed=0)
    logits, loss = model(x, y)
    assert torch.allclose(loss, F.cross_entropy(logits.reshape(-1, 200), y.reshape(-1)))


def test_untrained_loss_is_about_ln_vocab_size():
    V = 768
    model = init_model(GPTConfig(V, 32, 2, 2, 32), seed=0)
    tokens = torch.randint(0, V, (5000,), generator=make_generator(0))
    x, y = get_batch(tokens, 8, 32, generator=make_generator(1))
    _, loss = model(x, y)
    assert abs(loss.item() - math.log(V)) < 0.05


def test_evaluate_loss_is_the_mean_batch_loss_in_eval_mode():
    model = init_model(TINY, seed=0, device="cpu")
    batches = [get_batch(TOKENS, 4, 16, generator=make_generator(i)) for i in range(3)]
    expected = sum(model(x, y)[1].item() for x, y in batches) / 3
    for device in (None, "cpu", torch.device("cpu")):  # the model's device, a name, a device
        assert companion.pretraining.evaluate_loss(model, batches, device) == pytest.approx(
            expected, rel=1e-6
        )
    assert model.training  # the mode is restored
    with pytest.raises(ValueError, match="not a device torch knows"):
        companion.pretraining.evaluate_loss(model, batches, "gpu")


def test_learning_rate_schedule_at_known_steps():
    c = TrainConfig(steps=1100, learning_rate=1.0, min_learning_rate=0.1, warmup_steps=100)
    assert learning_rate_at(0, c) == pytest.approx(0.01)  # warm-up starts at lr / warmup
    assert learning_rate_at(49, c) == pytest.approx(0.5)
    assert learning_rate_at(99, c) == pytest.approx(1.0)  # the peak at the end of warm-up
    assert learning_rate_at(100, c) == pytest.approx(1.0)
    assert learning_rate_at(600, c) == pytest.approx(0.55)  # half-way: (1 + 0.1) / 2
    assert learning_rate_at(1100, c) == pytest.approx(0.1)
    separate = TrainConfig(steps=2000, decay_steps=1100, learning_rate=1.0, min_learning_rate=0.1)
    assert learning_rate_at(600, separate) == pytest.approx(0.55)
    assert learning_rate_at(1500, separate) == pytest.approx(0.1)  # stays at min after decay
    values = [learning_rate_at(s, c) for s in range(100, 1100)]
    assert all(a >= b for a, b in itertools.pairwise(values))  # decays monotonically


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"steps": 0}, "steps=0 must be >= 1"),
        ({"batch_size": 2.5}, "batch_size=2.5 must be an int"),
        ({"learning_rate": 0.0}, "learning_rate"),
        ({"min_learning_rate": 1.0}, "min_learning_rate"),
        ({"warmup_steps": 10}, "warmup_steps=10 leaves no room"),
        ({"betas": (0.9, 1.0)}, "betas"),
        ({"grad_clip": 0.0}, "grad_clip"),
        ({"weight_decay": -1.0}, "weight_decay"),
        ({"device": "tpu9"}, "device"),
        ({"checkpoint_interval": 0}, "checkpoint_interval"),
    ],
)
def test_bad_configs_raise_clear_errors(changes, message):
    with pytest.raises(ValueError, match=message):
        tiny_config(**changes)


def test_config_round_trips_through_json():
    config = tiny_config(betas=(0.8, 0.9))
    again = TrainConfig.from_dict(json.loads(json.dumps(config.to_dict())))
    assert again == config and again.betas == (0.8, 0.9)
    with pytest.raises(ValueError, match="unknown TrainConfig fields \\['lr'\\]"):
        TrainConfig.from_dict({"lr": 1.0})


def test_weight_decay_only_on_matrices():
    model = init_model(TINY, seed=0)
    decay, no_decay = make_optimizer(model, tiny_config(weight_decay=0.3)).param_groups
    assert decay["weight_decay"] == 0.3 and no_decay["weight_decay"] == 0.0
    assert all(p.dim() >= 2 for p in decay["params"]) and all(
        p.dim() == 1 for p in no_decay["params"]
    )
    assert any(p is model.wte.weight for p in decay["params"])  # the tied matrix, once
    n_unique = len({id(p) for p in model.parameters()})
    assert len(decay["params"]) + len(no_decay["params"]) == n_unique


def test_a_few_steps_on_repeated_text_drive_the_loss_down():
    model = init_model(TINY, seed=0)
    config = tiny_config(steps=60, eval_interval=20, learning_rate=1e-2)
    history = train(model, TOKENS, TOKENS, config, progress=False)
    assert history.step == [20, 40, 60]
    assert history.val_loss[0] > history.val_loss[1] > history.val_loss[2]
    assert history.val_loss[-1] < math.log(TOKENIZER.vocab_size) / 3  # from ln V ≈ 2.4 at step 0
    assert history.tokens_seen == [20 * 64, 40 * 64, 60 * 64]


def test_token_streams_are_checked_against_the_vocabulary_before_training():
    model = init_model(TINY, seed=0)
    before = [p.clone() for p in model.parameters()]
    too_big = torch.cat([TOKENS, torch.tensor([TINY.vocab_size + 3])])
    with pytest.raises(ValueError, match=rf"val_tokens holds token id {TINY.vocab_size + 3}"):
        train(model, TOKENS, too_big, tiny_config(), progress=False)
    with pytest.raises(ValueError, match=r"train_tokens holds token id -1.*tokenizer"):
        train(model, torch.cat([TOKENS, torch.tensor([-1])]), TOKENS, tiny_config(), progress=False)
    assert all(torch.equal(a, b) for a, b in zip(before, model.parameters(), strict=True))


def test_gradient_accumulation_matches_one_big_batch():
    x, y = get_batch(TOKENS, 4, 16, generator=make_generator(5))
    calls = {"n": 0}

    def halves(data, generator):  # micro-batches: rows 0-1, then rows 2-3, alternating
        part = calls["n"] % 2
        calls["n"] += 1
        return x[2 * part : 2 * part + 2], y[2 * part : 2 * part + 2]

    big, small = init_model(TINY, seed=0), init_model(TINY, seed=0)
    train(big, TOKENS, TOKENS, tiny_config(steps=3), progress=False, batch_fn=lambda d, g: (x, y))
    config = tiny_config(steps=3, batch_size=2, grad_accumulation=2)
    train(small, TOKENS, TOKENS, config, progress=False, batch_fn=halves)
    for a, b in zip(big.parameters(), small.parameters(), strict=True):
        torch.testing.assert_close(a, b, atol=1e-6, rtol=1e-5)


def test_batch_fn_with_ignored_targets():
    """SFT's case: targets of -100 add nothing, so training on them changes nothing."""
    x, y = get_batch(TOKENS, 4, 16, generator=make_generator(0))
    ignored = torch.full_like(y, -100)
    ignored[:, -1] = y[:, -1]  # learn only the last position
    model = init_model(TINY, seed=0)
    history = train(
        model, None, None, tiny_config(), progress=False, batch_fn=lambda d, g: (x, ignored)
    )
    assert all(math.isfinite(v) for v in history.val_loss)


def test_resume_continues_exactly(tmp_path):
    """8 steps straight vs 3 steps, a checkpoint, a fresh process-like restart, 5 more steps."""
    config = tiny_config(checkpoint_dir=str(tmp_path), checkpoint_interval=3)
    straight = init_model(TINY, seed=0)
    expected = train(straight, TOKENS, TOKENS, tiny_config(), progress=False)
    first = init_model(TINY, seed=0)
    train(first, TOKENS, TOKENS, config, progress=False)  # writes step-000003, -000006, -000008
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "step-000003",
        "step-000006",
        "step-000008",
    ]
    resumed = init_model(TINY, seed=99)  # different weights: all must come from the checkpoint
    got = train(
        resumed, TOKENS, TOKENS, config, progress=False, resume_from=tmp_path / "step-000003"
    )
    assert got.step == expected.step
    assert got.train_loss == expected.train_loss  # exact floats, also across the checkpoint
    assert got.val_loss == expected.val_loss
    assert got.learning_rate == expected.learning_rate
    for a, b in zip(straight.state_dict().values(), resumed.state_dict().values(), strict=True):
        assert torch.equal(a, b)


def test_resume_with_another_config_names_the_field(tmp_path):
    model = init_model(TINY, seed=0)
    train(model, TOKENS, TOKENS, tiny_config(checkpoint_dir=str(tmp_path)), progress=False)
    with pytest.raises(ValueError, match=r"TrainConfig\.learning_rate is 0\.001 here but 0\.003"):
        train(
            model, TOKENS, TOKENS, tiny_config(learning_rate=1e-3), progress=False,
            resume_from=tmp_path / "step-000008",
        )  # fmt: skip


def test_callback_sees_every_step_and_history_serialises(tmp_path):
    seen = []
    model = init_model(TINY, seed=0)
    history = train(
        model, TOKENS, TOKENS, tiny_config(steps=5, eval_interval=2), progress=False,
        callback=lambda step, h, m: seen.append((step, h.step[-1] if h.step else None)),
    )  # fmt: skip
    assert seen == [(1, None), (2, 2), (3, 2), (4, 4), (5, 5)]  # and a row at the last step
    assert History.load(history.save(tmp_path / "h.json")) == history


def test_progress_bar_shows_the_loss(capsys):
    train(init_model(TINY, seed=0), TOKENS, TOKENS, tiny_config(steps=4), progress=True)
    err = capsys.readouterr().err
    assert "training" in err and "val=" in err


def test_autocast_only_on_gpus_with_native_bf16(monkeypatch):
    """bf16 on Ampere-class GPUs; fp32 on the CPU, MPS and GPUs that only emulate bf16 (T4)."""
    from contextlib import nullcontext

    pretraining = companion.pretraining
    assert isinstance(pretraining._autocast(torch.device("cpu")), nullcontext)
    assert isinstance(pretraining._autocast(torch.device("mps")), nullcontext)
    monkeypatch.setattr(pretraining, "_native_bf16", lambda: False)
    assert isinstance(pretraining._autocast(torch.device("cuda")), nullcontext)
    monkeypatch.setattr(pretraining, "_native_bf16", lambda: True)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # a CPU-only build warns that CUDA autocast is disabled
        context = pretraining._autocast(torch.device("cuda"))
    assert isinstance(context, torch.autocast) and context.fast_dtype == torch.bfloat16
