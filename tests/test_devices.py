"""The same loop on an accelerator: CUDA (bf16 autocast where it is native) and MPS.

Each test runs once per accelerator this machine has and is skipped where there is none (the
CPU is covered everywhere else), so a GPU session, Colab, or a Mac checks the device paths with
``python -m pytest tests/test_devices.py``.
"""

from __future__ import annotations

import math

import pytest
import torch

from companion.checkpoints import load_checkpoint, load_shipped, save_checkpoint
from companion.data import get_batch
from companion.environment import make_generator
from companion.pretraining import init_model, train
from companion.train_config import TrainConfig

from _tiny import TINY, TOKENIZER, TOKENS, tiny_config


def _available(name: str) -> bool:
    if name == "cuda":
        return torch.cuda.is_available()
    return torch.backends.mps.is_available()


ACCELERATORS = [
    pytest.param(name, marks=pytest.mark.skipif(not _available(name), reason=f"no {name} here"))
    for name in ("cuda", "mps")
]


def device_config(device: str, **changes) -> TrainConfig:
    """The CPU tests' tiny config, run longer (60 steps) on ``device``."""
    return tiny_config(
        **({"steps": 60, "eval_interval": 20, "learning_rate": 1e-2} | changes), device=device
    )


@pytest.mark.parametrize("device", ACCELERATORS)
def test_training_on_the_device_drives_the_loss_down(device):
    model = init_model(TINY, seed=0, device=device)
    history = train(model, TOKENS, TOKENS, device_config(device), progress=False)
    assert next(model.parameters()).device.type == device
    assert history.val_loss[0] > history.val_loss[-1]
    assert history.val_loss[-1] < math.log(TOKENIZER.vocab_size) / 3


@pytest.mark.parametrize("device", ACCELERATORS)
def test_the_device_follows_the_cpu_run(device):
    """Same seed, same batches: the device's losses track the CPU's (bf16 autocast included)."""
    on_cpu = train(init_model(TINY, seed=0), TOKENS, TOKENS, device_config("cpu"), progress=False)
    model = init_model(TINY, seed=0, device=device)
    on_device = train(model, TOKENS, TOKENS, device_config(device), progress=False)
    for a, b in zip(on_cpu.val_loss, on_device.val_loss, strict=True):
        assert a == pytest.approx(b, abs=0.1)


@pytest.mark.parametrize("device", ACCELERATORS)
def test_resume_on_the_device_continues_the_run(device, tmp_path):
    config = device_config(device, steps=8, eval_interval=2)
    straight = train(
        init_model(TINY, seed=0, device=device), TOKENS, TOKENS, config, progress=False
    )
    config = device_config(
        device, steps=8, eval_interval=2, checkpoint_dir=str(tmp_path), checkpoint_interval=4
    )
    train(init_model(TINY, seed=0, device=device), TOKENS, TOKENS, config, progress=False)
    resumed = train(
        init_model(TINY, seed=9, device=device), TOKENS, TOKENS, config, progress=False,
        resume_from=tmp_path / "step-000004",
    )  # fmt: skip
    assert resumed.step == straight.step
    for a, b in zip(straight.val_loss, resumed.val_loss, strict=True):
        assert a == pytest.approx(b, rel=1e-4)  # GPU kernels may add up in another order


@pytest.mark.parametrize("device", ACCELERATORS)
def test_a_device_checkpoint_loads_on_the_cpu(device, tmp_path):
    model = init_model(TINY, seed=0, device=device)
    save_checkpoint(tmp_path / "ckpt", model, generator=make_generator(0))
    state = load_checkpoint(tmp_path / "ckpt", device="cpu")
    for a, b in zip(model.state_dict().values(), state.model.state_dict().values(), strict=True):
        assert b.device.type == "cpu" and torch.equal(a.cpu(), b)


@pytest.mark.parametrize("device", ACCELERATORS)
def test_the_base_model_gives_the_same_logits_on_the_device(device):
    cpu_model, _ = load_shipped("base", "cpu")
    device_model, _ = load_shipped("base", device)
    x, _ = get_batch(torch.arange(500) % TINY.vocab_size, 2, 16, generator=make_generator(0))
    with torch.no_grad():
        expected, _ = cpu_model(x)
        got, _ = device_model(x.to(device))
    torch.testing.assert_close(got.cpu(), expected, atol=1e-3, rtol=1e-3)


# --- functions that use a model run it where it is ---------------------------------------------
# The best device is faked as "meta" (a device with no data): a function that moved the model to
# the best device would leave its weights there, and generating from them would fail.


@pytest.fixture
def best_is_elsewhere(monkeypatch):
    import companion.environment

    monkeypatch.setattr(companion.environment, "default_device", lambda: torch.device("meta"))
    assert companion.environment.resolve_device(None) == torch.device("meta")


@pytest.fixture(scope="module")
def course_models():
    chat_model, tokenizer = load_shipped("chat", "cpu")
    base, _ = load_shipped("base", "cpu")
    return base, chat_model, tokenizer


def _stayed(*models) -> bool:
    return all(p.device.type == "cpu" for m in models for p in m.parameters())


def test_chat_runs_the_model_where_it_is(best_is_elsewhere, course_models):
    from companion.chat import as_messages, chat

    _, chat_model, tokenizer = course_models
    reply = chat(chat_model, tokenizer, as_messages("Where does Mira live?"))
    assert reply.finished and _stayed(chat_model)


def test_the_hallucination_questions_run_the_model_where_it_is(best_is_elsewhere, course_models):
    from companion.hallucination import ask, fact_prompt
    from companion.world import build_world

    base, _, tokenizer = course_models
    world = build_world(0)
    facts = [*world.facts[:2], *world.held_out_facts[:2]]
    answers = ask(base, tokenizer, world, facts, fact_prompt(tokenizer))
    assert len(answers) == 4 and _stayed(base)


def test_preference_sampling_runs_the_model_where_it_is(best_is_elsewhere, course_models):
    from companion.preferences import make_prompts, sample_replies
    from companion.world import build_world

    _, chat_model, tokenizer = course_models
    prompts = make_prompts(build_world(0), split="eval")[::40]
    samples = sample_replies(chat_model, tokenizer, prompts, seed=0)
    assert len(samples) == len(prompts) and _stayed(chat_model)


def test_ppo_keeps_policy_value_head_reference_and_ids_on_the_policys_device(
    best_is_elsewhere, course_models
):
    import copy

    from companion.ppo import PPOConfig, train_ppo
    from companion.preferences import make_prompts
    from companion.reward_model import RewardModel
    from companion.world import build_world

    _, chat_model, tokenizer = course_models
    reward_model = RewardModel(copy.deepcopy(chat_model))
    prompts = make_prompts(build_world(0), split="train")[::50]
    config = PPOConfig(iterations=1, batch_size=2, epochs=1, minibatch_size=2, max_new_tokens=4)
    policy, log = train_ppo(chat_model, tokenizer, reward_model, prompts, config)
    assert len(log.reward) == 1 and _stayed(chat_model, reward_model, policy)


def test_the_effects_measurement_runs_the_model_where_it_is(best_is_elsewhere, course_models):
    from companion.effects import EFFECTS, measure_effects
    from companion.world import build_world

    _, chat_model, tokenizer = course_models
    effects = measure_effects(chat_model, tokenizer, build_world(0), n_samples=1)
    assert set(EFFECTS) <= set(effects) and _stayed(chat_model)


@pytest.mark.parametrize("device", ACCELERATORS)
def test_chat_ppo_and_dpo_run_on_the_models_device(device):
    """On a GPU runtime every part of chapter 6 stays where the chat model is."""
    import copy

    from companion.chat import as_messages, chat
    from companion.dpo import DPOConfig, train_dpo
    from companion.ppo import PPOConfig, train_ppo
    from companion.preferences import Preference, Sample, make_prompts
    from companion.reward_model import RewardModel
    from companion.world import build_world

    chat_model, tokenizer = load_shipped("chat", device)
    assert isinstance(chat(chat_model, tokenizer, as_messages("Hello!")), str)
    prompts = make_prompts(build_world(0), split="train")[::50]
    reward_model = RewardModel(copy.deepcopy(chat_model))
    config = PPOConfig(iterations=1, batch_size=2, epochs=1, minibatch_size=2, max_new_tokens=4)
    policy, _ = train_ppo(chat_model, tokenizer, reward_model, prompts, config)
    pairs = [Preference(p, Sample((), "Yes.", True), Sample((), "No", False), "stops", False)
             for p in prompts[:2]]  # fmt: skip
    tuned, _ = train_dpo(chat_model, tokenizer, pairs, DPOConfig(steps=1, batch_size=2))
    for model in (chat_model, reward_model, policy, tuned):
        assert {p.device.type for p in model.parameters()} == {device}
