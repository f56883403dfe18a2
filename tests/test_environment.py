"""Devices, seeds and the notebook helpers of ``00_start_here``."""

from __future__ import annotations

import random

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
from companion.notebook import BOOTSTRAP, COURSE_MAP, course_map_figure


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
