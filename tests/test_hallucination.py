"""Hallucination measured: finding the stated answer, its probability, and the shares."""

from __future__ import annotations

import math

import pytest
import torch

from companion.chat import render_chat
from companion.checkpoints import load_shipped
from companion.data import load_course_tokenizer
from companion.hallucination import (
    OUTCOMES,
    ContextTrial,
    StatedAnswer,
    ask,
    auroc,
    bootstrap_interval,
    chance_correct,
    chat_prompt,
    classify,
    coloured_tokens_html,
    context_message,
    entity_names,
    fact_prompt,
    prefilled_chat_prompt,
    read_from_context,
    summarize,
    unstated_facts,
)
from companion.measurement import find_answer
from companion.sft_data import CONTEXT_RELATIONS
from companion.world import Fact, build_world


def test_find_answer_takes_the_first_whole_word_and_multiplies_its_tokens():
    pieces = [" the", " Ash", "ford", " and", " Elm"]
    probs = [0.9, 0.5, 0.8, 0.7, 0.6]
    assert find_answer(pieces, probs, ["Elm", "Ashford"]) == ("Ashford", pytest.approx(0.4))
    assert find_answer(pieces, probs, ["Elm", "Ash"]) == ("Elm", 0.6)  # "Ash" is not a word here
    assert find_answer(pieces, probs, ["Dove"]) == (None, 0.0)


def test_summarize_counts_shares_by_outcome():
    fact = Fact("Mira", "job", "baker", "Mira works as a", "?", ".")
    answers = [
        StatedAnswer(fact, False, (1,), (0.9,), (" baker",), "baker", 0.9, "answer"),
        StatedAnswer(fact, False, (2,), (0.4,), (" smith",), "smith", 0.4, "answer"),
        StatedAnswer(fact, False, (3,), (0.2,), (" the",), None, 0.0, "no answer"),
        StatedAnswer(fact, False, (4,), (0.6,), (" miller",), "miller", 0.6, "answer"),
        # a substitution's answer, even the true one, is neither answered nor correct
        StatedAnswer(fact, False, (5,), (0.99,), (" Bram",), "baker", 0.99, "substitution"),
        StatedAnswer(fact, False, (6,), (0.5,), (" I",), None, 0.0, "refusal"),
    ]
    s = summarize(answers, threshold=0.5)
    assert s == {
        "answered": 3 / 6, "confident": 2 / 6, "correct": 1 / 6, "substituted": 1 / 6,
        "refused": 1 / 6, "median_probability": 0.6,
    }  # fmt: skip
    with pytest.raises(ValueError, match="no answers"):
        summarize([])


def test_classify_hand_written_replies():
    world = build_world(0)
    town = world.held_out_towns[0]  # asked: its river
    other_town, other_person = world.towns[0], world.people[0]
    river = next(
        f for f in world.held_out_facts if f.subject == town.name and f.relation == "river"
    )
    replies = {
        f" {town.name} lies on the river Elm.": "answer",
        " Elm. Then": "answer",  # the prompt named the town; no name in the reply
        f" Elm. {other_town.name} lies on the river Dove.": "answer",  # a name after the answer
        f" The shop in {other_town.name} sells lamps.": "substitution",  # no river, still another
        f" {other_town.name} lies on the river Elm.": "substitution",
        f" {other_person.name} has a cat.": "substitution",
        " I do not know that town.": "refusal",
        f" I'm sorry, {other_town.name} lies on the Elm.": "refusal",  # declining comes first
        " the hills.": "no answer",
        f" {town.name} is lovely.": "no answer",
        " Elmwood lies on the Doveton.": "no answer",  # whole words only
    }
    assert {r: classify(r, river, world) for r in replies} == replies
    assert set(replies.values()) == set(OUTCOMES)


def test_classify_a_town_answer_and_the_pet_of_the_person_asked():
    world = build_world(0)
    person, other = world.held_out_people[0], world.people[0]
    home = next(
        f for f in world.held_out_facts if f.subject == person.name and f.relation == "home_town"
    )
    colour = next(
        f for f in world.held_out_facts if f.relation == "pet_colour" and f.subject == person.pet
    )
    town = world.towns[0].name
    assert classify(f" {town}.", home, world) == "answer"  # a town is the answer, not a subject
    assert classify(f" {person.name} lives in {town}.", home, world) == "answer"
    assert classify(f" {other.name} lives in {town}.", home, world) == "substitution"
    assert classify(f" {person.name}'s pet is grey.", colour, world) == "answer"  # the pet's owner
    assert classify(f" {other.pet} is a grey cat.", colour, world) == "substitution"
    assert entity_names(world, person.pet) == (person.name, person.pet)
    with pytest.raises(ValueError, match="names no town, person or pet"):
        classify(" Elm.", Fact("Nobody", "river", "Elm", "", "", ""), world)


def test_auroc_by_hand_and_ties_count_half():
    # 3 positives, 2 negatives, 6 pairs: 0.9 beats both, 0.8 beats both, 0.4 beats 0.1 only
    assert auroc([0.9, 0.8, 0.4], [0.5, 0.1]) == pytest.approx(5 / 6)
    assert auroc([0.5, 0.5], [0.5]) == 0.5  # all ties: half each
    assert auroc([0.5, 0.9], [0.5, 0.1]) == pytest.approx((0.5 + 1 + 1 + 1) / 4)
    assert auroc([0.1], [0.9]) == 0.0 and auroc([0.9], [0.1]) == 1.0
    for bad in (([], [0.1]), ([0.1], []), ([float("nan")], [0.1])):
        with pytest.raises(ValueError, match="auroc"):
            auroc(*bad)


def test_bootstrap_interval_is_seeded_and_brackets_the_auroc():
    pos, neg = [0.9, 0.8, 0.7, 0.3, 0.95], [0.5, 0.2, 0.85, 0.1]
    low, high = bootstrap_interval(pos, neg, seed=1)
    assert low <= auroc(pos, neg) <= high and low < high
    assert bootstrap_interval(pos, neg, seed=1) == (low, high)
    low10, high10 = bootstrap_interval(pos * 10, neg * 10, seed=1)  # ten times the data
    assert low < low10 <= auroc(pos, neg) <= high10 < high
    assert bootstrap_interval([0.9], [0.1]) == (1.0, 1.0)
    with pytest.raises(ValueError, match="level"):
        bootstrap_interval(pos, neg, level=1.5)
    with pytest.raises(ValueError, match="auroc"):
        bootstrap_interval(pos, [])


def test_chance_correct_by_hand():
    world = build_world(0)
    river = next(f for f in world.held_out_facts if f.relation == "river")
    chance = chance_correct(world, [river])
    assert chance["uniform"] == pytest.approx(1 / len(world.choices("river")))  # 6 rivers
    assert chance["majority"] in (0.0, 1.0)
    with pytest.raises(ValueError, match="no facts"):
        chance_correct(world, [])


def test_prefilled_chat_prompt_is_the_reply_rendered_up_to_its_answer():
    tokenizer = load_course_tokenizer()
    fact = build_world(0).held_out_facts[0]
    ids = prefilled_chat_prompt(tokenizer)(fact)
    full, _ = render_chat(
        [{"role": "user", "content": fact.question}, {"role": "assistant", "content": fact.reply}],
        tokenizer,
    )
    assert full.tolist()[: len(ids)] == ids
    assert tokenizer.decode(full.tolist()[len(ids) :]).startswith(" " + fact.answer)


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
        assert a.outcome == classify(a.completion, a.fact, world)


def test_coloured_tokens_html_colours_by_probability():
    html = coloured_tokens_html([" a", "<b>"], [0.0, 0.5])
    assert "hsl(0," in html and "hsl(60," in html and "&lt;b&gt;" in html
    assert math.isclose(float(html.split('title="')[2].split('"')[0]), 0.5)


def test_unstated_facts_ask_each_known_pet_a_food_the_corpus_never_gives_it():
    from companion.corpus import generate_corpus

    world = build_world(0)
    facts = unstated_facts(world)
    assert [f.subject for f in facts] == [p.pet for p in world.people]  # known pets only
    assert all(f.relation == "food" and f.answer == "" for f in facts)
    corpus = generate_corpus(0)
    for fact in facts:
        assert fact.subject in corpus  # the model has read the name ...
        for claim in ("'s favourite food", " likes ", " eats ", " loves "):  # ... never its food
            assert fact.subject + claim not in corpus, (fact.subject, claim)


def test_context_message_states_the_value_then_asks():
    fact = Fact("Lila", "food", "pie", "Lila's favourite food is", "What does Lila like?", "")
    assert context_message(fact) == "Lila's favourite food is pie. What does Lila like?"
    assert context_message(fact, "soup") == "Lila's favourite food is soup. What does Lila like?"
    for bad in ("", "  ", 3):
        with pytest.raises(ValueError, match="non-empty string"):
            context_message(fact, bad)
    for bad in (" soup", "soup\nOr", "soup. What does Lila like?"):  # would corrupt the message
        with pytest.raises(ValueError, match="must be one answer"):
            context_message(fact, bad)
    with pytest.raises(TypeError, match="fact must be a Fact, got a str"):
        context_message("Lila's favourite food is pie.")


def _stated(fact, completion, world):
    answer, _ = find_answer([completion], [1.0], world.choices(fact.relation))
    outcome = classify(completion, fact, world)
    return StatedAnswer(fact, False, (0,), (1.0,), (completion,), answer, 1.0, outcome)


def test_context_trial_counts_by_hand():
    world = build_world(0)
    job = next(f for f in world.held_out_facts if f.relation == "job")
    other = next(a for a in world.wrong_answers(job) if a != job.answer)
    name = job.subject
    trial = ContextTrial(
        cold=(_stated(job, " I do not know that person.", world),),
        stated=(_stated(job, f" {name} works as a {job.answer}.", world),),
        other=(_stated(job, f" {name[:1]}o works as a {job.answer}.", world),),  # misspelt
        other_values=(other,),
    )
    counts = trial.counts()
    assert counts["n"] == 1
    cold = (counts["cold_right"], counts["cold_declined"], counts["cold_names_subject"])
    assert cold == (0, 1, 0)
    assert (counts["stated_right"], counts["stated_names_subject"]) == (1, 1)
    other = (counts["other_follows"], counts["other_right"], counts["other_names_subject"])
    assert other == (0, 1, 0)


def test_read_from_context_asks_three_ways_seeded():
    model, tokenizer = load_shipped("chat", "cpu")
    world = build_world(0)
    facts = [f for f in world.held_out_facts if f.relation in CONTEXT_RELATIONS][:3]
    end = tokenizer.special_tokens["<|end|>"]
    trial = read_from_context(model, tokenizer, world, facts, seed=1, stop_tokens=[end])
    again = read_from_context(model, tokenizer, world, facts, seed=1, stop_tokens=[end])
    assert trial == again  # greedy, and the other values drawn from the seed
    assert [a.fact for a in trial.cold] == [a.fact for a in trial.other] == facts
    for fact, value in zip(facts, trial.other_values, strict=True):
        assert value in world.wrong_answers(fact)
    cold = ask(model, tokenizer, world, facts, chat_prompt(tokenizer), max_new_tokens=16,
               stop_tokens=[end])  # fmt: skip
    assert list(trial.cold) == cold
    with pytest.raises(ValueError, match="no facts"):
        read_from_context(model, tokenizer, world, [])
    with pytest.raises(ValueError, match="each fact once"):
        read_from_context(model, tokenizer, world, facts[:1] * 2)
    assert (
        read_from_context(model, tokenizer, world, iter(facts), seed=1, stop_tokens=[end]) == trial
    )


def test_read_from_context_refuses_bad_arguments_before_generating():
    model, tokenizer = load_shipped("chat", "cpu")
    model.train()
    world = build_world(0)
    facts = [f for f in world.held_out_facts if f.relation in CONTEXT_RELATIONS][:2]
    other = [f for f in build_world(1).facts if f not in set(world.facts)][:1]
    cases = [
        ({"world": None}, TypeError, "world must be a World"),
        ({"facts": facts[0]}, TypeError, r"for one fact pass \[fact\]"),
        ({"facts": ["Where does Mira live?"]}, TypeError, "facts must be Facts, got a str"),
        ({"facts": other}, ValueError, r"not a fact of this world \(seed 0\)"),
        (
            {"seed": None},
            ValueError,
            "seed=None must be an int",
        ),  # None: a different draw each call
        ({"seed": "1"}, ValueError, "seed='1' must be an int"),
        ({"max_new_tokens": 0}, ValueError, "max_new_tokens=0 must be an int >= 1"),
        ({"max_new_tokens": True}, ValueError, "max_new_tokens=True must be an int >= 1"),
        ({"max_new_tokens": 60}, ValueError, "runs past context_length=64; use at most"),
        ({"template": "course"}, TypeError, "template must be a ChatTemplate, got a str"),
    ]
    for change, error, message in cases:
        kwargs = {"world": world, "facts": facts, "seed": 0, "max_new_tokens": 4, **change}
        with pytest.raises(error, match=message):
            read_from_context(model, tokenizer, **kwargs)
    assert model.training  # the mode is the caller's


def test_a_context_trial_answers_the_same_facts_in_each_run():
    world = build_world(0)
    first, second = world.held_out_facts[:2]
    a, b = _stated(first, " Elm", world), _stated(second, " lamps", world)
    with pytest.raises(ValueError, match="same facts in the same order"):
        ContextTrial(cold=(a,), stated=(a, b), other=(a,), other_values=("Esk",))
    with pytest.raises(ValueError, match="one value per fact"):
        ContextTrial(cold=(a,), stated=(a,), other=(a,), other_values=())
