"""The training loop: shifted targets, the loss at initialisation, the schedule, accumulation,
clipping, weight-decay groups, resuming exactly (dropout's random stream too), and bad configs."""

from __future__ import annotations

import doctest
import itertools
import json
import math
import warnings

import pytest
import torch
import torch.nn.functional as F
from torch.optim.optimizer import register_optimizer_step_pre_hook

import companion.environment
import companion.optimizer
import companion.pretraining
from companion.data import get_batch
from companion.environment import make_generator
from companion.model import GPTConfig
from companion.optimizer import learning_rate_at, make_optimizer
from companion.pretraining import init_model, train
from companion.train_config import History, TrainConfig

from _tiny import TINY, TOKENIZER, TOKENS, tiny_config


@pytest.mark.parametrize("module", [companion.pretraining, companion.optimizer])
def test_docstring_examples_run(module):
    result = doctest.testmod(module)
    assert result.attempted > 0 and result.failed == 0


def test_targets_are_the_inputs_shifted_by_one():
    tokens = torch.arange(100, 200)
    x, y = get_batch(tokens, 3, 5, generator=make_generator(0), device="cpu")
    assert torch.equal(y[:, :-1], x[:, 1:])  # target t is input t + 1
    assert torch.equal(y[:, -1], x[:, -1] + 1)  # and the last target is the next token
    model = init_model(GPTConfig(200, 8, 1, 1, 8), seed=0, device="cpu")
    logits, loss = model(x, y)
    assert torch.allclose(loss, F.cross_entropy(logits.reshape(-1, 200), y.reshape(-1)))


def test_untrained_loss_is_about_ln_vocab_size():
    V = 768
    model = init_model(GPTConfig(V, 32, 2, 2, 32), seed=0, device="cpu")
    tokens = torch.randint(0, V, (5000,), generator=make_generator(0))
    x, y = get_batch(tokens, 8, 32, generator=make_generator(1), device="cpu")
    _, loss = model(x, y)
    assert abs(loss.item() - math.log(V)) < 0.05


def test_evaluate_loss_is_the_mean_batch_loss_in_eval_mode():
    model = init_model(TINY, seed=0, device="cpu")
    batches = [
        get_batch(TOKENS, 4, 16, generator=make_generator(i), device="cpu") for i in range(3)
    ]
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


def _gradients_the_optimiser_sees(
    model, config, data=(TOKENS, TOKENS), batch_fn=None
) -> list[list[torch.Tensor]]:
    """Run ``train`` and copy every gradient at each optimiser step, just before the update
    (after accumulation and clipping): one list of tensors per step."""
    steps = []

    def look(optimizer, args, kwargs):
        steps.append([p.grad.clone() for g in optimizer.param_groups for p in g["params"]])

    handle = register_optimizer_step_pre_hook(look)
    try:
        train(model, *data, config, progress=False, batch_fn=batch_fn)
    finally:
        handle.remove()
    return steps


def _global_norm(grads: list[torch.Tensor]) -> float:
    return torch.linalg.vector_norm(torch.stack([g.norm() for g in grads])).item()


def test_accumulated_gradient_equals_the_big_batch_gradient():
    """grad_accumulation=2 over the two halves of a batch gives the whole batch's gradient:
    each micro-batch's loss is divided by the number of micro-batches before backward."""
    x, y = get_batch(TOKENS, 4, 16, generator=make_generator(5), device="cpu")
    halves = itertools.cycle([(x[:2], y[:2]), (x[2:], y[2:])])

    def whole(data, generator):
        return x, y

    def in_halves(data, generator):  # the validation batches are the whole batch
        return next(halves) if data == "train" else (x, y)

    unclipped = {"steps": 1, "warmup_steps": 0, "grad_clip": None}
    big = _gradients_the_optimiser_sees(
        init_model(TINY, seed=0).double(), tiny_config(**unclipped), ("train", "val"), whole
    )
    small = _gradients_the_optimiser_sees(
        init_model(TINY, seed=0).double(),
        tiny_config(batch_size=2, grad_accumulation=2, **unclipped),
        ("train", "val"),
        in_halves,
    )
    # In float64 the two gradients differ only in the order of the same additions (a few
    # hundred terms each): at most about n·ε·Σ|terms| with ε = 2.2e-16, far below 1e-9 of the
    # largest entry on any CPU. A loss not divided by 2 would double every entry.
    for a, b in zip(big[0], small[0], strict=True):
        torch.testing.assert_close(b, a, atol=1e-9 * a.abs().max().item(), rtol=0)


def test_gradient_clipping_bounds_the_norm_the_optimiser_sees():
    limit = 0.01
    norms = {}
    for clip in (limit, None):
        steps = _gradients_the_optimiser_sees(init_model(TINY, seed=0), tiny_config(grad_clip=clip))
        norms[clip] = [_global_norm(grads) for grads in steps]
    assert len(norms[limit]) == 8
    # clip_grad_norm_ scales the gradients by limit / (norm + 1e-6), so their norm becomes the
    # limit times a factor just below 1; recomputing it in float32 over about 2,500 numbers can
    # round up by at most n·ε ≈ 3e-4 of it on any CPU. Unclipped, these gradients are far larger.
    assert all(norm <= limit * (1 + 1e-3) for norm in norms[limit])
    assert all(norm > 10 * limit for norm in norms[None])


def test_batch_fn_with_ignored_targets():
    """SFT's case: targets of -100 add nothing, so training on them changes nothing."""
    x, y = get_batch(TOKENS, 4, 16, generator=make_generator(0), device="cpu")
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


DROPOUT = GPTConfig(**{**TINY.to_dict(), "dropout": 0.2})


def test_dropout_is_seeded_by_the_config_not_the_global_state():
    torch.manual_seed(1)
    a = train(init_model(DROPOUT, seed=0), TOKENS, TOKENS, tiny_config(), progress=False)
    torch.manual_seed(2)
    before = torch.get_rng_state()
    b = train(init_model(DROPOUT, seed=0), TOKENS, TOKENS, tiny_config(), progress=False)
    assert torch.equal(torch.get_rng_state(), before)  # the caller's global state is untouched
    assert a.train_loss == b.train_loss
    c = train(init_model(DROPOUT, seed=0), TOKENS, TOKENS, tiny_config(seed=1), progress=False)
    assert c.train_loss != a.train_loss  # another seed: other batches and other dropout masks


def test_resume_with_dropout_continues_its_random_stream(tmp_path):
    """Dropout draws from torch's global generator: a resumed run must pick that stream up where
    the checkpoint left it, whatever the global state is when resuming."""
    expected = train(init_model(DROPOUT, seed=0), TOKENS, TOKENS, tiny_config(), progress=False)
    config = tiny_config(checkpoint_dir=str(tmp_path), checkpoint_interval=3)
    train(init_model(DROPOUT, seed=0), TOKENS, TOKENS, config, progress=False)
    torch.manual_seed(12345)  # another global state before resuming: it must not matter
    resumed = init_model(DROPOUT, seed=99)
    got = train(
        resumed, TOKENS, TOKENS, config, progress=False, resume_from=tmp_path / "step-000003"
    )
    assert got.train_loss == expected.train_loss and got.val_loss == expected.val_loss
    straight = train(init_model(TINY, seed=0), TOKENS, TOKENS, tiny_config(), progress=False)
    assert straight.train_loss != expected.train_loss  # dropout did act on these losses


def test_model_and_batches_share_one_default_device(monkeypatch):
    """On a machine with an accelerator, init_model and get_batch both default to it, so the
    model and its batches meet on one device. Simulated with torch's "meta" device (tensors
    without values), which no CPU code path would pick by itself."""
    monkeypatch.setattr(companion.environment, "default_device", lambda: torch.device("meta"))
    model = init_model(TINY, seed=0)
    x, y = get_batch(TOKENS, 2, 8, generator=make_generator(0))
    assert model.wte.weight.device.type == x.device.type == y.device.type == "meta"
    logits, loss = model(x, y)
    assert logits.shape == (2, 8, TINY.vocab_size) and loss.device.type == "meta"


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


def test_a_refused_resume_leaves_the_model_alone(tmp_path):
    train(
        init_model(TINY, seed=0), TOKENS, TOKENS, tiny_config(checkpoint_dir=str(tmp_path)),
        progress=False,
    )  # fmt: skip
    other = init_model(TINY, seed=1)
    before = {name: t.clone() for name, t in other.state_dict().items()}
    with pytest.raises(ValueError, match="learning_rate"):
        train(
            other, TOKENS, TOKENS, tiny_config(learning_rate=1e-3), progress=False,
            resume_from=tmp_path / "step-000008",
        )  # fmt: skip
    assert all(torch.equal(t, before[name]) for name, t in other.state_dict().items())


def test_an_infinite_learning_rate_is_refused():
    with pytest.raises(ValueError, match="finite"):
        tiny_config(learning_rate=float("inf"))
