"""Task generators of the built-in zoo: answers checked by independent computations."""

from __future__ import annotations

from collections import Counter

import numpy as np
import pytest

from evomerge.zoo import tasks as T
from evomerge.zoo.build import make_splits


def _pairs(name: str, n: int = 300, seed: int = 1):
    spec = T.TASKS[name]
    rng = np.random.default_rng(seed)
    out = []
    for prompt, answer in T.generate_examples(spec, n, rng):
        assert prompt.startswith(f"<{name}>") and prompt.endswith("=")
        out.append((prompt[len(name) + 2 : -1], answer))
    return out


def _balanced(s: str) -> bool:
    stack = []
    pairs = dict(zip(")]}>", "([{<"))
    for c in s:
        if c in "([{<":
            stack.append(c)
        elif not stack or stack.pop() != pairs[c]:
            return False
    return not stack


CHECKS = {
    "rev_digits": lambda x, a: a == "".join(reversed(x)) and x.isdigit(),
    "sort_digits": lambda x, a: a == "".join(sorted(x, key=int)) and x.isdigit(),
    "add": lambda x, a: int(a) == sum(int(v) for v in x.split("+")),
    "sub": lambda x, a: int(a) == int(x.split("-")[0]) - int(x.split("-")[1]) and int(a) >= 0,
    "caesar": lambda x, a: a == x.translate(str.maketrans("abcdefghijklmnopqrstuvwxyz", "bcdefghijklmnopqrstuvwxyza")),
    "rev_letters": lambda x, a: a == x[::-1] and x.islower(),
    "dedup": lambda x, a: a == "".join(dict.fromkeys(x)),
    "brackets": lambda x, a: _balanced(x + a) and len(a) == len(x),
    "majority": lambda x, a: Counter(x).most_common(2)[0][0] == a and Counter(x).most_common(2)[0][1] > Counter(x).most_common(2)[1][1],
    "greek_shift": lambda x, a: [("αβγδεζηθικλμ".index(c) + 2) % 12 for c in x] == ["αβγδεζηθικλμ".index(c) for c in a],
    "greek_ends": lambda x, a: a == x[0] + x[-1],
    "dshift": lambda x, a: x.isdigit() and [(int(c) + 3) % 10 for c in x] == [int(c) for c in a],
    "rot_digits": lambda x, a: x.isdigit() and len(x) >= 4 and a == x[2:] + x[:2],
    "greek_rev": lambda x, a: a == "".join(reversed(x)) and set(x) <= set("αβγδεζηθικλμ"),
    "long_brackets": lambda x, a: _balanced(x + a) and len(a) == len(x) and 4 <= len(x) <= 8,
    "mark_swap": lambda x, a: sorted(x) == sorted(a) and all(a[i] == x[i ^ 1] for i in range(len(x) - len(x) % 2))
    and (len(x) % 2 == 0 or a[-1] == x[-1]),
}


@pytest.mark.parametrize("name", sorted(CHECKS))
def test_generator_answers(name):
    for x, a in _pairs(name):
        assert CHECKS[name](x, a), (name, x, a)


def test_subst_is_a_fixed_permutation():
    mapping: dict[str, str] = {}
    for x, a in _pairs("subst", 500):
        assert len(x) == len(a)
        for c, d in zip(x, a):
            assert mapping.setdefault(c, d) == d
    assert len(mapping) == 26 and len(set(mapping.values())) == 26
    assert any(c != d for c, d in mapping.items())


def test_every_task_is_checked():
    assert set(T.TASKS) == set(CHECKS) | {"subst"}


def test_generators_are_seeded():
    for name in T.TASKS:
        assert _pairs(name, 20, seed=5) == _pairs(name, 20, seed=5)
        assert _pairs(name, 20, seed=5) != _pairs(name, 20, seed=6)


def test_unrelated_domains_use_disjoint_symbols():
    symbols = {}
    for name in T.TASKS:
        chars = set()
        for x, a in _pairs(name, 200):
            chars |= set(x) | set(a)
        symbols[name] = chars
    names = sorted(T.TASKS)
    for i, a in enumerate(names):
        for b in names[i + 1 :]:
            if not T.related(a, b):
                assert not symbols[a] & symbols[b], (a, b, symbols[a] & symbols[b])
    # related pairs share symbols
    assert symbols["rev_digits"] & symbols["add"]
    assert T.related("rev_digits", "sort_digits") and T.related("add", "rev_digits")
    assert not T.related("caesar", "subst")


def test_splits_are_disjoint_and_sized():
    s = make_splits(T.TASKS["brackets"], 500, 100, seed=0, index=3)
    prompts = {k: {p for p, _ in v} for k, v in s.items()}
    assert len(s["validation"]) == len(s["test"]) == 100 and len(s["train"]) == 500
    assert not prompts["train"] & prompts["validation"]
    assert not prompts["train"] & prompts["test"]
    assert not prompts["validation"] & prompts["test"]
    assert s == make_splits(T.TASKS["brackets"], 500, 100, seed=0, index=3)
