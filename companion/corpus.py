"""The course's own pretraining corpus: short documents about a small generated world.

Taught in ``04_pretraining.ipynb``. The world (towns on rivers; people with a home town, a job, a
favourite food and a pet with a name and a colour) comes from :mod:`companion.world`; this module
writes text about it. ``generate_corpus(seed)`` is deterministic (its own ``random.Random``, no
global state), needs no file and no download, and takes well under a second. With the defaults it
is 2,045,562 characters (571,520 tokens of the course tokenizer, 3.58 characters per token; see
``docs/corpus.md``) of plain English in six kinds of document, joined by ``"<|endoftext|>"``:

- **profiles**: one person's facts, each in one of several phrasings
  ("Mira works as a baker." / "By trade, Mira is a baker." / ...);
- **town pages**: a town's river, its shop, its residents, its bank and its river bank;
- **stories**: a day in a person's life that uses their facts (work, food, walking the pet
  along the bank of the river, paying coins in at the bank in town, meeting a friend);
- **dialogues**: two people asking each other about themselves ("Where do you live, Mira?");
- **Q&A sheets**: ``"Q: Where does Mira live?\\nA: Mira lives in Thornby."``;
- **quizzes**: numbered questions, sometimes followed by the answers, sometimes not (so a base
  model asked a question tends to continue with more questions, which SFT then fixes).

Every fact is stated many times in several phrasings, and always the same way: a fact's ``prompt``
("Mira lives in the town of") is followed by its answer everywhere it occurs. The word "bank" is
used in both senses, by the river and for money, in the same documents, so chapter 2 can show
context changing a token's representation. Held-out people, pets and towns never appear.

Left out: grammar beyond simple sentences, numbers, time, and any text not generated here. The
text and the code that writes it are the project's own, under its MIT licence (``docs/corpus.md``).
"""

from __future__ import annotations

import random
from collections.abc import Iterator, Sequence
from functools import lru_cache
from typing import TypeVar

from companion.world import (
    PERSON_RELATIONS,
    RELATIONS,
    TOWN_RELATIONS,
    Fact,
    Person,
    Town,
    World,
    build_world,
    facts_of,
)

__all__ = ["DOCUMENT_KINDS", "END_OF_TEXT", "generate_corpus", "generate_documents"]

END_OF_TEXT = "<|endoftext|>"  # separates documents; the tokenizer keeps it as one special token
DOCUMENT_KINDS: dict[str, float] = {  # kind -> share of the documents
    "profile": 0.22,
    "town": 0.08,
    "story": 0.25,
    "dialogue": 0.17,
    "qa": 0.16,
    "quiz": 0.12,
}
CANONICAL_SHARE = 0.5  # how often a fact is stated in its prompt's own words

# relation -> other phrasings of the fact, besides its prompt + answer (see PHRASINGS).
_VARIANTS: dict[str, tuple[str, ...]] = {
    "home_town": (
        "{name} lives in {town}.",
        "{name}'s home is in {town}.",
        "{name} has a house in {town}, by the river {river}.",
        "The home of {name} is the town of {town}.",
        "{name} was born in {town} and still lives there.",
    ),
    "job": (
        "{name} is a {job}.",
        "By trade, {name} is a {job}.",
        "Every day {name} goes to work as a {job} in {town}.",
        "{name} has been a {job} for many years.",
    ),
    "food": (
        "{name} likes {food} more than any other food.",
        "Of all foods, {name} loves {food} the most.",
        "If you ask {name}, the best food in the world is {food}.",
        "{name} eats {food} whenever {they} can.",
    ),
    "pet_kind": (
        "{name} has a pet {kind}.",
        "{name} keeps a {kind} as a pet.",
        "At home, {name} has a {kind} called {pet}.",
    ),
    "pet_name": (
        "The name of {name}'s {kind} is {pet}.",
        "{name} has a {kind} called {pet}.",
        "{pet} is the {kind} that belongs to {name}.",
        "{name} calls {their} {kind} {pet}.",
    ),
    "pet_colour": (
        "{pet} is a {colour} {kind}.",
        "{name}'s {kind}, {pet}, is {colour}.",
        "{pet} has {colour} {covering}.",
    ),
    "river": (
        "The river {river} flows through {town}.",
        "{town} is a town on the river {river}.",
        "In {town} you can walk along the river {river}.",
        "The town of {town} was built beside the river {river}.",
    ),
    "goods": (
        "In {town} there is a shop that sells {goods}.",
        "If you need {goods}, go to the shop in {town}.",
        "The shop in {town} is full of {goods}.",
    ),
}
# relation -> phrasings of the fact; the first is the prompt + answer (Fact.statement's words).
PHRASINGS: dict[str, tuple[str, ...]] = {
    relation: (f"{RELATIONS[relation][0]} {{{field}}}.", *_VARIANTS[relation])
    for relation, field in {**PERSON_RELATIONS, **TOWN_RELATIONS}.items()
}

# relation -> other ways to ask the question (Fact.question is RELATIONS' own).
QUESTIONS: dict[str, tuple[str, ...]] = {
    "home_town": ("In which town does {name} live?", "Which town is {name} from?"),
    "job": ("What does {name} do for a living?", "What work does {name} do?"),
    "food": ("What does {name} like to eat most?",),
    "pet_kind": ("What animal does {name} keep as a pet?",),
    "pet_name": ("What is {name}'s {kind} called?",),
    "pet_colour": ("What colour is {name}'s {kind}?",),
    "river": ("What river flows through {town}?",),
    "goods": ("What can you buy at the shop in {town}?",),
}
# relation -> (question to "you", first-person answers) for dialogues.
FIRST_PERSON: dict[str, tuple[str, tuple[str, ...]]] = {
    "home_town": (
        "Where do you live, {name}?",
        ("I live in {town}.", "I live in the town of {town}, by the river {river}."),
    ),
    "job": ("What do you do for a living, {name}?", ("I work as a {job}.", "I am a {job}.")),
    "food": (
        "What is your favourite food?",
        ("My favourite food is {food}.", "I love {food} more than anything."),
    ),
    "pet_kind": ("Do you have a pet?", ("Yes, I have a {kind}.", "Yes, I keep a {kind}.")),
    "pet_name": ("What is your {kind} called?", ("My {kind} is called {pet}.",)),
    "pet_colour": (
        "What colour is {pet}?",
        ("{pet} is {colour}.", "{pet} has {colour} {covering}."),
    ),
}
MONEY_BANK: tuple[str, ...] = (
    "{name} opened an account at the bank in {town}.",
    "{name} went to the bank in {town} to put some coins in {their} account.",
    "{name} keeps {their} money at the bank in {town}.",
    "The bank in {town} was busy, and {name} waited in line to pay in {their} coins.",
    "At the bank in {town}, {name} took out some money to buy {goods}.",
)
RIVER_BANK: tuple[str, ...] = (
    "{name} sat on the bank of the river {river}.",
    "{name} and {pet} walked along the bank of the river {river}.",
    "{pet} ran down the river bank and splashed in the water.",
    "From the bank of the river {river}, {name} watched the boats go by.",
    "{name} had a picnic of {food} on the grassy bank of the river {river}.",
)
TOWN_BANK: tuple[str, ...] = (
    "There is a bank in {town}, where people keep their money.",
    "The bank in {town} is next to the shop.",
    "Children play on the bank of the river {river}.",
    "Tall trees grow on the bank of the river {river}.",
)
STORY_OPENINGS = (
    "One morning, {name} woke up early in {their} house in {town}.",
    "It was a sunny day in {town}.",
    "It was a rainy day in {town}, but {name} was happy.",
)
STORY_WORK = (
    "{name} went to work as a {job}.",
    "{name} worked hard all morning, because {they} is a {job}.",
)
STORY_FOOD = (
    "For lunch, {name} ate {food}, {their} favourite food.",
    "In the evening {name} cooked {food}, because {they} likes {food} best.",
)
STORY_SHOP = ("On the way home, {name} stopped at the shop in {town}, which sells {goods}.",)
STORY_ENDINGS = ("Then {name} went to bed.", "It was a good day.", "{name} and {pet} slept well.")
Item = TypeVar("Item")  # whatever a list holds


def _pick(rng: random.Random, templates: Sequence[str], fields: dict[str, str]) -> str:
    return rng.choice(templates).format(**fields)


def state(rng: random.Random, relation: str, fields: dict[str, str]) -> str:
    """One sentence stating ``relation`` for the entity with ``fields``, in a random phrasing.

    >>> from companion.world import build_world
    >>> state(random.Random(0), "home_town", build_world().people[0].fields())
    'The home of Bruno is the town of Larkmoor.'
    """
    phrasings = PHRASINGS[relation]
    if rng.random() < CANONICAL_SHARE:
        return phrasings[0].format(**fields)
    return _pick(rng, phrasings[1:], fields)


def _question(rng: random.Random, relation: str, fields: dict[str, str]) -> str:
    return _pick(rng, (RELATIONS[relation][1], *QUESTIONS[relation]), fields)


def _profile(rng: random.Random, person: Person, world: World) -> str:
    f = person.fields()
    relations = list(PERSON_RELATIONS)
    rng.shuffle(relations)
    opening = _pick(rng, ("About {name}.", "This is {name}.", "Meet {name}."), f)
    lines = [opening, *(state(rng, r, f) for r in relations)]
    if rng.random() < 0.5:
        lines.append(_pick(rng, MONEY_BANK + RIVER_BANK, f))
    return " ".join(lines)


def _town(rng: random.Random, town: Town, world: World) -> str:
    f = town.fields()
    residents = [p for p in world.people if p.town == town]
    lines = [_pick(rng, ("Welcome to {town}.", "This is the town of {town}."), f)]
    lines += [state(rng, r, f) for r in TOWN_RELATIONS]
    names = [p.name for p in residents]
    if len(names) > 1:
        lines.append(f"{', '.join(names[:-1])} and {names[-1]} live in {town.name}.")
    for p in residents:
        lines.append(state(rng, rng.choice(("home_town", "job", "pet_name")), p.fields()))
    lines += [t.format(**f) for t in rng.sample(TOWN_BANK, 2)]
    return " ".join(lines)


def _story(rng: random.Random, person: Person, world: World) -> str:
    f = person.fields()
    friend = rng.choice([p for p in world.people if p != person])
    parts = [_pick(rng, STORY_OPENINGS, f)]
    events = [STORY_WORK, MONEY_BANK, RIVER_BANK, STORY_FOOD, STORY_SHOP, "friend"]
    rng.shuffle(events)
    for event in events[: rng.randint(3, len(events))]:
        if event == "friend":
            g = friend.fields()
            parts.append(f"{person.name} met {friend.name}, who lives in {friend.town.name}.")
            parts.append(state(rng, rng.choice(list(PERSON_RELATIONS)), g))
        else:
            if event is RIVER_BANK:  # where the river is: towns have fewer facts than people
                parts.append(state(rng, "river", f))
            parts.append(_pick(rng, event, f))
    parts.append(_pick(rng, STORY_ENDINGS, f))
    return " ".join(parts)


def _ask(rng: random.Random, asker: Person, answerer: Person, relations: list[str]) -> list[str]:
    f = answerer.fields()
    lines = []
    for relation in relations:
        question, answers = FIRST_PERSON[relation]
        lines.append(f"{asker.name}: {question.format(**f)}")
        lines.append(f"{answerer.name}: {_pick(rng, answers, f)}")
    return lines


def _dialogue(rng: random.Random, a: Person, world: World) -> str:
    b = rng.choice([p for p in world.people if p != a])
    lines = [f"{a.name}: Hello, {b.name}! How are you?", f"{b.name}: Hello, {a.name}! I am well."]
    if rng.random() < 0.5:
        bank = _pick(rng, ("going to the bank in {town} to pay in my coins", "going to sit on the bank of the river {river}"), b.fields())  # fmt: skip
        lines.append(f"{b.name}: I am {bank}.")
    order = list(PERSON_RELATIONS)  # pet_kind comes before pet_name and pet_colour
    for asker, answerer in ((a, b), (b, a)):
        chosen = sorted(rng.sample(range(len(order)), rng.randint(1, 3)))
        lines += _ask(rng, asker, answerer, [order[i] for i in chosen])
    if rng.random() < 0.5:
        c = rng.choice([p for p in world.people if p not in (a, b)])
        lines.append(f"{a.name}: Do you know {c.name}?")
        lines.append(f"{b.name}: Yes! {state(rng, 'home_town', c.fields())}")
    lines.append(f"{a.name}: Goodbye, {b.name}!")
    return "\n".join(lines)


def _facts_with_fields(world: World) -> list[tuple[Fact, dict[str, str]]]:
    return [(fact, e.fields()) for e in world.entities for fact in facts_of(e)]


def _qa(rng: random.Random, pairs: list[tuple[Fact, dict[str, str]]]) -> str:
    chosen = rng.sample(pairs, rng.randint(3, 7))
    lines = []
    for fact, f in chosen:
        lines.append(f"Q: {_question(rng, fact.relation, f)}\nA: {state(rng, fact.relation, f)}")
    return "\n\n".join(lines)


def _quiz(rng: random.Random, pairs: list[tuple[Fact, dict[str, str]]]) -> str:
    chosen = rng.sample(pairs, rng.randint(3, 6))
    title = rng.choice(("Quiz.", "Questions for the class:", "Test your memory:"))
    questions = [
        f"{i}. {_question(rng, fact.relation, f)}" for i, (fact, f) in enumerate(chosen, 1)
    ]
    text = "\n".join([title, *questions])
    if rng.random() < 0.6:
        answers = [f"{i}. {state(rng, fact.relation, f)}" for i, (fact, f) in enumerate(chosen, 1)]
        text += "\n\nAnswers:\n" + "\n".join(answers)
    return text


def _deck(rng: random.Random, items: Sequence[Item]) -> Iterator[Item]:
    """Yield ``items`` in a fresh random order, again and again (every item equally often)."""
    while True:
        order = list(items)
        rng.shuffle(order)
        yield from order


def generate_documents(world: World, n_documents: int, *, seed: int = 0) -> list[str]:
    """``n_documents`` documents about ``world``, drawn with ``random.Random(seed)``.

    >>> docs = generate_documents(build_world(0), 3, seed=0)
    >>> len(docs), all(isinstance(d, str) and d for d in docs)
    (3, True)
    """
    if not isinstance(n_documents, int) or n_documents < 1:
        raise ValueError(f"n_documents={n_documents!r} must be a positive int, e.g. 100")
    rng = random.Random(f"corpus:{seed}")
    people, towns = _deck(rng, world.people), _deck(rng, world.towns)
    pairs = _facts_with_fields(world)
    kinds = rng.choices(list(DOCUMENT_KINDS), weights=list(DOCUMENT_KINDS.values()), k=n_documents)
    writers = {"profile": _profile, "story": _story, "dialogue": _dialogue}
    docs = []
    for kind in kinds:
        if kind in writers:
            docs.append(writers[kind](rng, next(people), world))
        elif kind == "town":
            docs.append(_town(rng, next(towns), world))
        else:
            docs.append((_qa if kind == "qa" else _quiz)(rng, pairs))
    return docs


@lru_cache(maxsize=4)
def generate_corpus(seed: int = 0, *, n_documents: int = 6000) -> str:
    """The corpus for ``build_world(seed)``: documents joined by ``"<|endoftext|>"``.

    Deterministic: the same arguments give the same text on every machine (and it is cached).

    >>> text = generate_corpus(0, n_documents=2)
    >>> text.count("<|endoftext|>")
    1
    """
    return END_OF_TEXT.join(generate_documents(build_world(seed), n_documents, seed=seed))
