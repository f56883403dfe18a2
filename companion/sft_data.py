"""The SFT data: conversations about half of the world, generated from it like the corpus.

Taught in ``05_sft.ipynb``. Supervised fine-tuning shows the base model conversations in the chat
template (:mod:`companion.chat`) until it answers a question in one turn and stops. This module
writes those conversations from the world of :mod:`companion.world`, deterministically from a
seed (its own ``random.Random``; no download, no file).

**The split.** :func:`split_world` puts half of the in-corpus towns, and the people who live in
them with their pets, on the *SFT* side; the rest of the world is on the *evaluation* side. The
SFT data states and asks the facts of the SFT side only, so every fact of the evaluation side is
known to the model, if at all, from pretraining alone. Names of both sides appear in one kind of
conversation that holds no fact ("Say hello to Mira." → "Hello, Mira!"): a reply about a fact
begins with its subject's name, and a model that only ever wrote the SFT side's names learns to
write only those. The *held-out* people and towns of the world (``world.held_out``, never in the
corpus) appear nowhere in the SFT data: the inference chapter asks about them to measure
hallucination. The evaluation asks each fact's own question (``Fact.question``, e.g. "Where
does Mira live?"), a phrasing the SFT data never uses, so even the SFT side's facts are asked in
words the fine-tuning never showed.

Kinds of conversation (``CONVERSATION_KINDS`` gives their shares):

- **question**: one fact asked in one of several phrasings, answered by the fact's reply;
- **yes/no**: "Does Mira live in Ashford?" → "No, Mira lives in Thornby.";
- **profile**: "Tell me about Mira." → two or three of her facts in two sentences;
- **name**: a name of either side repeated back, "Hello! I am Mira." → "Hello, Mira! How can
  I help?";
- **multi-turn**: two or three questions about one person or town (two with a greeting or a
  farewell), the later ones with a pronoun ("What is her job?"), which only the history can resolve.

Left out: refusals ("I do not know X": the inference chapter's subject), system prompts, and
anything outside the world.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

from companion.corpus import QUESTIONS
from companion.world import (
    PERSON_RELATIONS,
    TOWN_RELATIONS,
    Fact,
    Person,
    Town,
    World,
    facts_of,
)

Conversation = list[dict[str, str]]  # [{"role": "user" | "assistant", "content": str}, ...]

CONVERSATION_KINDS: dict[str, float] = {  # kind -> share of the conversations
    "question": 0.4,
    "yes_no": 0.15,
    "profile": 0.1,
    "multi_turn": 0.25,
    "name": 0.1,
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
PROFILES: dict[str, tuple[str, ...]] = {  # "Tell me about ..." answers
    "person": (
        "{name} lives in {town} and works as a {job}. {They} has a {kind} called {pet}.",
        "{name} is a {job} from {town}. {Their} favourite food is {food}.",
    ),
    "town": ("{town} lies on the river {river}, and its shop sells {goods}.",),
}
# Greetings and farewells in the corpus's words (its dialogues open and close this way): a word
# the corpus never has costs several tokens, and a conversation has only 64.
GREETINGS: tuple[tuple[str, str], ...] = (
    ("Hello!", "Hello! How can I help?"),
    ("Hello! How are you?", "I am well. How can I help?"),
)
FAREWELLS: tuple[tuple[str, str], ...] = (("Goodbye!", "Goodbye!"),)
# A name repeated back, for any in-corpus person, pet or town of either side (no fact in them):
# replies begin with the subject's name, so the model must learn to repeat any name it is given.
NAME_GREETINGS: dict[str, tuple[str, str]] = {  # name kind -> (user, assistant)
    "person": ("Hello! I am {x}.", "Hello, {x}! How can I help?"),
    "any": ("Say hello to {x}.", "Hello, {x}!"),
}


@dataclass(frozen=True)
class WorldSplit:
    """The world's in-corpus towns and people, split into an SFT side and an evaluation side."""

    sft_towns: tuple[Town, ...]  # towns the SFT data talks about
    sft_people: tuple[Person, ...]  # people (and pets) the SFT data talks about: they live there
    eval_towns: tuple[Town, ...]  # towns asked about only at evaluation
    eval_people: tuple[Person, ...]  # people (and pets) asked about only at evaluation

    @property
    def sft_facts(self) -> tuple[Fact, ...]:
        """Facts the SFT data teaches (in other words than ``Fact.question``)."""
        return tuple(f for e in self.sft_towns + self.sft_people for f in facts_of(e))

    @property
    def eval_facts(self) -> tuple[Fact, ...]:
        """Facts never in the SFT data: the model knows them from pretraining or not at all."""
        return tuple(f for e in self.eval_towns + self.eval_people for f in facts_of(e))

    @property
    def eval_names(self) -> tuple[str, ...]:
        """Names of the evaluation side's towns, people and pets: none is in the SFT data."""
        return tuple(t.name for t in self.eval_towns) + tuple(
            name for p in self.eval_people for name in (p.name, p.pet)
        )


def split_world(world: World, *, seed: int = 0) -> WorldSplit:
    """Half of ``world.towns`` (drawn with the seed) and their residents go to the SFT side.

    >>> from companion.world import build_world
    >>> split = split_world(build_world(0))
    >>> len(split.sft_towns), len(split.eval_towns), len(split.sft_facts) + len(split.eval_facts)
    (4, 4, 160)
    """
    rng = random.Random(f"sft-split:{seed}")
    chosen = set(rng.sample(range(len(world.towns)), len(world.towns) // 2))
    sft_towns = tuple(t for i, t in enumerate(world.towns) if i in chosen)
    eval_towns = tuple(t for i, t in enumerate(world.towns) if i not in chosen)
    return WorldSplit(
        sft_towns=sft_towns,
        sft_people=tuple(p for p in world.people if p.town in sft_towns),
        eval_towns=eval_towns,
        eval_people=tuple(p for p in world.people if p.town in eval_towns),
    )


def _turns(*texts: str) -> Conversation:
    return [{"role": ("user", "assistant")[i % 2], "content": t} for i, t in enumerate(texts)]


def _relations(entity: Person | Town) -> list[str]:
    return list(PERSON_RELATIONS if isinstance(entity, Person) else TOWN_RELATIONS)


def _question(rng: random.Random, fact: Fact, fields: dict[str, str]) -> Conversation:
    return _turns(rng.choice(SFT_QUESTIONS[fact.relation]).format(**fields), fact.reply)


def _yes_no(
    rng: random.Random, fact: Fact, fields: dict[str, str], pool: list[str]
) -> Conversation:
    if rng.random() < 0.5:
        candidate, verdict = fact.answer, "Yes"
    else:
        candidate, verdict = rng.choice([a for a in pool if a != fact.answer]), "No"
    question = YES_NO[fact.relation].format(**fields, x=candidate)
    return _turns(question, f"{verdict}, {fact.reply}")


def _profile(rng: random.Random, entity: Person | Town) -> Conversation:
    kind = "person" if isinstance(entity, Person) else "town"
    answer = rng.choice(PROFILES[kind]).format(**entity.fields())
    return _turns(f"Tell me about {entity.name}.", answer)


def _multi_turn(rng: random.Random, entity: Person | Town) -> Conversation:
    """Two questions with a greeting or a farewell, or three alone; the first names the entity."""
    fields, facts = entity.fields(), facts_of(entity)
    n = min(len(facts), rng.randint(2, 3))
    chosen = rng.sample(facts, n)
    first = [q for q in SFT_QUESTIONS[chosen[0].relation] if "{name}" in q or "{town}" in q]
    texts = [rng.choice(first).format(**fields), chosen[0].reply]
    for fact in chosen[1:]:
        texts += [FOLLOW_UPS[fact.relation].format(**fields), fact.reply]
    extra = rng.random() if n == 2 else 1.0
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
    split = split_world(world, seed=seed)
    rng = random.Random(f"sft-data:{seed}")
    entities = [*split.sft_towns, *split.sft_people]
    # yes/no candidates: any job, food, animal, river or goods; only SFT-side towns by name.
    pools = {r: list(world.choices(r)) for r in YES_NO}
    pools["home_town"] = [t.name for t in split.sft_towns]
    kinds = rng.choices(
        list(CONVERSATION_KINDS), weights=list(CONVERSATION_KINDS.values()), k=n_conversations
    )
    people = [p.name for p in world.people]
    names = people + [p.pet for p in world.people] + [t.name for t in world.towns]
    conversations = []
    for kind in kinds:
        if kind == "name":
            name_kind = rng.choice(tuple(NAME_GREETINGS))
            x = rng.choice(people if name_kind == "person" else names)
            question, answer = NAME_GREETINGS[name_kind]
            conversations.append(_turns(question.format(x=x), answer.format(x=x)))
            continue
        entity = rng.choice(entities)
        fields = entity.fields()
        if kind == "profile":
            conversations.append(_profile(rng, entity))
        elif kind == "multi_turn":
            conversations.append(_multi_turn(rng, entity))
        elif kind == "yes_no":
            fact = rng.choice([f for f in facts_of(entity) if f.relation in YES_NO])
            conversations.append(_yes_no(rng, fact, fields, pools[fact.relation]))
        else:
            conversations.append(_question(rng, rng.choice(facts_of(entity)), fields))
    return conversations
