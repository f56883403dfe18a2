"""The course's fictional world: towns on rivers, people with jobs, foods and pets, and the facts.

Taught in ``04_pretraining.ipynb`` (the corpus written about this world is in
:mod:`companion.corpus`). Everything is drawn from fixed name pools by a ``random.Random(seed)``
of its own, so ``build_world(seed)`` returns the same world on every machine and touches no
global random state.

Each :class:`Fact` is one (subject, relation, answer) triple with the phrasings the later chapters
need: a ``prompt`` whose true continuation is ``" " + answer`` (fact-completion accuracy of the
base model), a ``question`` and a one-sentence ``reply`` (chat pairs for SFT; a wrong reply from
:meth:`World.wrong_answers` gives RLHF's preference pairs). Some people and towns are *held out*:
their names and facts never appear in the corpus, so the inference chapter can ask about them and
measure hallucination.

Left out: anything beyond simple attributes (no relations between people, no time, no numbers);
the word lists are kept small and regular so that a model of about a million parameters can learn
them in minutes.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

# Name pools. No name is a part of another word of the world (a test checks the corpus for
# held-out names, so "Ada" next to "Adam" would be a trap), and every job, animal and colour starts
# with a consonant so that "a baker", "a cat", "a grey cat" never need "an".
PERSON_POOL: tuple[tuple[str, str], ...] = (  # (name, pronoun)
    ("Mira", "she"), ("Tomas", "he"), ("Elna", "she"), ("Bram", "he"), ("Suki", "she"),
    ("Oren", "he"), ("Lila", "she"), ("Piet", "he"), ("Nora", "she"), ("Hugo", "he"),
    ("Rosa", "she"), ("Finn", "he"), ("Greta", "she"), ("Kofi", "he"), ("Lena", "she"),
    ("Otto", "he"), ("Vera", "she"), ("Emil", "he"), ("Tilda", "she"), ("Ruben", "he"),
    ("Maud", "she"), ("Sven", "he"), ("Iris", "she"), ("Jonas", "he"), ("Dora", "she"),
    ("Felix", "he"), ("Yara", "she"), ("Bruno", "he"), ("Ines", "she"), ("Karl", "he"),
    ("Zelda", "she"), ("Anton", "he"), ("Hedda", "she"), ("Milo", "he"), ("Pia", "she"),
    ("Viggo", "he"),
)  # fmt: skip
TOWN_POOL: tuple[str, ...] = (
    "Thornby", "Ashford", "Millbrook", "Redwick", "Fernhill", "Stonebridge", "Larkmoor",
    "Oakhollow", "Brackwater", "Dunmere", "Bellhaven", "Pebbleton",
)  # fmt: skip
RIVERS: tuple[str, ...] = ("Elm", "Dove", "Lune", "Esk", "Teme", "Wey")
PET_NAMES: tuple[str, ...] = (
    "Pip", "Rusty", "Tumble", "Sooty", "Button", "Mossy", "Dot", "Biscuit", "Pepper", "Clover",
    "Nutmeg", "Tansy", "Ziggy", "Fudge", "Hazel", "Juniper", "Maple", "Noodle", "Wobble", "Quill",
    "Sable", "Thistle", "Willow", "Acorn", "Bobbin", "Cinder", "Dumpling", "Fennel", "Gizmo",
    "Jasper", "Kipper", "Lupin", "Marble", "Nettle", "Olive", "Puddle",
)  # fmt: skip
JOBS: tuple[str, ...] = (
    "baker", "farmer", "fisher", "teacher", "doctor", "potter", "weaver", "smith", "miller",
    "tailor", "banker", "painter", "builder", "carpenter", "singer", "sailor",
)  # fmt: skip
FOODS: tuple[str, ...] = (
    "bread", "soup", "apples", "cheese", "honey", "plums", "rice", "pears", "cake", "pie",
    "beans", "porridge", "carrots", "fish",
)  # fmt: skip
ANIMALS: dict[str, str] = {  # kind -> what covers it ("Pip has grey fur")
    "cat": "fur", "dog": "fur", "goat": "fur", "rabbit": "fur", "horse": "hair", "pony": "hair",
    "duck": "feathers", "hen": "feathers", "parrot": "feathers",
}  # fmt: skip
COLOURS: tuple[str, ...] = ("grey", "black", "white", "brown", "ginger", "golden", "red", "silver")
GOODS: tuple[str, ...] = (
    "hats", "boots", "candles", "rope", "lamps", "baskets", "kettles", "maps", "spoons", "blankets",
)  # fmt: skip

# relation -> (prompt, question, reply). The prompt's true continuation is " " + answer; the
# reply is the full-sentence answer a chat model should give. Fields come from the entity.
RELATIONS: dict[str, tuple[str, str, str]] = {
    "home_town": (
        "{name} lives in the town of",
        "Where does {name} live?",
        "{name} lives in {town}.",
    ),
    "job": ("{name} works as a", "What is {name}'s job?", "{name} works as a {job}."),
    "food": (
        "{name}'s favourite food is",
        "What is {name}'s favourite food?",
        "{name}'s favourite food is {food}.",
    ),
    "pet_kind": (
        "{name}'s pet is a",
        "What kind of pet does {name} have?",
        "{name}'s pet is a {kind}.",
    ),
    "pet_name": (
        "{name}'s {kind} is called",
        "What is the name of {name}'s {kind}?",
        "{name}'s {kind} is called {pet}.",
    ),
    "pet_colour": (
        "The colour of {pet} is",
        "What colour is {pet}?",
        "{pet} is a {colour} {kind}.",
    ),
    "river": (
        "{town} lies on the river",
        "Which river does {town} lie on?",
        "{town} lies on the river {river}.",
    ),
    "goods": (
        "The shop in {town} sells",
        "What does the shop in {town} sell?",
        "The shop in {town} sells {goods}.",
    ),
}
PERSON_RELATIONS: dict[str, str] = {  # relation -> the template field holding its answer
    "home_town": "town", "job": "job", "food": "food", "pet_kind": "kind", "pet_name": "pet",
    "pet_colour": "colour",
}  # fmt: skip
TOWN_RELATIONS: dict[str, str] = {"river": "river", "goods": "goods"}


@dataclass(frozen=True)
class Town:
    """A town, e.g. ``Town("Thornby", river="Elm", goods="hats")``."""

    name: str  # the town's name, e.g. "Thornby"
    river: str  # the river it lies on, e.g. "Elm"
    goods: str  # what its shop sells, e.g. "hats"

    def fields(self) -> dict[str, str]:
        """Template fields: ``{"town": "Thornby", "river": "Elm", "goods": "hats"}``."""
        return {"town": self.name, "river": self.river, "goods": self.goods}


@dataclass(frozen=True)
class Person:
    """A person, their home town and their pet, e.g. Mira, a baker in Thornby with a cat Pip."""

    name: str  # first name, e.g. "Mira"
    pronoun: str  # "she" or "he"
    town: Town  # where they live
    job: str  # e.g. "baker"
    food: str  # favourite food, e.g. "soup"
    kind: str  # the pet's kind, e.g. "cat"
    pet: str  # the pet's name, e.g. "Pip"
    colour: str  # the pet's colour, e.g. "grey"

    def fields(self) -> dict[str, str]:
        """Every template field: name, pronouns (``they``/``their``, lower and capitalised),
        the pet's covering, and the home town's fields (``town``, ``river``, ``goods``)."""
        their = "her" if self.pronoun == "she" else "his"
        return {
            **self.town.fields(),
            "name": self.name,
            "they": self.pronoun,
            "They": self.pronoun.capitalize(),
            "their": their,
            "Their": their.capitalize(),
            "job": self.job,
            "food": self.food,
            "kind": self.kind,
            "pet": self.pet,
            "colour": self.colour,
            "covering": ANIMALS[self.kind],
        }


@dataclass(frozen=True)
class Fact:
    """One fact, e.g. ``Fact("Mira", "home_town", "Thornby", "Mira lives in the town of",
    "Where does Mira live?", "Mira lives in Thornby.")``; ``prompt + " " + answer`` is true."""

    subject: str  # the entity the fact is about: a person, a pet or a town
    relation: str  # a key of RELATIONS, e.g. "home_town"
    answer: str  # e.g. "Thornby"
    prompt: str  # text whose true continuation is " " + answer
    question: str  # the same fact asked as a question, e.g. "Where does Mira live?"
    reply: str  # a one-sentence answer to the question, e.g. "Mira lives in Thornby."

    @property
    def statement(self) -> str:
        """The fact as one sentence: ``"Mira lives in the town of Thornby."``."""
        return f"{self.prompt} {self.answer}."

    def reply_with(self, answer: str) -> str:
        """The reply with another answer in it: a wrong reply for a preference pair.

        >>> Fact("Mira", "job", "baker", "Mira works as a", "What is Mira's job?",
        ...      "Mira works as a baker.").reply_with("smith")
        'Mira works as a smith.'
        """
        return self.reply.replace(self.answer, answer)


def facts_of(entity: Person | Town) -> tuple[Fact, ...]:
    """The facts about one town (river, goods) or person (home town, job, food, pet kind, name,
    colour), in that order."""
    fields = entity.fields()
    relations = PERSON_RELATIONS if isinstance(entity, Person) else TOWN_RELATIONS
    facts = []
    for relation, answer_field in relations.items():
        prompt, question, reply = (t.format(**fields) for t in RELATIONS[relation])
        subject = entity.pet if relation == "pet_colour" else entity.name
        facts.append(Fact(subject, relation, fields[answer_field], prompt, question, reply))
    return tuple(facts)


@dataclass(frozen=True)
class World:
    """Towns and people, split into those the corpus talks about and those it never mentions."""

    seed: int  # the seed build_world drew this world with
    towns: tuple[Town, ...]  # towns the corpus describes
    people: tuple[Person, ...]  # people the corpus describes
    held_out_towns: tuple[Town, ...]  # towns never named in the corpus
    held_out_people: tuple[Person, ...]  # people (and their pets) never named in the corpus

    @property
    def entities(self) -> tuple[Town | Person, ...]:
        """Every in-corpus town and person."""
        return self.towns + self.people

    @property
    def held_out(self) -> tuple[Town | Person, ...]:
        """Every held-out town and person."""
        return self.held_out_towns + self.held_out_people

    @property
    def held_out_names(self) -> tuple[str, ...]:
        """Names that never appear in the corpus: held-out towns, people and their pets."""
        return tuple(t.name for t in self.held_out_towns) + tuple(
            name for p in self.held_out_people for name in (p.name, p.pet)
        )

    @property
    def facts(self) -> tuple[Fact, ...]:
        """Facts the corpus states, several times each and in several phrasings."""
        return tuple(f for e in self.entities for f in facts_of(e))

    @property
    def held_out_facts(self) -> tuple[Fact, ...]:
        """Facts about held-out entities: true in the world, never in the corpus."""
        return tuple(f for e in self.held_out for f in facts_of(e))

    def choices(self, relation: str) -> tuple[str, ...]:
        """Every answer a fact of ``relation`` could have in this world, sorted.

        >>> build_world().choices("river")
        ('Dove', 'Elm', 'Esk', 'Lune', 'Teme', 'Wey')
        """
        if relation not in RELATIONS:
            raise ValueError(f"unknown relation {relation!r}; use one of {sorted(RELATIONS)}")
        pools = {
            "home_town": tuple(t.name for t in self.towns),
            "job": JOBS,
            "food": FOODS,
            "pet_kind": tuple(ANIMALS),
            "pet_name": tuple(p.pet for p in self.people),
            "pet_colour": COLOURS,
            "river": RIVERS,
            "goods": GOODS,
        }
        return tuple(sorted(pools[relation]))

    def wrong_answers(self, fact: Fact) -> tuple[str, ...]:
        """Answers of the same kind that are false for ``fact`` (for preference pairs).

        >>> world = build_world()
        >>> fact = world.facts[0]
        >>> fact.answer in world.wrong_answers(fact)
        False
        """
        return tuple(a for a in self.choices(fact.relation) if a != fact.answer)


def build_world(
    seed: int = 0,
    *,
    n_towns: int = 8,
    n_people: int = 24,
    n_held_out_towns: int = 2,
    n_held_out_people: int = 6,
) -> World:
    """Draw a world from the name pools with ``random.Random(seed)``; same seed, same world.

    >>> world = build_world(seed=0)
    >>> len(world.towns), len(world.people), len(world.held_out_people)
    (8, 24, 6)
    >>> len(world.facts), len(world.held_out_facts)
    (160, 40)
    """
    if not isinstance(seed, int) or isinstance(seed, bool):
        raise ValueError(f"seed must be an int, got {seed!r}; pass e.g. seed=0")
    sizes = {
        "n_towns + n_held_out_towns": (n_towns, n_held_out_towns, len(TOWN_POOL)),
        "n_people + n_held_out_people": (n_people, n_held_out_people, len(PERSON_POOL)),
    }
    for what, (n, held, pool) in sizes.items():
        if n < 2 or held < 0 or n + held > pool:
            raise ValueError(
                f"{what} = {n} + {held} must be at most the pool size {pool} with at least 2 "
                "in the corpus; ask for fewer or add names to the pool"
            )
    if n_people < n_towns:
        raise ValueError(
            f"n_people={n_people} < n_towns={n_towns}: every town needs a resident; "
            "ask for more people or fewer towns"
        )
    rng = random.Random(seed)
    town_names = rng.sample(TOWN_POOL, n_towns + n_held_out_towns)
    towns = [Town(name, rng.choice(RIVERS), rng.choice(GOODS)) for name in town_names]
    in_towns = towns[:n_towns]
    people_pool = rng.sample(PERSON_POOL, n_people + n_held_out_people)
    pets = rng.sample(PET_NAMES, len(people_pool))
    people = []
    for i, ((name, pronoun), pet) in enumerate(zip(people_pool, pets, strict=True)):
        # Every in-corpus town gets residents first; held-out people may live anywhere known.
        town = in_towns[i] if i < n_towns else rng.choice(in_towns)
        kind = rng.choice(tuple(ANIMALS))
        people.append(
            Person(
                name,
                pronoun,
                town,
                rng.choice(JOBS),
                rng.choice(FOODS),
                kind,
                pet,
                rng.choice(COLOURS),
            )
        )
    return World(
        seed=seed,
        towns=tuple(in_towns),
        people=tuple(people[:n_people]),
        held_out_towns=tuple(towns[n_towns:]),
        held_out_people=tuple(people[n_people:]),
    )
