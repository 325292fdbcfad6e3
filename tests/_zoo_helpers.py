"""Helpers shared by the zoo tests."""

from __future__ import annotations


def ab_error(experts) -> float:
    """Relative Frobenius error of averaging A and B separately against averaging B @ A, by hand
    (``experts``: one ``{key: LoraModule}`` per expert)."""
    num = den = 0.0
    for key in experts[0]:
        mods = [e[key] for e in experts]
        avg_delta = sum(m.scale * m.B.double() @ m.A.double() for m in mods) / len(mods)
        ab = (sum(m.scale * m.B.double() for m in mods) / len(mods)) @ (sum(m.A.double() for m in mods) / len(mods))
        num += float((ab - avg_delta).pow(2).sum())
        den += float(avg_delta.pow(2).sum())
    return (num / den) ** 0.5
