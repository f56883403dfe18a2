"""The generated world and corpus: deterministic, consistent, learnable, and silent about the
held-out entities."""

from __future__ import annotations

import doctest
import re

import pytest

import companion.corpus
import companion.world
from companion.corpus import (
    DOCUMENT_KINDS,
    END_OF_TEXT,
    PHRASINGS,
    generate_corpus,
    generate_documents,
)
from companion.world import (
    ANIMALS,
    COLOURS,
    FOODS,
    GOODS,
    JOBS,
    PERSON_POOL,
    PET_NAMES,
    RELATIONS,
    RIVERS,
    TOWN_POOL,
    Fact,
    build_world,
)


@pytest.fixture(scope="module")
def world():
    return build_world(0)


@pytest.fixture(scope="module")
def text():
    return generate_corpus(0)


def test_docstring_examples_run():
    for module in (companion.world, companion.corpus):
        result = doctest.testmod(module)
        assert result.attempted > 0 and result.failed == 0, module.__name__


def test_world_is_deterministic_and_depends_on_the_seed():
    assert build_world(3) == build_world(3)
    assert build_world(3) != build_world(4)
    assert build_world(3).facts == build_world(3).facts


def test_corpus_is_deterministic_and_depends_on_the_seed():
    # generate_corpus is cached, so compare fresh calls of the uncached function too.
    fresh = generate_corpus.__wrapped__
    assert fresh(0, n_documents=200) == fresh(0, n_documents=200)
    assert fresh(0, n_documents=200) != fresh(1, n_documents=200)
    assert generate_documents(build_world(0), 50, seed=0) != generate_documents(
        build_world(0), 50, seed=1
    )


def test_corpus_size_and_documents(text):
    assert 1_000_000 <= len(text) <= 3_000_000
    docs = text.split(END_OF_TEXT)
    assert len(docs) == 6000
    assert all(doc.strip() == doc and doc for doc in docs)
    assert text.isascii()


def test_no_name_is_part_of_another_word_of_the_world():
    """Otherwise a held-out name could hide inside an in-corpus word ("Bram" in "Bramble")."""
    names = [n for n, _ in PERSON_POOL] + [*TOWN_POOL, *RIVERS, *PET_NAMES]
    words = [*names, *JOBS, *FOODS, *ANIMALS, *COLOURS, *GOODS]
    assert len(set(names)) == len(names)
    for name in names:
        clashes = [w for w in words if w != name and name.lower() in w.lower()]
        assert not clashes, f"{name} is inside {clashes}"


def test_held_out_names_never_appear(world, text):
    assert len(world.held_out_names) == 2 + 6 * 2
    lowered = text.lower()
    for name in world.held_out_names:
        assert name.lower() not in lowered, name
    for fact in world.held_out_facts:
        assert fact.subject.lower() not in lowered
        assert fact.prompt not in text


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_held_out_names_never_appear_for_other_seeds(seed):
    world, lowered = build_world(seed), generate_corpus.__wrapped__(seed, n_documents=1500).lower()
    assert not [n for n in world.held_out_names if n.lower() in lowered]


def test_in_corpus_names_all_appear(world, text):
    for entity in world.entities:
        assert entity.name in text
    for person in world.people:
        assert person.pet in text


def test_every_prompt_is_always_followed_by_its_answer(world, text):
    """The property fact-completion accuracy relies on: the prompt has one true continuation.
    (No name is part of another word, so plain substring counts are word counts here.)"""
    assert len(world.facts) == 8 * 2 + 24 * 6
    for fact in world.facts:
        occurrences = text.count(fact.prompt + " ")
        assert occurrences == text.count(f"{fact.prompt} {fact.answer}"), fact
        assert occurrences >= 5, fact


def test_every_fact_is_stated_near_its_subject_many_times(world, text):
    """At least 10 sentences (or Q&A lines) name both the subject and the answer."""
    sentences = [set(re.findall(r"[A-Za-z]+", s)) for s in re.split(r"[.?!\n]", text)]
    too_rare = {}
    for fact in world.facts:
        n = sum(1 for words in sentences if fact.subject in words and fact.answer in words)
        if n < 10:
            too_rare[fact.statement] = n
    assert not too_rare


def test_every_fact_appears_in_several_phrasings(world, text):
    for person in world.people:
        fields = person.fields()
        for relation in ("home_town", "job", "food", "pet_name"):
            phrasings = {p.format(**fields) for p in PHRASINGS[relation]}
            used = [p for p in phrasings if p in text]
            assert len(used) >= 3, (person.name, relation, used)


def test_both_senses_of_bank(text, world):
    river = len(re.findall(r"bank of the river|river bank", text))
    money = len(re.findall(r"bank in [A-Z]", text))
    assert river >= 1000 and money >= 1000
    assert text.count(" bank") >= river + money
    # Both senses meet inside single documents too, which is what chapter 2's probe needs.
    docs = text.split(END_OF_TEXT)
    both = [d for d in docs if "bank of the river" in d and re.search(r"bank in [A-Z]", d)]
    assert len(both) >= 50


def test_every_document_kind_is_written(text):
    docs = text.split(END_OF_TEXT)
    assert sum(d.startswith("Q: ") for d in docs) > 300  # Q&A sheets
    assert sum("\n1. " in d for d in docs) > 200  # quizzes
    assert sum(": Hello, " in d for d in docs) > 300  # dialogues
    assert sum(d.startswith(("Welcome to", "This is the town of")) for d in docs) > 100
    unanswered = [d for d in docs if "\n1. " in d and "Answers:" not in d]
    assert len(unanswered) > 50  # the base model learns that questions follow questions
    assert abs(sum(DOCUMENT_KINDS.values()) - 1.0) < 1e-9


def test_facts_are_consistent_records(world):
    hand = Fact(
        "Mira",
        "home_town",
        "Thornby",
        "Mira lives in the town of",
        "Where does Mira live?",
        "Mira lives in Thornby.",
    )
    assert hand.statement == "Mira lives in the town of Thornby."
    for fact in world.facts + world.held_out_facts:
        assert fact.relation in RELATIONS
        assert fact.statement == f"{fact.prompt} {fact.answer}."
        assert fact.question.endswith("?") and fact.subject in fact.question
        assert fact.answer in fact.reply and fact.subject in fact.reply
        assert fact.answer in world.choices(fact.relation) or fact.relation == "pet_name"
        wrong = world.wrong_answers(fact)
        assert wrong and fact.answer not in wrong
        assert fact.reply_with(fact.answer) == fact.reply
        bad = fact.reply_with(wrong[0])
        assert wrong[0] in bad and fact.answer not in re.findall(r"[A-Za-z]+", bad)
    assert len(world.held_out_facts) == 2 * 2 + 6 * 6


def test_held_out_people_live_in_known_towns(world):
    known = {t.name for t in world.towns}
    assert all(p.town.name in known for p in world.held_out_people)
    assert all(any(p.town == t for p in world.people) for t in world.towns)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"n_towns": 20}, "pool size"),
        ({"n_people": 1}, "at least 2"),
        ({"n_people": 4, "n_towns": 6}, "every town needs a resident"),
        ({"seed": "0"}, "seed must be an int"),
    ],
)
def test_build_world_rejects_bad_sizes(kwargs, match):
    with pytest.raises(ValueError, match=match):
        build_world(**kwargs)


def test_bad_arguments_raise():
    with pytest.raises(ValueError, match="n_documents"):
        generate_documents(build_world(0), 0)
    with pytest.raises(ValueError, match="unknown relation"):
        build_world(0).choices("age")
