"""Checkpoints: round trips without pickle, atomic saves, clear errors for mismatched or damaged
files, the base model."""

from __future__ import annotations

import doctest
import json
import os

import pytest
import torch
from safetensors.torch import load_file

import companion.base_model
import companion.checkpoints
from companion.base_model import base_model_configs, train_base_model
from companion.checkpoints import (
    META_FILE,
    MODEL_FILE,
    OPTIMIZER_FILE,
    load_checkpoint,
    load_shipped,
    save_checkpoint,
    shipped_info,
    shipped_path,
)
from companion.environment import make_generator
from companion.model import GPT, GPTConfig
from companion.optimizer import make_optimizer
from companion.pretraining import init_model
from companion.train_config import History, TrainConfig

TINY = GPTConfig(vocab_size=11, context_length=8, n_layer=1, n_head=2, d_model=8)
CONFIG = TrainConfig(steps=10, warmup_steps=1, device="cpu")


@pytest.mark.parametrize("module", [companion.checkpoints, companion.base_model])
def test_docstring_examples_run(module):
    result = doctest.testmod(module)
    assert result.attempted > 0 and result.failed == 0


def _trained_optimizer(model: GPT) -> torch.optim.AdamW:
    optimizer = make_optimizer(model, CONFIG)
    x = torch.randint(0, 11, (2, 8), generator=make_generator(0))
    _, loss = model(x, x)
    loss.backward()
    optimizer.step()
    return optimizer


def test_round_trip_without_pickle(tmp_path):
    model = init_model(TINY, seed=0)
    optimizer = _trained_optimizer(model)
    generator = make_generator(7)
    torch.rand(3, generator=generator)
    history = History(step=[5], train_loss=[1.5], val_loss=[1.75], learning_rate=[0.1],
                      tokens_seen=[80], seconds=[0.5])  # fmt: skip
    path = save_checkpoint(
        tmp_path / "ckpt", model, optimizer=optimizer, train_config=CONFIG, history=history,
        step=5, generator=generator, extra={"note": "hi"},
    )  # fmt: skip
    assert sorted(p.name for p in path.iterdir()) == sorted([META_FILE, MODEL_FILE, OPTIMIZER_FILE])
    json.loads((path / META_FILE).read_text())  # plain JSON ...
    stored = load_file(path / MODEL_FILE)  # ... and plain safetensors
    assert len({"lm_head.weight", "wte.weight"} & set(stored)) == 1  # the tied matrix, once
    fresh = init_model(TINY, seed=1)
    fresh_optimizer = make_optimizer(fresh, CONFIG)
    state = load_checkpoint(path, fresh, optimizer=fresh_optimizer, device="cpu")
    for a, b in zip(model.state_dict().values(), fresh.state_dict().values(), strict=True):
        assert torch.equal(a, b)
    assert fresh.lm_head.weight is fresh.wte.weight and not fresh.training
    assert (state.step, state.train_config, state.history, state.extra) == (
        5,
        CONFIG,
        history,
        {"note": "hi"},
    )
    again = torch.Generator()
    again.set_state(state.generator_state)
    assert torch.equal(torch.rand(3, generator=again), torch.rand(3, generator=generator))
    ours, theirs = optimizer.state_dict(), fresh_optimizer.state_dict()
    for index, values in ours["state"].items():
        for key, value in values.items():
            assert torch.equal(value, theirs["state"][index][key])
    assert ours["param_groups"] == theirs["param_groups"]
    built = load_checkpoint(path).model  # without a model: built from the saved GPTConfig
    assert built.config == TINY and torch.equal(built.wte.weight, model.wte.weight)


def test_a_crash_mid_save_leaves_the_previous_checkpoint(tmp_path, monkeypatch):
    path = tmp_path / "ckpt"
    old = init_model(TINY, seed=0)
    save_checkpoint(path, old, step=1)

    def half_then_crash(model, filename, metadata=None, force_contiguous=False):
        with open(filename, "wb") as file:
            file.write(b"half a file")
        raise OSError("disk full")

    monkeypatch.setattr(companion.checkpoints, "save_model", half_then_crash)
    with pytest.raises(OSError, match="disk full"):
        save_checkpoint(path, init_model(TINY, seed=1), step=2)
    assert os.listdir(tmp_path) == ["ckpt"]  # no temporary or partial directory left behind
    state = load_checkpoint(path)
    assert state.step == 1 and torch.equal(state.model.wte.weight, old.wte.weight)


def test_overwrite_and_recovery_between_the_renames(tmp_path):
    path = tmp_path / "ckpt"
    save_checkpoint(path, init_model(TINY, seed=0), step=1)
    save_checkpoint(path, init_model(TINY, seed=1), step=2)  # replaces it
    assert os.listdir(tmp_path) == ["ckpt"] and load_checkpoint(path).step == 2
    os.replace(path, tmp_path / ".ckpt.previous")  # as if the process died between the renames
    assert load_checkpoint(path).step == 2
    with pytest.raises(FileNotFoundError, match="no checkpoint at"):
        load_checkpoint(tmp_path / "elsewhere")


def test_mismatched_config_names_the_field(tmp_path):
    path = save_checkpoint(tmp_path / "ckpt", init_model(TINY, seed=0))
    deeper = GPT(GPTConfig(vocab_size=11, context_length=8, n_layer=2, n_head=2, d_model=8))
    with pytest.raises(ValueError, match=r"GPTConfig\.n_layer differs: 2 in the model, 1 in the"):
        load_checkpoint(path, deeper)


def test_mismatched_shape_names_the_tensor(tmp_path):
    path = save_checkpoint(tmp_path / "ckpt", init_model(TINY, seed=0))
    meta = json.loads((path / META_FILE).read_text())
    meta["model_config"]["vocab_size"] = 12  # a config that lies about the tensors
    (path / META_FILE).write_text(json.dumps(meta))
    bigger = GPT(GPTConfig(vocab_size=12, context_length=8, n_layer=1, n_head=2, d_model=8))
    with pytest.raises(
        ValueError, match=r"(?s)model.safetensors does not fit.*size mismatch.*\[11, 8\]"
    ):
        load_checkpoint(path, bigger)


@pytest.mark.parametrize(
    ("damage", "message"),
    [
        ("truncate the tensors", r"model\.safetensors is damaged.*save the checkpoint again"),
        ("delete the tensors", r"model\.safetensors is missing.*save it again"),
        ("break the JSON", r"checkpoint\.json cannot be read as a checkpoint.*save it again"),
        ("empty the JSON", r"checkpoint\.json is not a 'companion-checkpoint v1' file"),
        ("truncate the optimizer", r"optimizer\.safetensors is damaged"),
    ],
)
def test_a_damaged_checkpoint_names_the_file_and_the_fix(tmp_path, damage, message):
    model = init_model(TINY, seed=0)
    path = save_checkpoint(tmp_path / "ckpt", model, optimizer=_trained_optimizer(model))
    tensors, meta, moments = path / MODEL_FILE, path / META_FILE, path / OPTIMIZER_FILE
    if damage == "truncate the tensors":
        tensors.write_bytes(tensors.read_bytes()[:-100])  # as a download or copy cut short
    elif damage == "delete the tensors":
        tensors.unlink()
    elif damage == "break the JSON":
        meta.write_text(meta.read_text()[:50])
    elif damage == "empty the JSON":
        meta.write_text("{}")
    else:
        moments.write_bytes(moments.read_bytes()[:30])
    with pytest.raises(ValueError, match=message) as error:
        load_checkpoint(path, init_model(TINY, seed=0), optimizer=make_optimizer(model, CONFIG))
    assert str(path) in str(error.value)  # the message names the file


def test_optimizer_state_missing_or_mismatched(tmp_path):
    path = save_checkpoint(tmp_path / "ckpt", init_model(TINY, seed=0))
    model = init_model(TINY, seed=0)
    with pytest.raises(ValueError, match="no optimizer state"):
        load_checkpoint(path, model, optimizer=make_optimizer(model, CONFIG))


# --- the shipped base model --------------------------------------------------------------------


def test_base_model_loads_in_eval_mode_and_matches_its_json():
    info = shipped_info("base")
    model, tokenizer = load_shipped("base", "cpu")
    assert not model.training
    assert model.config == GPTConfig(**info["model_config"])  # fields added later: defaults
    model_config, train_config = base_model_configs()
    assert model.config == model_config and info["train_config"] == train_config.to_dict()
    assert model.config.vocab_size == tokenizer.vocab_size
    size = sum(f.stat().st_size for f in shipped_path("base").iterdir())
    assert size < 10 * 2**20
    assert not (shipped_path("base") / OPTIMIZER_FILE).exists()
    ids = torch.tensor([tokenizer.encode("Mira lives in the town of")])
    assert model.hidden_states(ids).shape == (
        1,
        ids.shape[1],
        model.config.d_model,
    )  # a value head reads these
    assert info["extra"]["fact_accuracy"] > 0.5 and info["extra"]["val_loss"] < 1.5


VAL_LOSS_TOLERANCE = 0.02  # CPU float sums differ a little with the thread count and the CPU


@pytest.mark.slow
def test_the_documented_command_reproduces_the_shipped_base_model(tmp_path):
    """Slow on purpose (about 3-5 minutes): retrain the base model and compare."""
    figures = train_base_model(tmp_path / "base", progress=False)
    shipped = shipped_info("base")
    fresh = json.loads((tmp_path / "base" / META_FILE).read_text())
    assert GPTConfig(**fresh["model_config"]) == GPTConfig(**shipped["model_config"])
    assert fresh["train_config"] == shipped["train_config"]
    assert abs(figures["val_loss"] - shipped["extra"]["val_loss"]) < VAL_LOSS_TOLERANCE
