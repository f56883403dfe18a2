"""Hallucination measured: finding the stated answer, its probability, and the shares."""

from __future__ import annotations

import math

import pytest
import torch

from companion.checkpoints import load_shipped
from companion.hallucination import StatedAnswer, ask, coloured_tokens_html, fact_prompt, summarize
from companion.measurement import find_answer
from companion.world import Fact, build_world


def test_find_answer_takes_the_first_whole_word_and_multiplies_its_tokens():
    pieces = [" the", " Ash", "ford", " and", " Elm"]
    probs = [0.9, 0.5, 0.8, 0.7, 0.6]
    assert find_answer(pieces, probs, ["Elm", "Ashford"]) == ("Ashford", pytest.approx(0.4))
    assert find_answer(pieces, probs, ["Elm", "Ash"]) == ("Elm", 0.6)  # "Ash" is not a word here
    assert find_answer(pieces, probs, ["Dove"]) == (None, 0.0)


def test_summarize_counts_shares():
    fact = Fact("Mira", "job", "baker", "Mira works as a", "?", ".")
    answers = [
        StatedAnswer(fact, False, (1,), (0.9,), (" baker",), "baker", 0.9),
        StatedAnswer(fact, False, (2,), (0.4,), (" smith",), "smith", 0.4),
        StatedAnswer(fact, False, (3,), (0.2,), (" the",), None, 0.0),
        StatedAnswer(fact, False, (4,), (0.6,), (" miller",), "miller", 0.6),
    ]
    s = summarize(answers, threshold=0.5)
    assert s == {"answered": 0.75, "confident": 0.5, "correct": 0.25, "median_probability": 0.6}
    with pytest.raises(ValueError, match="no answers"):
        summarize([])


def test_ask_on_the_base_model_marks_held_out_entities_and_reports_its_own_probabilities():
    model, tokenizer = load_shipped("base", "cpu")
    world = build_world(0)
    facts = world.facts[:4] + world.held_out_facts[:4]
    answers = ask(model, tokenizer, world, facts, fact_prompt(tokenizer))
    assert [a.known for a in answers] == [True] * 4 + [False] * 4
    for a in answers:
        assert len(a.ids) == len(a.probs) == len(a.pieces) == 6
        assert all(0 < p <= 1 for p in a.probs)
        # greedy: each token was the most likely, so the probability reported is the largest
        ids = torch.tensor([tokenizer.encode(a.fact.prompt) + list(a.ids)])
        probs = model(ids[:, :-1])[0][0].softmax(-1)[-len(a.ids) :]  # (new, V)
        assert torch.equal(probs.argmax(-1), torch.tensor(a.ids))
        assert torch.allclose(probs.max(-1).values, torch.tensor(a.probs), atol=1e-6)
        if a.answer is not None:
            assert a.answer in world.choices(a.fact.relation) and 0 < a.probability <= 1
        else:
            assert a.probability == 0.0 and not a.correct


def test_coloured_tokens_html_colours_by_probability():
    html = coloured_tokens_html([" a", "<b>"], [0.0, 0.5])
    assert "hsl(0," in html and "hsl(60," in html and "&lt;b&gt;" in html
    assert math.isclose(float(html.split('title="')[2].split('"')[0]), 0.5)
