"""Fact-completion accuracy and sampled completions, checked with a scripted model."""

from __future__ import annotations

import doctest

import pytest
import torch
from torch import nn

import companion.evaluation
from companion.char_tokenizer import CharTokenizer
from companion.evaluation import complete, fact_completion_accuracy, majority_baseline
from companion.measurement import completion_is_correct
from companion.model import GPTConfig
from companion.pretraining import init_model
from companion.world import Fact, build_world

KNOWN = "Mira lives in the town of Thornby. Bo works as a smith. "
TOKENIZER = CharTokenizer.from_text(KNOWN + "Bakersmith.")
MIRA = Fact("Mira", "home_town", "Thornby", "Mira lives in the town of", "Where?", "Thornby.")
BO = Fact("Bo", "job", "baker", "Bo works as a", "What job?", "Bo works as a baker.")


class Scripted(nn.Module):
    """Continues any text that is a prefix of ``KNOWN`` with ``KNOWN``'s next character."""

    def __init__(self) -> None:
        super().__init__()
        self.config = GPTConfig(TOKENIZER.vocab_size, 128, 1, 1, 4)
        self.dummy = nn.Parameter(torch.zeros(()))

    def forward(self, idx, targets=None):
        B, T = idx.shape
        logits = torch.zeros(B, T, self.config.vocab_size)
        for b, row in enumerate(idx.tolist()):
            text = TOKENIZER.decode(row)
            at = KNOWN.find(text)
            nxt = KNOWN[at + len(text)] if at >= 0 and at + len(text) < len(KNOWN) else "."
            logits[b, -1, TOKENIZER.encode(nxt)[0]] = 10.0
        return logits, None


def test_docstring_examples_run():
    result = doctest.testmod(companion.evaluation)
    assert result.attempted > 0 and result.failed == 0


@pytest.mark.parametrize(
    ("completion", "answer", "correct"),
    [
        (" Thornby.", "Thornby", True),
        (" Thornby", "Thornby", True),
        (" Thornbyville", "Thornby", False),  # a longer word is not the answer
        ("Thornby", "Thornby", False),  # the space belongs to the answer's token
        (" Ashford", "Thornby", False),
        (" red. Then", "red", True),
    ],
)
def test_is_correct(completion, answer, correct):
    assert completion_is_correct(completion, answer) is correct


def test_fact_accuracy_with_a_scripted_model():
    result = fact_completion_accuracy(Scripted(), TOKENIZER, [MIRA, BO])
    assert result.accuracy == 0.5
    mira, bo = result.results
    assert mira.correct and mira.completion.startswith(" Thornby.")
    assert not bo.correct and bo.completion.startswith(" smith.")  # the script says smith
    assert len(mira.completion) == len(" Thornby") + 1  # longest answer + 1 new tokens
    assert result.by_relation() == {"home_town": 1.0, "job": 0.0}


def test_majority_baseline_counts_the_commonest_answer_per_relation():
    def fact(relation: str, answer: str) -> Fact:
        return Fact("x", relation, answer, "x is", "?", f"x is {answer}.")

    facts = [fact("job", "baker"), fact("job", "smith"), fact("job", "baker"), fact("job", "baker")]
    facts += [fact("food", "pie"), fact("food", "soup")]  # a tie: one of two
    assert majority_baseline(facts) == {"job": 0.75, "food": 0.5}
    # On the course world every relation has its baseline, and answers that are all different
    # (each pet's name) give 1 / (number of facts).
    world = build_world(0)
    baseline = majority_baseline(world.facts)
    assert set(baseline) == {f.relation for f in world.facts}
    pet_names = [f for f in world.facts if f.relation == "pet_name"]
    if len({f.answer for f in pet_names}) == len(pet_names):
        assert baseline["pet_name"] == 1 / len(pet_names)
    with pytest.raises(ValueError, match="facts is empty"):
        majority_baseline([])


def test_complete_keeps_order_and_is_reproducible():
    prompts = ["Mira lives", "Bo", "Mira lives in the"]  # three lengths, so three batches
    greedy = complete(Scripted(), TOKENIZER, prompts, max_new_tokens=4, temperature=0)
    assert greedy == [" in ", " wor", " tow"]
    model = init_model(GPTConfig(TOKENIZER.vocab_size, 32, 1, 1, 8), seed=0)
    a = complete(model, TOKENIZER, prompts * 2, max_new_tokens=12, seed=1)
    b = complete(model, TOKENIZER, prompts * 2, max_new_tokens=12, seed=1)
    c = complete(model, TOKENIZER, prompts * 2, max_new_tokens=12, seed=2)
    assert a == b and a != c
    assert all(len(text) == 12 for text in a)


def test_bad_input():
    with pytest.raises(ValueError, match="list of strings"):
        complete(Scripted(), TOKENIZER, "Mira")
    with pytest.raises(ValueError, match="empty prompt"):
        complete(Scripted(), TOKENIZER, [""])
    with pytest.raises(ValueError, match="facts is empty"):
        fact_completion_accuracy(Scripted(), TOKENIZER, [])


def test_measurement_and_questions_docstring_examples_run():
    import companion.measurement
    import companion.questions

    for module in (companion.measurement, companion.questions):
        result = doctest.testmod(module)
        assert result.attempted > 0 and result.failed == 0, module.__name__
