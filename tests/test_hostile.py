"""Hostile inputs: what a learner might pass to the functions the notebooks call, and what the
package does with it. Each case asserts the exception's type and a phrase of its message, and
that nothing on disk or in the model changed (issue 30)."""

from __future__ import annotations

import os

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from companion.checkpoints import META_FILE, load_checkpoint, save_checkpoint
from companion.environment import make_generator
from companion.generation import next_token_probs, sample_next
from companion.model import GPTConfig
from companion.pretraining import init_model

TINY = GPTConfig(vocab_size=11, context_length=8, n_layer=1, n_head=2, d_model=8)


def _snapshot(folder) -> dict[str, bytes]:
    """Every file under ``folder`` (relative name -> bytes), to show nothing changed."""
    return {
        os.path.relpath(os.path.join(root, name), folder): open(
            os.path.join(root, name), "rb"
        ).read()
        for root, _, names in os.walk(folder)
        for name in names
    }


# --- checkpoints: only a checkpoint is ever replaced -----------------------------------------


@pytest.mark.parametrize(
    ("prepare", "message"),
    [
        ("a project folder", r"my_project already exists and is not a checkpoint folder"),
        ("a checkpoint with notes", r"ckpt already exists and holds \['notes.txt'\]"),
        ("a file", r"model.bin already exists and is not a checkpoint folder"),
        ("a foreign .previous", r"\.ckpt\.previous already exists"),
    ],
)
def test_save_checkpoint_never_deletes_what_it_did_not_write(tmp_path, prepare, message):
    model = init_model(TINY, seed=0)
    if prepare == "a project folder":
        target = tmp_path / "my_project"
        (target / "data").mkdir(parents=True)
        (target / "notes.txt").write_text("a week of work")
        (target / "data" / "corpus.txt").write_text("text")
    elif prepare == "a checkpoint with notes":
        target = save_checkpoint(tmp_path / "ckpt", model, step=1)
        (target / "notes.txt").write_text("why this run matters")
    elif prepare == "a file":
        target = tmp_path / "model.bin"
        target.write_bytes(b"weights from elsewhere")
    else:
        target = tmp_path / "ckpt"
        (tmp_path / ".ckpt.previous").mkdir()
        (tmp_path / ".ckpt.previous" / "mine.txt").write_text("not a checkpoint")
    before = _snapshot(tmp_path)
    with pytest.raises(ValueError, match=message):
        save_checkpoint(target, init_model(TINY, seed=1), step=2)
    assert _snapshot(tmp_path) == before  # nothing written, nothing deleted


def test_save_checkpoint_still_replaces_a_checkpoint(tmp_path):
    path = save_checkpoint(tmp_path / "ckpt", init_model(TINY, seed=0), step=1)
    (path / "optimizer.safetensors").write_bytes(b"")  # a damaged earlier save is replaced too
    save_checkpoint(path, init_model(TINY, seed=1), step=2)
    assert sorted(os.listdir(tmp_path)) == ["ckpt"] and load_checkpoint(path).step == 2
    assert (path / META_FILE).is_file()


# --- sampling: every temperature > 0 gives a valid id ------------------------------------------

DTYPES = [torch.float16, torch.bfloat16, torch.float32]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("temperature", [1e-4, 1e-8, 1e-30, 1e-45, 1e-300, 5e-324])
def test_a_tiny_temperature_is_greedy_in_every_dtype(dtype, temperature):
    logits = torch.tensor([[1.0, 3.0, 2.0, -5.0], [32768.0, -49152.0, 0.0, 49152.0]], dtype=dtype)
    probs = next_token_probs(logits, temperature=temperature)
    assert torch.equal(probs, next_token_probs(logits, temperature=0).float())  # one-hot
    ids = sample_next(logits, temperature=temperature, generator=make_generator(0))
    assert torch.equal(ids, logits.argmax(dim=-1, keepdim=True))


@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_logits_that_overflowed_are_refused_not_sampled(bad):
    logits = torch.tensor([[0.0, bad, 1.0]])
    with pytest.raises(ValueError, match=r"logits hold NaN or \+inf"):
        sample_next(logits, generator=make_generator(0))


@settings(max_examples=200, deadline=None)
@given(
    data=st.data(),
    dtype=st.sampled_from(DTYPES),
    shape=st.tuples(st.integers(1, 3), st.integers(1, 40)),
    temperature=st.floats(min_value=0, exclude_min=True, allow_infinity=False),
    top_k=st.none() | st.integers(1, 40),
    top_p=st.none() | st.floats(min_value=0, exclude_min=True, max_value=1),
)
def test_any_finite_logits_at_any_temperature_give_a_valid_id(
    data, dtype, shape, temperature, top_k, top_p
):
    finfo = torch.finfo(dtype)
    values = st.floats(min_value=float(finfo.min), max_value=float(finfo.max))
    rows = data.draw(st.lists(values, min_size=shape[0] * shape[1], max_size=shape[0] * shape[1]))
    logits = torch.tensor(rows).reshape(shape).clamp(finfo.min, finfo.max).to(dtype)  # (B, V)
    top_k = None if top_k is None else min(top_k, shape[1])
    probs = next_token_probs(logits, temperature=temperature, top_k=top_k, top_p=top_p)
    assert probs.isfinite().all() and torch.allclose(probs.sum(-1), torch.ones(shape[0]))
    ids = sample_next(
        logits, temperature=temperature, top_k=top_k, top_p=top_p, generator=make_generator(0)
    )
    assert ids.shape == (shape[0], 1) and bool(((ids >= 0) & (ids < shape[1])).all())
