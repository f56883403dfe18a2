"""Hostile inputs: what a learner might pass to the functions the notebooks call, and what the
package does with it. Each case asserts the exception's type and a phrase of its message, and
that nothing on disk or in the model changed (issue 30)."""

from __future__ import annotations

import os

import pytest

from companion.checkpoints import META_FILE, load_checkpoint, save_checkpoint
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
