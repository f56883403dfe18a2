"""The SFT data: conversations about half of the world's facts, generated like the corpus.

Taught in ``05_sft.ipynb``. Supervised fine-tuning shows the base model conversations in the chat
template (:mod:`companion.chat`) until it answers a question in one turn and stops. This module
writes those conversations from the world of :mod:`companion.world`, deterministically from a
seed (its own ``random.Random``; no download, no file).

**The split.** :func:`split_world` gives every in-corpus person and town half of its facts on
the *SFT* side and half on the *evaluation* side (Mira's home town and pet may be taught, her
job and favourite food never). The SFT data asks and states the SFT side's facts only, so every
fact of the evaluation side is known to the model, if at all, from pretraining alone; yet every
name and every kind of question is in the SFT data, so the *format* of each answer is taught.
The *held-out* people and towns of the world (``world.held_out``, never in the corpus) appear
nowhere in the SFT data: the inference chapter asks about them to measure hallucination. The
evaluation asks each fact's own question (``Fact.question``, e.g. "Where does Mira live?"), a
phrasing the SFT data never uses, so even the SFT side's facts are asked in words the
fine-tuning never showed.

Kinds of conversation (``CONVERSATION_KINDS`` gives their shares), all about SFT-side facts:

- **question**: one fact asked in one of several phrasings, answered by the fact's reply;
- **yes/no**: "Does Mira live in Ashford?" → "No, Mira lives in Thornby.";
- **profile**: "Tell me about Mira." → two of her facts;
- **multi-turn**: two or three questions about one person or town (two with a greeting or a
  farewell), the later ones with a pronoun ("What is her job?"), which only the history can
  resolve.

**Demonstrations of declining** (:func:`demonstrations`; ``SFTConfig``'s ``n_unknown`` and
``n_harmful``, 20 and 60 in the shipped recipe), as InstructGPT's labellers wrote
demonstrations of the behaviour they wanted before any reinforcement learning: a question about a
person the world never names (a made-up name, :func:`made_up_names`) answered
:data:`DECLINE_UNKNOWN`, and a request to harm someone of the world (:data:`HARMFUL_REQUESTS`)
answered :data:`DECLINE_HARMFUL`. A few dozen among thousands make the chat model *sample* a
refusal now and then: on-policy RL can only reinforce a reply the policy writes.

**Reading the context** (:func:`context_conversations`; ``SFTConfig``'s ``n_context``, 2,400 in
the shipped recipe): a fact about a made-up person or town, stated in the user's message and then
asked ("Raro works as a smith. What is Raro's job?" → "Raro works as a smith."). Nothing but the
message can say the answer, so the reply must be read from the context window: the lesson of
retrieval-augmented generation, which the inference chapter measures on the held-out people.

Left out: system prompts, and anything outside the world.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass

from companion.corpus import QUESTIONS
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
    Person,
    Town,
    World,
    facts_of,
)

Conversation = list[dict[str, str]]  # [{"role": "user" | "assistant", "content": str}, ...]

CONVERSATION_KINDS: dict[str, float] = {  # kind -> share of the conversations
    "question": 0.45,
    "yes_no": 0.15,
    "profile": 0.1,
    "multi_turn": 0.3,
}
# relation -> phrasings of its question for the SFT data: the corpus's other questions and a few
# of SFT's own. The fact's own question (Fact.question) is kept for the evaluation.
SFT_QUESTIONS: dict[str, tuple[str, ...]] = {
    "home_town": (*QUESTIONS["home_town"], "Do you know where {name} lives?"),
    "job": (*QUESTIONS["job"], "Can you tell me {name}'s job?"),
    "food": (*QUESTIONS["food"], "Which food does {name} like best?"),
    "pet_kind": (*QUESTIONS["pet_kind"], "Which animal is {name}'s pet?"),
    "pet_name": (*QUESTIONS["pet_name"], "What did {name} call {their} {kind}?"),
    "pet_colour": (*QUESTIONS["pet_colour"], "Which colour is {pet}?"),
    "river": (*QUESTIONS["river"], "Which river runs through {town}?"),
    "goods": (*QUESTIONS["goods"], "What is sold in the shop in {town}?"),
}
# relations asked about made-up people in the demonstrations: those that need no pet's name
UNKNOWN_RELATIONS: tuple[str, ...] = ("home_town", "job", "food", "pet_kind")
# relation -> a follow-up question with a pronoun: only the earlier turns say who it is about.
FOLLOW_UPS: dict[str, str] = {
    "home_town": "Where does {they} live?",
    "job": "What is {their} job?",
    "food": "What is {their} favourite food?",
    "pet_kind": "What pet does {they} have?",
    "pet_name": "What is {their} {kind} called?",
    "pet_colour": "What colour is {their} {kind}?",
    "river": "Which river does it lie on?",
    "goods": "What does the shop there sell?",
}
# relation -> a yes/no question about a candidate answer {x}.
YES_NO: dict[str, str] = {
    "home_town": "Does {name} live in {x}?",
    "job": "Is {name} a {x}?",
    "food": "Is {x} {name}'s favourite food?",
    "pet_kind": "Does {name} have a {x}?",
    "river": "Does {town} lie on the river {x}?",
    "goods": "Does the shop in {town} sell {x}?",
}
# Greetings and farewells in the corpus's words (its dialogues open and close this way): a word
# the corpus never has costs several tokens, and a conversation has only 64.
GREETINGS: tuple[tuple[str, str], ...] = (
    ("Hello!", "Hello! How can I help?"),
    ("Hello! How are you?", "I am well. How can I help?"),
)
FAREWELLS: tuple[tuple[str, str], ...] = (("Goodbye!", "Goodbye!"),)
# A person's facts go to one side or the other in these units: the pet's kind is named in the
# questions and replies about its name and colour, so the three travel together.
PERSON_UNITS: tuple[tuple[str, ...], ...] = (
    ("home_town",), ("job",), ("food",), ("pet_kind", "pet_name", "pet_colour"),
)  # fmt: skip


DECLINE_UNKNOWN = "I do not know that person."  # the reply to a question about a made-up name
DECLINE_HARMFUL = "I will not help with that."  # the reply to a harmful request
# Harmful requests of the demonstrations: stealing, hurting a pet, breaking in, cheating. An
# evaluation should ask requests in other words, so that declining them shows more than recall
# (chapter 6's rater has no harmful prompts yet).
HARMFUL_REQUESTS: tuple[str, ...] = (
    "Help me steal from the shop in {town}.", "How can I hurt {pet}?",
    "Tell me how to poison {name}'s {kind}.", "Help me break into {name}'s house.",
    "How do I burn down the shop in {town}?", "Help me trick {name} out of money.",
)  # fmt: skip
N_DECLINED_NAMES = 16  # the first made-up names are the demonstrations'; the context's come after
# relations stated and asked in the context conversations: every one whose reply says no more than
# its statement ("Pip is a grey cat." names the kind, which "The colour of Pip is grey." does not)
CONTEXT_RELATIONS: tuple[str, ...] = (
    "home_town", "job", "food", "pet_kind", "pet_name", "river", "goods",
)  # fmt: skip
CONTEXT_TOWN_SHARE = 0.25  # share of the context conversations about a made-up town
MAX_CONVERSATIONS = 100_000  # most demonstrations or context conversations per call (~1 s, 100 MB)
# Letters of the made-up names: consonant, vowel, consonant, vowel, and sometimes n, l or r.
_CONSONANTS, _VOWELS, _ENDINGS = "bdfgklmnprstvz", "aeiou", "nlr"


@dataclass(frozen=True)
class WorldSplit:
    """The facts of the world's in-corpus towns and people, split into two sides."""

    sft_facts: tuple[Fact, ...]  # facts the SFT data asks and states (never as Fact.question)
    eval_facts: tuple[Fact, ...]  # facts never in the SFT data: known from pretraining or not


def _units(entity: Person | Town) -> list[list[Fact]]:
    facts = {f.relation: f for f in facts_of(entity)}
    if isinstance(entity, Town):
        return [[f] for f in facts.values()]
    return [[facts[r] for r in unit] for unit in PERSON_UNITS]


def split_world(world: World, *, seed: int = 0) -> WorldSplit:
    """For every in-corpus person and town, half of its facts (drawn with the seed) go to the SFT
    side: two of a person's four units (:data:`PERSON_UNITS`), one of a town's two facts.

    >>> from companion.world import build_world
    >>> split = split_world(build_world(0))
    >>> len(split.sft_facts) + len(split.eval_facts), len(split.eval_facts) > 60
    (160, True)
    """
    rng = random.Random(f"sft-split:{seed}")
    sft: list[Fact] = []
    held: list[Fact] = []
    for entity in world.entities:
        units = _units(entity)
        chosen = set(rng.sample(range(len(units)), len(units) // 2))
        for i, unit in enumerate(units):
            (sft if i in chosen else held).extend(unit)
    return WorldSplit(sft_facts=tuple(sft), eval_facts=tuple(held))


def _turns(*texts: str) -> Conversation:
    return [{"role": ("user", "assistant")[i % 2], "content": t} for i, t in enumerate(texts)]


def _question(rng: random.Random, fact: Fact, fields: dict[str, str]) -> Conversation:
    return _turns(rng.choice(SFT_QUESTIONS[fact.relation]).format(**fields), fact.reply)


def _yes_no(
    rng: random.Random, fact: Fact, fields: dict[str, str], pool: Sequence[str]
) -> Conversation:
    if rng.random() < 0.5:
        candidate, verdict = fact.answer, "Yes"
    else:
        candidate, verdict = rng.choice([a for a in pool if a != fact.answer]), "No"
    question = YES_NO[fact.relation].format(**fields, x=candidate)
    return _turns(question, f"{verdict}, {fact.reply}")


def _profile(rng: random.Random, entity: Person | Town, facts: list[Fact]) -> Conversation:
    chosen = sorted(rng.sample(facts, min(2, len(facts))), key=facts.index)  # the pet's kind first
    return _turns(f"Tell me about {entity.name}.", " ".join(f.reply for f in chosen))


def _multi_turn(rng: random.Random, entity: Person | Town, facts: list[Fact]) -> Conversation:
    """Two questions with a greeting or a farewell, or three alone; the first names the entity."""
    fields = entity.fields()
    n = min(len(facts), rng.randint(2, 3))
    chosen = rng.sample(facts, n)
    first = [q for q in SFT_QUESTIONS[chosen[0].relation] if "{name}" in q or "{town}" in q]
    texts = [rng.choice(first).format(**fields), chosen[0].reply]
    for fact in chosen[1:]:
        texts += [FOLLOW_UPS[fact.relation].format(**fields), fact.reply]
    extra = rng.random() if n <= 2 else 1.0
    if extra < 0.3:
        texts = [*rng.choice(GREETINGS), *texts]
    elif extra < 0.6:
        texts += rng.choice(FAREWELLS)
    return _turns(*texts)


def generate_sft_conversations(
    world: World, n_conversations: int = 4000, *, seed: int = 0
) -> list[Conversation]:
    """``n_conversations`` conversations about the SFT side of ``split_world(world, seed=seed)``.

    Deterministic: the same world, number and seed give the same list on every machine.

    >>> from companion.world import build_world
    >>> talk = generate_sft_conversations(build_world(0), 2, seed=0)
    >>> [m["role"] for m in talk[0]][:2]
    ['user', 'assistant']
    """
    if not isinstance(n_conversations, int) or n_conversations < 1:
        raise ValueError(f"n_conversations={n_conversations!r} must be a positive int, e.g. 4000")
    taught = set(split_world(world, seed=seed).sft_facts)
    rng = random.Random(f"sft-data:{seed}")
    entities = [(e, [f for f in facts_of(e) if f in taught]) for e in world.entities]
    # yes/no candidates: any job, food, animal, river or goods, any in-corpus town.
    pools = {r: world.choices(r) for r in YES_NO}
    kinds = rng.choices(
        list(CONVERSATION_KINDS), weights=list(CONVERSATION_KINDS.values()), k=n_conversations
    )
    conversations = []
    for kind in kinds:
        entity, facts = rng.choice(entities)
        fields = entity.fields()
        yes_no = [f for f in facts if f.relation in YES_NO]
        if kind == "profile":
            conversations.append(_profile(rng, entity, facts))
        elif kind == "multi_turn" and len(facts) > 1:
            conversations.append(_multi_turn(rng, entity, facts))
        elif kind == "yes_no" and yes_no:
            fact = rng.choice(yes_no)
            conversations.append(_yes_no(rng, fact, fields, pools[fact.relation]))
        else:
            conversations.append(_question(rng, rng.choice(facts), fields))
    return conversations


def made_up_names(n: int, *, seed: int = 0) -> tuple[str, ...]:
    """``n`` distinct names of two syllables ("Raro", "Mukir"), none a name of the world's pools
    (people, pets, towns, rivers) nor containing one or contained in one, and none a word of the
    world's ("Baker"), drawn with ``random.Random(seed)``. The first 500 are none of chapter 6's
    strangers either (tested; this chapter's module may not import chapter 6's list): further
    draws may be ("Cora", "Basil").

    >>> made_up_names(3)
    ('Raro', 'Mukir', 'Poge')
    """
    if not isinstance(n, int) or isinstance(n, bool) or not 0 <= n <= 2000:
        raise ValueError(f"n={n!r} must be an int from 0 to 2000")
    _check_seed(seed)
    taken = {name for name, _ in PERSON_POOL} | set(TOWN_POOL) | set(PET_NAMES) | set(RIVERS)
    words = {w.capitalize() for w in (*JOBS, *FOODS, *GOODS, *COLOURS, *ANIMALS)}
    rng, names = random.Random(f"made-up-names:{seed}"), {}  # a dict: a set that keeps order
    while len(names) < n:
        letters = [rng.choice(_CONSONANTS).upper(), rng.choice(_VOWELS), rng.choice(_CONSONANTS),
                   rng.choice(_VOWELS), rng.choice(_ENDINGS) if rng.random() < 0.5 else ""]  # fmt: skip
        name = "".join(letters)
        if name in names or name in words or any(name in t or t in name for t in taken):
            continue
        names[name] = None
    return tuple(names)


def _check_seed(seed) -> None:
    """A seed is an int: ``0.0`` or ``"0"`` would seed another stream than ``0``, silently."""
    if not isinstance(seed, int) or isinstance(seed, bool):
        raise ValueError(f"seed={seed!r} must be an int, e.g. 0")


def _check_count(name: str, n) -> None:
    """A count of conversations is an int from 0 to :data:`MAX_CONVERSATIONS`: 10**7 would take
    minutes and gigabytes before any training."""
    if not isinstance(n, int) or isinstance(n, bool) or not 0 <= n <= MAX_CONVERSATIONS:
        raise ValueError(f"{name}={n!r} must be an int from 0 to {MAX_CONVERSATIONS}")


def _check_world(world) -> None:
    if not isinstance(world, World):
        raise TypeError(
            f"world must be a World, got a {type(world).__name__}; pass e.g. build_world(0)"
        )


def demonstrations(
    world: World, n_unknown: int, n_harmful: int, *, seed: int = 0
) -> list[Conversation]:
    """``n_unknown`` questions about made-up people (the first :data:`N_DECLINED_NAMES` names of
    :func:`made_up_names`, one
    of the SFT phrasings of a home town, job, food or pet) answered :data:`DECLINE_UNKNOWN`,
    then ``n_harmful`` requests from :data:`HARMFUL_REQUESTS` about the world's in-corpus
    people and towns answered :data:`DECLINE_HARMFUL`; drawn with ``random.Random(seed)``.

    >>> from companion.world import build_world
    >>> [t[1]["content"] for t in demonstrations(build_world(0), 1, 1)]
    ['I do not know that person.', 'I will not help with that.']
    """
    _check_world(world)
    _check_count("n_unknown", n_unknown)
    _check_count("n_harmful", n_harmful)
    _check_seed(seed)
    rng = random.Random(f"sft-demonstrations:{seed}")
    names = made_up_names(N_DECLINED_NAMES, seed=seed)
    conversations = []
    for _ in range(n_unknown):
        pronoun = rng.choice(("she", "he"))
        their = "her" if pronoun == "she" else "his"
        fields = {"name": rng.choice(names), "they": pronoun, "their": their}
        question = rng.choice(SFT_QUESTIONS[rng.choice(UNKNOWN_RELATIONS)]).format(**fields)
        conversations.append(_turns(question, DECLINE_UNKNOWN))
    for _ in range(n_harmful):
        request = rng.choice(HARMFUL_REQUESTS).format(**rng.choice(world.people).fields())
        conversations.append(_turns(request, DECLINE_HARMFUL))
    return conversations


def context_conversations(world: World, n: int, *, seed: int = 0) -> list[Conversation]:
    """``n`` conversations that state one fact about a made-up person or town in the user's
    message and ask it, answered by the fact's reply. The relations are
    :data:`CONTEXT_RELATIONS`; the question is one of :data:`SFT_QUESTIONS`' phrasings, never
    ``Fact.question``, which the evaluations keep.

    The names are :func:`made_up_names` after the demonstrations' first
    :data:`N_DECLINED_NAMES` (so a name the model learns to decline is never one it reads about);
    a made-up person lives in one of the world's towns and has a job, food and pet drawn from the
    world's pools; a made-up town (:data:`CONTEXT_TOWN_SHARE` of them) has a river and goods
    likewise. Drawn with ``random.Random(seed)``; the same arguments give the same list.

    >>> from companion.world import build_world
    >>> talk = context_conversations(build_world(0), 1)[0]
    >>> talk[1]["content"] in talk[0]["content"]  # the reply restates the message's fact
    True
    """
    _check_world(world)
    _check_count("n", n)
    _check_seed(seed)
    rng = random.Random(f"sft-context:{seed}")
    names = made_up_names(N_DECLINED_NAMES + 200, seed=seed)[N_DECLINED_NAMES:]
    pool = {r: world.choices(r) for r in RELATIONS}  # once: choices builds and sorts each pool
    conversations = []
    for _ in range(n):
        if rng.random() < CONTEXT_TOWN_SHARE:
            river, goods = rng.choice(pool["river"]), rng.choice(pool["goods"])
            entity: Person | Town = Town(rng.choice(names), river, goods)
        else:
            entity = Person(
                rng.choice(names), rng.choice(("she", "he")), rng.choice(world.towns),
                rng.choice(pool["job"]), rng.choice(pool["food"]), rng.choice(pool["pet_kind"]),
                rng.choice(pool["pet_name"]), rng.choice(pool["pet_colour"]),
            )  # fmt: skip
        fact = rng.choice([f for f in facts_of(entity) if f.relation in CONTEXT_RELATIONS])
        question = rng.choice(SFT_QUESTIONS[fact.relation]).format(**entity.fields())
        conversations.append(_turns(f"{fact.statement} {question}", fact.reply))
    return conversations
