"""The temperature widget driven without a kernel, and the static figures' data."""

from __future__ import annotations

import math

import matplotlib
import pytest
import torch

from companion.generation import next_token_probs
from companion.sampling_explorer import (
    TemperatureExplorer,
    entropy,
    survivors_figure,
    temperature_figure,
)

matplotlib.use("Agg")

LOGITS = torch.tensor([2.0, 1.0, 0.5, 0.0, -1.0, -3.0])
LABELS = ["·a", "·b", "·c", "·d", "·e", "·f"]


def test_the_slider_reshapes_the_distribution():
    explorer = TemperatureExplorer(LOGITS, LABELS, top=4)
    assert torch.allclose(explorer.probs, LOGITS.softmax(-1))  # starts at temperature 1
    explorer.slider.value = 0.0
    assert explorer.probs.tolist() == [1.0, 0, 0, 0, 0, 0]
    assert "top token 100.0%" in explorer.summary.value
    entropies = []
    for t in (0.5, 1.0, 2.0, 3.0):
        explorer.slider.value = t
        assert torch.allclose(explorer.probs, (LOGITS / t).softmax(-1))
        entropies.append(entropy(explorer.probs))
    assert entropies == sorted(entropies) and entropies[-1] < math.log(6)
    assert explorer.view.value.count("<tr>") == 4  # the top 4 tokens, as bars


def test_the_explorer_refuses_logits_without_labels():
    with pytest.raises(ValueError, match="one label per token"):
        TemperatureExplorer(LOGITS[None], LABELS)


def test_temperature_figure_draws_the_tempered_probabilities():
    fig = temperature_figure(LOGITS, LABELS, (0, 1, 2), top=3)
    for ax, t in zip(fig.axes, (0, 1, 2), strict=True):
        heights = [bar.get_width() for bar in ax.patches]
        expected = next_token_probs(LOGITS[None], temperature=t)[0][:3].tolist()
        assert heights == pytest.approx(expected)


def test_survivors_figure_marks_what_top_k_and_top_p_keep():
    assert survivors_figure(LOGITS, LABELS, top_k=2, top=6).survivors == [0, 1]
    # softmax: 0.574, 0.211, 0.128, 0.078, …: 0.574 + 0.211 < 0.8, the third crosses
    assert survivors_figure(LOGITS, LABELS, top_p=0.8, top=6).survivors == [0, 1, 2]
