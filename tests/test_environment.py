"""Devices, seeds and the notebook helpers of ``00_start_here``."""

from __future__ import annotations

import random
from pathlib import Path

import numpy as np
import pytest
import torch

from companion.environment import (
    default_device,
    environment_report,
    make_generator,
    resolve_device,
    seed_everything,
)
from companion.notebook import BOOTSTRAP, CHAPTERS, COURSE_MAP, course_map_figure


def test_default_device_prefers_cuda_then_mps_then_cpu(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert default_device().type == "cuda"
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: True)
    assert default_device().type == "mps"
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: False)
    assert default_device() == torch.device("cpu")


def test_resolve_device():
    assert resolve_device("cpu") == torch.device("cpu")
    assert resolve_device(torch.device("cpu")) == torch.device("cpu")
    assert resolve_device(None) == default_device()
    with pytest.raises(ValueError, match="not a device torch knows"):
        resolve_device("gpu-please")


def test_make_generator_is_reproducible_and_seed_dependent():
    a = torch.randn(5, generator=make_generator(3))
    b = torch.randn(5, generator=make_generator(3))
    c = torch.randn(5, generator=make_generator(4))
    assert torch.equal(a, b)
    assert not torch.equal(a, c)
    with pytest.raises(ValueError, match="seed must be an int"):
        make_generator(1.5)


def test_seed_everything_seeds_all_three_generators():
    seed_everything(7)
    first = (random.random(), np.random.rand(), torch.rand(1).item())
    seed_everything(7)
    assert (random.random(), np.random.rand(), torch.rand(1).item()) == first
    with pytest.raises(ValueError, match="seed must be an int"):
        seed_everything("7")


def test_environment_report_names_versions_and_device():
    report = environment_report("cpu")
    assert report["device"] == "cpu"
    assert report["torch"] == torch.__version__
    assert all(isinstance(value, str) for value in report.values())


def test_bootstrap_only_acts_on_colab():
    assert BOOTSTRAP.splitlines()[0].startswith("# Setup")
    assert 'if "google.colab" in sys.modules:' in BOOTSTRAP
    namespace: dict = {}
    exec(compile(BOOTSTRAP, "bootstrap", "exec"), namespace)  # off Colab: does nothing, no error


def test_course_map_draws_every_stage_in_order():
    import matplotlib

    matplotlib.use("Agg")
    figure = course_map_figure()
    texts = [text.get_text() for text in figure.axes[0].texts]
    stages = [stage for stage, _ in COURSE_MAP]
    assert [t for t in texts if t in stages] == stages
    assert len(figure.axes[0].patches) == 2 * len(stages) - 1  # a box per stage, arrows between


def test_notebook_helpers_docstring_examples_run():
    import doctest

    import companion.notebook

    result = doctest.testmod(companion.notebook)
    assert result.attempted > 0 and result.failed == 0


def test_course_map_marks_the_chapters_without_a_notebook_as_coming(monkeypatch):
    import matplotlib

    import companion.notebook

    matplotlib.use("Agg")

    def labels() -> list[str]:
        texts = [text.get_text() for text in course_map_figure().axes[0].texts]
        return [t for t in texts if t.startswith("ch. ")]

    existing = {int(stem[:2]) for stem, _, _ in CHAPTERS}
    assert labels() == [
        f"ch. {n}" if n in existing else f"ch. {n} (coming)" for n in range(1, len(COURSE_MAP) + 1)
    ]
    # Read from CHAPTERS, not hard-coded: one more chapter there and its stage is no longer coming.
    more = (*CHAPTERS, ("05_sft", "SFT", "a chat model"))
    monkeypatch.setattr(companion.notebook, "CHAPTERS", more)
    assert "ch. 5" in labels() and "ch. 5 (coming)" not in labels()
    monkeypatch.setattr(companion.notebook, "CHAPTERS", CHAPTERS[:2])
    assert "ch. 2 (coming)" in labels()


def test_course_map_draws_as_coming_exactly_the_chapters_without_a_notebook():
    """A stage is drawn as coming exactly when its notebook is missing (test_repository keeps
    CHAPTERS, which the map reads, equal to notebooks/)."""
    from companion.notebook import chapter_exists

    notebooks = Path(__file__).resolve().parents[1] / "notebooks"
    written = {int(path.name[:2]) for path in notebooks.glob("[0-9][0-9]_*.ipynb")}
    stages = range(1, len(COURSE_MAP) + 1)
    assert {n for n in stages if not chapter_exists(n)} == set(stages) - written
    assert COURSE_MAP[7][0] == "Reasoning" and COURSE_MAP[8][0] == "A real model"


def test_block_diagram_names_every_part_of_a_block():
    import matplotlib

    from companion.notebook import block_diagram_figure

    matplotlib.use("Agg")
    texts = " ".join(text.get_text() for text in block_diagram_figure(n_layer=3).axes[0].texts)
    for part in ("embedding", "LayerNorm", "attention", "feed-forward", "⊕", "LM head"):
        assert part in texts, part
    assert "n_layer = 3" in texts and "residual stream" in texts
