"""The correlated-pair experiment of the paper's section 4.3: which expert pairs to merge alone."""

from __future__ import annotations

from typing import Any


def correlated_pairs(names: list[str], domains: dict[str, str] | None,
                     related_pairs: list[tuple[str, str]] | None) -> dict[str, Any]:
    """The section 4.3 experiment: pairs of related experts (the zoo's related pairs) and, for
    each, one pair of unrelated ones. Empty with a note when the zoo records no domains."""
    if not domains or related_pairs is None:
        return {"related": [], "unrelated": [], "note": "the pool records no domains: no correlated-pair experiment"}
    idx = {n: i for i, n in enumerate(names)}
    rel_names = {frozenset(p) for p in related_pairs}
    related, unrelated, used = [], [], set()
    for a, b in related_pairs:
        if a not in idx or b not in idx:
            continue
        related.append([idx[a], idx[b]])
        # the first member with the first expert of a domain unrelated to both (not yet paired
        # with it, in either order): one member is shared, so the comparison changes only the
        # relatedness, and no unrelated pair counts twice in the mean
        other = next((n for n in names if n not in (a, b) and frozenset((a, n)) not in rel_names
                      and domains.get(n) not in (domains.get(a), domains.get(b))
                      and frozenset((a, n)) not in used), None)
        if other is not None:
            unrelated.append([idx[a], idx[other]])
            used.add(frozenset((a, other)))
    return {"related": related, "unrelated": unrelated}
