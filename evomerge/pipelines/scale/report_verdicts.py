"""The report's judgement of its own numbers: the issue's two checks on the rule table
(:func:`rule_verdicts`), what each rests on (where the peaks lie, the RHT twins, fits that
cannot see a turn), a PCA count at its ceiling, and how much of a search's result its starting
points made. Pure functions of the summary's records; :mod:`report_md` words them."""

from __future__ import annotations

from typing import Any


def judged(rules: list[dict], rule: str, methods: tuple[str, ...] | None = None) -> list[dict]:
    """The rows of ``rule`` a check judges (those of ``methods`` only, when given): rows without an
    error are not judged (no peak measured, a search curve the stop cut, or seeds' peaks more than
    2 apart: ``peaks_split``)."""
    return [r for r in rules if r["rule"] == rule and r["error"] is not None and (methods is None or r["method"] in methods)]


#: The methods the law check (on the first k) is about.
LAW_METHODS = ("task_arithmetic", "ties")


def rule_verdicts(rules: list[dict], law_rule: str) -> dict[str, Any]:
    """The issue's checks on the rule table: the online rule within +-1 of the peak for >= 80% of
    (method, target) pairs and never more than 2 past it; the law on the first k within +-1 for
    task arithmetic and TIES."""
    online = judged(rules, "online")
    within = [r for r in online if abs(r["error"]) <= 1]
    past = max((r["error"] for r in online), default=None)
    law = judged(rules, law_rule, LAW_METHODS)
    return {
        "online_pairs": len(online), "online_within_1": len(within),
        "online_share_within_1": len(within) / len(online) if online else None,
        "online_max_past_peak": past,
        "online_ok": bool(online) and len(within) >= 0.8 * len(online) and past is not None and past <= 2,
        "law_pairs": len(law), "law_within_1": sum(abs(r["error"]) <= 1 for r in law),
        "law_ok": bool(law) and all(abs(r["error"]) <= 1 for r in law),
    }


def pca_at_ceiling(s) -> bool:
    """The report's PCA count is at the n - 1 ceiling of its n experts (:func:`evomerge.theory.geometry.pca_at_ceiling`)."""
    from evomerge.theory.geometry import pca_at_ceiling as at_ceiling

    n, c = s.get("n_experts"), s.get("pca_components_95")
    return n is not None and c is not None and at_ceiling(int(c), int(n))


def peak_place(r: dict) -> str:
    """Where a row's measured peak lies on its curve: every seed's at the ``first`` measured k, at
    the ``last``, or ``inside`` (rows of runs made before ``k_first`` was recorded: ``inside``)."""
    if r.get("k_first") is not None and r["peak_max"] == r["k_first"]:
        return "first"
    if r.get("k_last") is not None and r["peak_min"] == r["k_last"]:
        return "last"
    return "inside"


def online_basis(rows: list[dict]) -> str:
    """What the online check rests on: a peak at a curve's first k is met by stopping at the
    second, one at its last k by not firing; only the rows with a peak inside test the rule. The
    RHT variants repeat their methods' rows when RHT moves no curve."""
    if not rows:
        return ""
    place = [peak_place(r) for r in rows]
    inside = [r for r, p in zip(rows, place) if p == "inside"]
    plain = [r for r in rows if not str(r["method"]).endswith("+rht")]
    text = (f" What it rests on: {place.count('first')} of the {len(rows)} rows have every seed's peak at the "
            f"curve's first k (stopping at the next k is within +-1), {place.count('last')} at its last k (not firing "
            f"is), and {len(inside)} a peak inside the curve, the rows that test the rule: within +-1 on "
            f"{sum(abs(r['error']) <= 1 for r in inside)} of them.")
    if len(plain) < len(rows):
        n = len(rows) - len(plain)
        text += (f" {n} {'rows are RHT variants' if n > 1 else 'row is an RHT variant'} (`+rht`) of methods judged "
                 "without RHT too; "
                 f"without them: {sum(abs(r['error']) <= 1 for r in plain)} of {len(plain)}.")
    return text


def law_basis(rows: list[dict], fits: list[dict], m: int) -> str:
    """What the law check rests on: a fit whose loss does not fall on k <= m (A <= 0) predicts
    the first k whatever the curve does later; the rows whose peak lies at or beyond m (the
    fit's last point) are the ones that ask the law to see a turn it was not shown."""
    if not rows:
        return ""
    a = {(f["method"], f["target"]): f["A"] for f in fits if f.get("points") == f"k<={m}"}
    flat = [r for r in rows if a.get((r["method"], r["target"])) is not None and a[(r["method"], r["target"])] <= 0]
    late = [r for r in rows if r["peak_k"] is not None and r["peak_k"] >= m]
    return (f" What it rests on: {len(flat)} of the {len(rows)} are fits whose loss does not fall on k <= {m} (A <= 0), "
            f"which predict the first k whatever the curve does later (within +-1 on "
            f"{sum(abs(r['error']) <= 1 for r in flat)}); {len(late)} have their measured peak at or beyond k = {m}, "
            f"the fit's last point, so the law must predict a turn it was not shown: within +-1 on "
            f"{sum(abs(r['error']) <= 1 for r in late)}.")


def started_from(s, method: str, k: int) -> str:
    """For a search: how many seeds' best individual at ``k`` is one of its starting points (a
    scaled sum of ``init_sums`` is task arithmetic with its scale chosen on validation), not a
    step of the search; nothing for a registry merge."""
    rows = [r for r in s.get("searches") or [] if r["method"] == method and r["k"] == k
            and r.get("best_generation") is not None]
    if not rows:
        return ""
    initial = [r for r in rows if r["best_generation"] == 0]
    ops = sorted({str(r["best_op"]) for r in initial if r.get("best_op") is not None})
    if not initial:
        return f"; every seed's best is a step of the search ({len(rows)} of {len(rows)})"
    what = ", ".join(ops) + (": a scaled sum of the experts, i.e. task arithmetic with its scale chosen on "
                             "validation" if ops == ["init_sum"] else "")
    return (f"; {len(initial)} of {len(rows)} seeds' best is a starting point" + (f" ({what})" if ops else "")
            + ", not a step of the search")
