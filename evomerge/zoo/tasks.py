"""Generated task families of the built-in zoo.

Every task maps a random input string to an answer string. Tasks are grouped in *domains*;
each domain has its own symbol set, so experts of unrelated domains adapt mostly different
directions of the model, while two tasks of one domain (or of domains that share symbols)
overlap strongly. A prompt is ``<task>`` + input + ``=``; the answer follows.

Generators are pure functions of a ``numpy.random.Generator``.
"""

from __future__ import annotations

import string
from dataclasses import dataclass
from typing import Callable

import numpy as np

DIGITS = "0123456789"
LOWER = string.ascii_lowercase
UPPER = string.ascii_uppercase
BRACKETS_OPEN = "([{<"
BRACKETS_CLOSE = ")]}>"
MARKS = "!?*#@%"
GREEK = "αβγδεζηθικλμ"
SEPARATOR = "="

Generator = Callable[[np.random.Generator], tuple[str, str]]


@dataclass(frozen=True)
class TaskSpec:
    """One task family: its name, domain and generator of (input, answer) pairs."""

    name: str
    domain: str
    generate: Generator
    description: str

    @property
    def marker(self) -> str:
        return f"<{self.name}>"

    def prompt(self, text: str) -> str:
        return f"{self.marker}{text}{SEPARATOR}"


def _word(rng: np.random.Generator, alphabet: str, lo: int, hi: int) -> str:
    n = int(rng.integers(lo, hi + 1))
    return "".join(alphabet[i] for i in rng.integers(0, len(alphabet), size=n))


def rev_digits(rng: np.random.Generator) -> tuple[str, str]:
    s = _word(rng, DIGITS, 3, 7)
    return s, s[::-1]


def sort_digits(rng: np.random.Generator) -> tuple[str, str]:
    s = _word(rng, DIGITS, 3, 7)
    return s, "".join(sorted(s))


def add(rng: np.random.Generator) -> tuple[str, str]:
    a, b = (int(x) for x in rng.integers(0, 100, size=2))
    return f"{a}+{b}", str(a + b)


def sub(rng: np.random.Generator) -> tuple[str, str]:
    a, b = sorted((int(x) for x in rng.integers(0, 100, size=2)), reverse=True)
    return f"{a}-{b}", str(a - b)


def caesar(rng: np.random.Generator) -> tuple[str, str]:
    s = _word(rng, LOWER, 3, 7)
    return s, "".join(LOWER[(LOWER.index(c) + 1) % 26] for c in s)


def rev_letters(rng: np.random.Generator) -> tuple[str, str]:
    s = _word(rng, LOWER, 3, 7)
    return s, s[::-1]


# A fixed substitution cipher on A-Z (part of the task definition, not of the seed).
_SUBST = dict(zip(UPPER, "QWERTYUIOPASDFGHJKLZXCVBNM"))


def subst(rng: np.random.Generator) -> tuple[str, str]:
    s = _word(rng, UPPER, 3, 7)
    return s, "".join(_SUBST[c] for c in s)


def dedup(rng: np.random.Generator) -> tuple[str, str]:
    s = _word(rng, UPPER[:8], 3, 8)
    seen: list[str] = []
    for c in s:
        if c not in seen:
            seen.append(c)
    return s, "".join(seen)


def brackets(rng: np.random.Generator) -> tuple[str, str]:
    idx = rng.integers(0, 4, size=int(rng.integers(2, 7)))
    return "".join(BRACKETS_OPEN[i] for i in idx), "".join(BRACKETS_CLOSE[i] for i in idx[::-1])


def majority(rng: np.random.Generator) -> tuple[str, str]:
    """Classification: which mark occurs most often (ties broken by a re-draw)."""
    while True:
        s = _word(rng, MARKS, 8, 14)
        counts = [s.count(m) for m in MARKS]
        top = max(counts)
        if counts.count(top) == 1:
            return s, MARKS[counts.index(top)]


def greek_next(rng: np.random.Generator) -> tuple[str, str]:
    s = _word(rng, GREEK, 3, 6)
    return s, "".join(GREEK[(GREEK.index(c) + 2) % len(GREEK)] for c in s)


def greek_first_last(rng: np.random.Generator) -> tuple[str, str]:
    s = _word(rng, GREEK, 3, 7)
    return s, s[0] + s[-1]


# --- tasks added with format version 2 (the default world's redesign, issue 11) ---

def dshift(rng: np.random.Generator) -> tuple[str, str]:
    s = _word(rng, DIGITS, 3, 7)
    return s, "".join(DIGITS[(DIGITS.index(c) + 3) % 10] for c in s)


def rot_digits(rng: np.random.Generator) -> tuple[str, str]:
    s = _word(rng, DIGITS, 4, 8)
    return s, s[2:] + s[:2]


def greek_rev(rng: np.random.Generator) -> tuple[str, str]:
    s = _word(rng, GREEK, 3, 7)
    return s, s[::-1]


def long_brackets(rng: np.random.Generator) -> tuple[str, str]:
    idx = rng.integers(0, 4, size=int(rng.integers(4, 9)))
    return "".join(BRACKETS_OPEN[i] for i in idx), "".join(BRACKETS_CLOSE[i] for i in idx[::-1])


def mark_swap(rng: np.random.Generator) -> tuple[str, str]:
    s = _word(rng, MARKS, 4, 9)
    return s, "".join(s[i + 1] + s[i] for i in range(0, len(s) - 1, 2)) + (s[-1] if len(s) % 2 else "")


_ALL = [
    TaskSpec("rev_digits", "digits", rev_digits, "reverse a string of digits"),
    TaskSpec("sort_digits", "digits", sort_digits, "sort digits ascending"),
    TaskSpec("add", "arith", add, "add two numbers below 100"),
    TaskSpec("sub", "arith", sub, "subtract the smaller of two numbers below 100"),
    TaskSpec("caesar", "lower", caesar, "shift each lowercase letter by one (z->a)"),
    TaskSpec("rev_letters", "lower", rev_letters, "reverse a lowercase word"),
    TaskSpec("subst", "upper", subst, "fixed substitution cipher on A-Z"),
    TaskSpec("dedup", "upper", dedup, "drop repeated letters (A-H), keep first occurrences"),
    TaskSpec("brackets", "brackets", brackets, "closing brackets for an opening sequence"),
    TaskSpec("majority", "marks", majority, "which of ! ? * # @ % occurs most often (classification)"),
    TaskSpec("greek_shift", "greek", greek_next, "shift each Greek letter by two"),
    TaskSpec("greek_ends", "greek", greek_first_last, "first and last Greek letter"),
    TaskSpec("dshift", "digits", dshift, "add 3 to each digit, mod 10"),
    TaskSpec("rot_digits", "digits", rot_digits, "rotate 4-8 digits left by two"),
    TaskSpec("greek_rev", "greek", greek_rev, "reverse a Greek word"),
    TaskSpec("long_brackets", "brackets", long_brackets, "closing brackets for 4-8 openings"),
    TaskSpec("mark_swap", "marks", mark_swap, "swap adjacent pairs of marks ! ? * # @ %"),
]

TASKS: dict[str, TaskSpec] = {t.name: t for t in _ALL}

# Domains that share symbols with each other (besides the task marker and "=").
RELATED_DOMAINS = {frozenset({"digits", "arith"})}


def related(a: str, b: str) -> bool:
    """Two tasks are related when they share a domain or their domains share symbols."""
    da, db = TASKS[a].domain, TASKS[b].domain
    return da == db or frozenset({da, db}) in RELATED_DOMAINS


def related_pairs(names: list[str]) -> list[tuple[str, str]]:
    return [(a, b) for i, a in enumerate(names) for b in names[i + 1 :] if related(a, b)]


def alphabet() -> list[str]:
    """Every character any task can produce (the tokenizer's character vocabulary)."""
    chars = set(DIGITS + LOWER + UPPER + BRACKETS_OPEN + BRACKETS_CLOSE + MARKS + GREEK + "+-" + SEPARATOR)
    return sorted(chars)


def generate_examples(spec: TaskSpec, n: int, rng: np.random.Generator) -> list[tuple[str, str]]:
    """``n`` (prompt, answer) pairs of task ``spec``."""
    out = []
    for _ in range(n):
        text, answer = spec.generate(rng)
        out.append((spec.prompt(text), answer))
    return out
