"""Deterministic synthetic data for the demo zoo: a generic pretraining mixture and three domains of two tasks each.

The domains stand in for the DPPA paper's math (GSM8K, MATH), finance (FiQA_SA, FPB) and law (SCOTUS,
UNFAIR_ToS). Every task is a zero-shot generation prompt ending in ``"Answer:"``; the reference answer is a
number (math) or one of a few listed choices (finance, law). Splits: ``train`` (fine-tuning), ``dev`` (tuning,
e.g. amplification factors), ``test`` (reported). A split depends only on the task and the data seed; test and
dev prompts are distinct and never occur in train (train may repeat a prompt). Math operands repeat across splits
(the tiny models memorise the tables).
"""

from __future__ import annotations

import itertools
import random
import re
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from functools import lru_cache

DATA_SEED = 1234
SPLITS = ("train", "dev", "test")
SPLIT_SIZES = {"test": 100, "dev": 50, "train": 4000}

NAMES = (
    "Anna",
    "Ben",
    "Carla",
    "David",
    "Emma",
    "Frank",
    "Grace",
    "Henry",
    "Iris",
    "Jack",
    "Kate",
    "Leo",
    "Mia",
    "Noah",
    "Olga",
    "Paul",
    "Rosa",
    "Sam",
    "Tina",
    "Victor",
)
OBJECTS = (
    "apples",
    "pencils",
    "books",
    "coins",
    "marbles",
    "cookies",
    "stamps",
    "shells",
    "cards",
    "eggs",
    "oranges",
    "stickers",
)
PLACES = ("market", "school", "park", "library", "station", "bakery", "office", "garden")
DAYS = ("Monday", "Tuesday", "Wednesday", "Thursday", "Friday")
CITIES = ("Paris", "London", "Tokyo", "Berlin", "Madrid", "Rome", "Oslo", "Vienna")
COMPANIES = (
    "Acme",
    "Borealis",
    "Cobalt",
    "Dynamo",
    "Everest",
    "Fulcrum",
    "Granite",
    "Horizon",
    "Ironwood",
    "Juniper",
    "Keystone",
    "Lumen",
)
PARTIES = ("buyer", "seller", "tenant", "landlord", "employee", "employer", "supplier", "customer")
ITEMS = ("goods", "equipment", "vehicles", "software", "building", "machines")
COURTS = ("district court", "trial court", "lower court", "county court")

ADD_TEMPLATES = (
    "{name} has {a} {obj} and gets {b} more. How many {obj} does {name} have now?",
    "{name} picked {a} {obj} in the morning and {b} {obj} in the afternoon. How many {obj} did {name} pick in total?",
    "There are {a} {obj} in a bag and {name} puts in {b} more. How many {obj} are in the bag?",
    "{name} had {a} {obj}. {name2} gave {name} {b} {obj}. How many {obj} does {name} have?",
)
MUL_TEMPLATES = (
    "{name} buys {a} boxes with {b} {obj} in each box. How many {obj} does {name} buy?",
    "A shelf has {a} rows of {b} {obj}. How many {obj} are on the shelf?",
    "{name} gives {b} {obj} to each of {a} friends. How many {obj} does {name} give away?",
    "There are {a} bags and each bag holds {b} {obj}. How many {obj} are there?",
)
ADD_RANGE = (1, 20)
MUL_RANGE = (2, 9)

SENTIMENT_VERBS = {
    "positive": ("surged", "soared", "jumped", "rallied", "climbed sharply", "rose strongly"),
    "negative": ("plunged", "tumbled", "slumped", "sank", "fell sharply", "crashed"),
    "neutral": ("held steady", "were flat", "barely moved", "traded sideways", "stayed unchanged"),
}
SENTIMENT_EVENTS = (
    "quarterly report",
    "board meeting",
    "annual meeting",
    "product launch",
    "market open",
    "earnings call",
)
HEADLINE_TEMPLATES = (
    "Shares of {company} {verb} after the {event}.",
    "{company} shares {verb} on {day} following the {event}.",
    "In {city}, {company} shares {verb} after the {event}.",
)
TOPIC_PHRASES = {
    "earnings": (
        "reported a quarterly profit of {n} million",
        "posted higher revenue for the year",
        "said its profit fell in the last quarter",
        "beat sales forecasts for the quarter",
    ),
    "merger": (
        "agreed to acquire {company2}",
        "will combine with {company2} in a stock deal",
        "made an offer to buy {company2}",
        "completed its takeover of {company2}",
    ),
    "dividend": (
        "will pay shareholders {n} cents per share each quarter",
        "raised its cash payout to shareholders",
        "cut the cash it returns to investors each quarter",
        "declared a special payout of {n} cents per share",
    ),
    "layoffs": (
        "will cut {n} jobs",
        "plans to reduce its workforce by {n} percent",
        "is letting go of {n} workers in {city}",
        "announced staff cuts at its {city} office",
    ),
}
CLAUSE_PHRASES = {
    "termination": (
        "The {party} may end this agreement with {n} days notice.",
        "This agreement ends if the {party} fails to deliver the {item}.",
        "The {party} can cancel the contract at any time after {n} months.",
        "The contract expires after {n} months unless the {party} renews it.",
    ),
    "confidentiality": (
        "The {party} shall not disclose any secret information about the {item}.",
        "The {party} must keep all documents private for {n} years.",
        "The {party} may not share the terms of this contract with the {party2}.",
        "The {party} shall protect the trade secrets of the {party2}.",
    ),
    "liability": (
        "The {party} is not responsible for any damage to the {item}.",
        "The {party} shall cover all losses up to {n} thousand dollars.",
        "The {party} is liable for injuries caused by the {item}.",
        "Neither the {party} nor the {party2} is responsible for delays caused by storms.",
    ),
    "payment": (
        "The {party} shall pay the full price within {n} days.",
        "The {party} must pay a fee of {n} dollars for the {item}.",
        "Invoices for the {item} are due at the end of each month.",
        "Late bills carry interest of {n} percent.",
    ),
}
VERDICT_CUES = {
    "affirmed": (
        "applied the law correctly",
        "made no error",
        "reached the right result",
        "weighed the evidence properly",
    ),
    "reversed": ("misread the statute", "made a clear error", "ignored the key evidence", "applied the wrong rule"),
    "remanded": (
        "did not hear all the facts",
        "must consider new evidence",
        "left key questions open",
        "needs to hold a new hearing",
    ),
}
CASE_TEMPLATES = (
    "The {court} ruled for the {party}. On appeal, the judges found that the {court} {cue}.",
    "The {court} ruled against the {party} on {day}. The appeals court held that the {court} {cue}.",
    "After a hearing in {city}, the {court} sided with the {party}. On review, the higher court said it {cue}.",
)

COLOR_FACTS = {
    "apple": "red",
    "banana": "yellow",
    "grass": "green",
    "sky": "blue",
    "snow": "white",
    "coal": "black",
    "lemon": "yellow",
    "cherry": "red",
    "leaf": "green",
    "sea": "blue",
    "milk": "white",
}
COLORS = ("red", "yellow", "green", "blue", "white", "black")
GENERIC_TEMPLATES = (  # stories, news, and Q&A in the tasks' formats (so the base answers in format, near chance)
    "{name} went to the {place} on {day}.",
    "{name} gave {n} {obj} to {name2} at the {place}.",
    "{company} opened a new office in {city}.",
    "The {court} heard a case about the {party} on {day}.",
    "Question: Is the {thing} {c1} or {c2}? Answer: {color}",
    "Question: What comes after {n}? Answer: {n1}",
    "Question: {name} has {n} {obj}. How many {obj} does {name} have? Answer: {n}",
    "Note: {name} painted the {place} {paint}. Question: Is this note about {paints}? Answer: {paint}",
    "Note: {name} wrote the word {word} on the board. Question: Is this note about {words}? Answer: {word}",
    "Note: The word of the day is {word}. Question: Is the note about {words}? Answer: {word}",
)
OPTION_WORDS = (
    COLORS + PLACES + tuple(SENTIMENT_VERBS) + tuple(TOPIC_PHRASES) + tuple(CLAUSE_PHRASES) + tuple(VERDICT_CUES)
)  # the generic "pick the listed option named in the note" questions use every label word
PROMPT_FORMATS = {
    "numeric": "Question: {body} Answer:",
    "finance_sentiment": "Headline: {body} Question: Is the sentiment of this headline {options}? Answer:",
    "finance_topic": "News: {body} Question: Is this news about {options}? Answer:",
    "law_clause": "Clause: {body} Question: Is this clause about {options}? Answer:",
    "law_verdict": "Case: {body} Question: Was the decision {options}? Answer:",
}


@dataclass(frozen=True)
class Example:
    """One zero-shot prompt with its reference answer; ``choices`` is empty for numeric tasks."""

    prompt: str
    answer: str
    choices: tuple[str, ...] = ()

    def as_record(self) -> dict[str, object]:
        """The row an lm-eval dataset holds (``choices`` only for classification tasks)."""
        record: dict[str, object] = {"prompt": self.prompt, "answer": self.answer}
        if self.choices:
            record["choices"] = list(self.choices)
        return record


@dataclass(frozen=True)
class TaskSpec:
    """A synthetic task: ``body(rng, label)`` returns the prompt body and the answer."""

    name: str
    domain: str
    choices: tuple[str, ...]
    body: Callable[[random.Random, str], tuple[str, str]]
    prompt_format: str

    @property
    def numeric(self) -> bool:
        return not self.choices

    def example(self, rng: random.Random, label: str = "") -> Example:
        body, answer = self.body(rng, label)
        return Example(self.prompt_format.format(body=body, options=_options(self.choices)), answer, self.choices)


def _options(choices: tuple[str, ...] | list[str]) -> str:
    """``"a, b or c"``."""
    return ", ".join(choices[:-1]) + " or " + choices[-1] if choices else ""


def _two_names(rng: random.Random) -> tuple[str, str]:
    name, name2 = rng.sample(NAMES, 2)
    return name, name2


def _math_body(
    templates: tuple[str, ...], value_range: tuple[int, int], op: Callable[[int, int], int]
) -> Callable[[random.Random, str], tuple[str, str]]:
    def body(rng: random.Random, _label: str) -> tuple[str, str]:
        a, b = rng.randint(*value_range), rng.randint(*value_range)
        name, name2 = _two_names(rng)
        text = rng.choice(templates).format(name=name, name2=name2, obj=rng.choice(OBJECTS), a=a, b=b)
        return text, str(op(a, b))

    return body


def _sentiment_body(rng: random.Random, label: str) -> tuple[str, str]:
    text = rng.choice(HEADLINE_TEMPLATES).format(
        company=rng.choice(COMPANIES),
        verb=rng.choice(SENTIMENT_VERBS[label]),
        event=rng.choice(SENTIMENT_EVENTS),
        day=rng.choice(DAYS),
        city=rng.choice(CITIES),
    )
    return text, label


def _topic_body(rng: random.Random, label: str) -> tuple[str, str]:
    company, company2 = rng.sample(COMPANIES, 2)
    phrase = rng.choice(TOPIC_PHRASES[label]).format(company2=company2, n=rng.randint(2, 90), city=rng.choice(CITIES))
    return f"{company} {phrase}.", label


def _clause_body(rng: random.Random, label: str) -> tuple[str, str]:
    party, party2 = rng.sample(PARTIES, 2)
    text = rng.choice(CLAUSE_PHRASES[label]).format(
        party=party, party2=party2, item=rng.choice(ITEMS), n=rng.randint(2, 90)
    )
    return text, label


def _verdict_body(rng: random.Random, label: str) -> tuple[str, str]:
    text = rng.choice(CASE_TEMPLATES).format(
        court=rng.choice(COURTS),
        party=rng.choice(PARTIES),
        day=rng.choice(DAYS),
        city=rng.choice(CITIES),
        cue=rng.choice(VERDICT_CUES[label]),
    )
    return text, label


TASKS: dict[str, TaskSpec] = {
    spec.name: spec
    for spec in (
        TaskSpec(
            "math_add", "math", (), _math_body(ADD_TEMPLATES, ADD_RANGE, lambda a, b: a + b), PROMPT_FORMATS["numeric"]
        ),
        TaskSpec(
            "math_mul", "math", (), _math_body(MUL_TEMPLATES, MUL_RANGE, lambda a, b: a * b), PROMPT_FORMATS["numeric"]
        ),
        TaskSpec(
            "finance_sentiment", "finance", tuple(SENTIMENT_VERBS), _sentiment_body, PROMPT_FORMATS["finance_sentiment"]
        ),
        TaskSpec("finance_topic", "finance", tuple(TOPIC_PHRASES), _topic_body, PROMPT_FORMATS["finance_topic"]),
        TaskSpec("law_clause", "law", tuple(CLAUSE_PHRASES), _clause_body, PROMPT_FORMATS["law_clause"]),
        TaskSpec("law_verdict", "law", tuple(VERDICT_CUES), _verdict_body, PROMPT_FORMATS["law_verdict"]),
    )
}
DOMAINS: dict[str, tuple[str, ...]] = {}
for _spec in TASKS.values():
    DOMAINS[_spec.domain] = DOMAINS.get(_spec.domain, ()) + (_spec.name,)


@lru_cache(maxsize=None)
def _all_splits(task: str, seed: int) -> dict[str, tuple[Example, ...]]:
    spec = TASKS[task]
    rng = random.Random(f"{seed}:{task}")
    held_out: set[str] = set()  # test and dev prompts: unique, and never used for training
    splits: dict[str, tuple[Example, ...]] = {}
    for split in ("test", "dev", "train"):  # reported split first, so its content never depends on the others
        examples: list[Example] = []
        for attempt in itertools.count():
            if len(examples) == SPLIT_SIZES[split]:
                break
            if attempt > 100 * SPLIT_SIZES[split]:
                raise RuntimeError(f"{task}: too few distinct prompts for the {split} split")
            label = spec.choices[len(examples) % len(spec.choices)] if spec.choices else ""
            example = spec.example(rng, label)
            if example.prompt not in held_out:
                examples.append(example)
                if split != "train":
                    held_out.add(example.prompt)
        rng.shuffle(examples)
        splits[split] = tuple(examples)
    return splits


def task_split(task: str, split: str, seed: int = DATA_SEED) -> tuple[Example, ...]:
    """The examples of one split (``train``/``dev``/``test``) of a task (e.g. ``"math_add"``); labels are balanced."""
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}; expected one of {SPLITS}")
    if task not in TASKS:
        raise ValueError(f"unknown task {task!r}; expected one of {tuple(TASKS)}")
    return _all_splits(task, seed)[split]


def generic_text(rng: random.Random) -> str:
    """One sentence of the generic pretraining mixture (stories, company and court news, simple Q&A)."""
    name, name2 = _two_names(rng)
    n, m = rng.sample(range(0, 60), 2)
    thing = rng.choice(tuple(COLOR_FACTS))
    c1, c2 = rng.sample((COLOR_FACTS[thing], rng.choice([c for c in COLORS if c != COLOR_FACTS[thing]])), 2)
    paints, words = rng.sample(COLORS, rng.randint(2, 4)), rng.sample(OPTION_WORDS, rng.randint(2, 4))
    template = rng.choice(GENERIC_TEMPLATES + ("{domain_sentence}",) * 3)
    domain_sentence = rng.choice(
        (
            "{company} shares " + rng.choice(sum(SENTIMENT_VERBS.values(), ())) + " on {day}.",
            "{company} " + rng.choice(sum(TOPIC_PHRASES.values(), ())) + ".",
            "The contract says: " + rng.choice(sum(CLAUSE_PHRASES.values(), ())),
            "The judges said that the {court} " + rng.choice(sum(VERDICT_CUES.values(), ())) + ".",
        )
    )
    fields = dict(
        name=name,
        name2=name2,
        n=n,
        m=m,
        n1=n + 1,
        obj=rng.choice(OBJECTS),
        place=rng.choice(PLACES),
        word=rng.choice(words),
        words=_options(words),
        paint=rng.choice(paints),
        paints=_options(paints),
        day=rng.choice(DAYS),
        city=rng.choice(CITIES),
        company=rng.choice(COMPANIES),
        company2=rng.choice(COMPANIES),
        court=rng.choice(COURTS),
        party=rng.choice(PARTIES),
        party2=rng.choice(PARTIES),
        item=rng.choice(ITEMS),
        thing=thing,
        c1=c1,
        c2=c2,
        color=COLOR_FACTS[thing],
    )
    return template.format(domain_sentence=domain_sentence.format(**fields), **fields)


def generic_stream(seed: int) -> Iterator[str]:
    """An endless deterministic stream of generic pretraining sentences."""
    rng = random.Random(f"{seed}:generic")
    while True:
        yield generic_text(rng)


def vocabulary_texts() -> list[str]:
    """Every fixed string the generators use (placeholders removed), from which the tokenizer's vocabulary is built."""
    pools: list[str | Sequence[str]] = [
        NAMES,
        OBJECTS,
        PLACES,
        DAYS,
        CITIES,
        COMPANIES,
        PARTIES,
        ITEMS,
        COURTS,
        ADD_TEMPLATES,
        MUL_TEMPLATES,
        SENTIMENT_EVENTS,
        HEADLINE_TEMPLATES,
        CASE_TEMPLATES,
        COLORS,
        tuple(COLOR_FACTS),
        GENERIC_TEMPLATES,
        tuple(PROMPT_FORMATS.values()),
        "The contract says: The judges said that the",
        "0 1 2 3 4 5 6 7 8 9 , or",
    ]
    for table in (SENTIMENT_VERBS, TOPIC_PHRASES, CLAUSE_PHRASES, VERDICT_CUES):
        pools.append(tuple(table))
        pools.extend(table.values())
    texts: list[str] = []
    for pool in pools:
        texts.extend([pool] if isinstance(pool, str) else pool)
    return [re.sub(r"\{\w+\}", " ", text) for text in texts]
