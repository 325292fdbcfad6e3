"""What the report's two checks rest on, the PCA count at its ceiling, and where a search's best
came from: report_md's readings on hand-made rule rows, counted by hand."""

from __future__ import annotations

from evomerge.pipelines.scale import report_md, report_verdicts


def _row(method, target, peak, k_first=1, k_last=10, error=0.0, rule="online", lo=None, hi=None):
    return {"rule": rule, "method": method, "target": target, "peak_k": float(peak),
            "peak_min": lo if lo is not None else int(peak), "peak_max": hi if hi is not None else int(peak),
            "k_first": k_first, "k_last": k_last, "error": error}


def test_online_basis_counts_where_the_peaks_lie():
    rows = [
        _row("ta", "all", 1, error=1.0),            # first k: stopping at 2 is within +-1
        _row("ta+rht", "all", 1, error=1.0),
        _row("emr", "all", 10, error=0.0),          # last k: not firing is within +-1
        _row("ties", "all", 4, error=1.0),          # inside, met
        _row("ties", "union", 5, error=-3.0),       # inside, missed
        _row("dare", "all", 1.5, lo=1, hi=2, error=0.5),  # seeds differ: inside
    ]
    text = report_verdicts.online_basis(rows)
    assert "2 of the 6 rows have every seed's peak at the curve's first k" in text
    assert "1 at its last k" in text
    assert "3 a peak inside the curve, the rows that test the rule: within +-1 on 2 of them" in text
    assert "1 row is an RHT variant (`+rht`) of methods judged without RHT too" in text and "without them: 4 of 5" in text
    assert report_verdicts.online_basis([]) == ""
    # a search curve starts at k = 2: a peak there is at its first k
    assert "1 of the 1 rows have every seed's peak" in report_verdicts.online_basis([_row("genome", "all", 2, k_first=2)])


def test_law_basis_separates_rising_fits_from_late_peaks():
    law = "law_k<=4"
    rows = [_row("task_arithmetic", "all", 1, rule=law, error=0.0),
            _row("task_arithmetic", "all/ce", 1, rule=law, error=0.0),
            _row("ties", "all", 4, rule=law, error=4.0),
            _row("ties", "all/ce", 6, rule=law, error=1.0)]
    fits = [{"method": "task_arithmetic", "target": "all", "points": "k<=4", "A": -1.5},
            {"method": "task_arithmetic", "target": "all/ce", "points": "k<=4", "A": 0.0},
            {"method": "ties", "target": "all", "points": "k<=4", "A": 0.05},
            {"method": "ties", "target": "all/ce", "points": "k<=4", "A": 0.2},
            {"method": "ties", "target": "all", "points": "all k", "A": -3.0}]  # another fit: not read
    text = report_verdicts.law_basis(rows, fits, 4)
    assert "2 of the 4 are fits whose loss does not fall on k <= 4 (A <= 0)" in text
    assert "(within +-1 on 2)" in text
    assert "2 have their measured peak at or beyond k = 4" in text and "within +-1 on 1." in text


def test_pca_at_ceiling_is_n_minus_one():
    assert report_verdicts.pca_at_ceiling({"n_experts": 10, "pca_components_95": 9})
    assert not report_verdicts.pca_at_ceiling({"n_experts": 10, "pca_components_95": 6})
    assert not report_verdicts.pca_at_ceiling({"n_experts": 10, "pca_components_95": None})


def test_started_from_counts_the_seeds_whose_best_is_a_starting_point():
    s = {"searches": [
        {"method": "genome", "k": 4, "seed": 0, "best_generation": 5, "best_op": "mutate_coeff"},
        {"method": "genome", "k": 4, "seed": 1, "best_generation": 0, "best_op": "init_sum"},
        {"method": "genome", "k": 4, "seed": 2, "best_generation": 0, "best_op": "init_sum"},
        {"method": "genome", "k": 5, "seed": 0, "best_generation": 3, "best_op": "crossover"},
        {"method": "swarm", "k": 4, "seed": 0, "best_generation": 0, "best_op": "ties"},
    ]}
    text = report_verdicts.started_from(s, "genome", 4)
    assert text.startswith("; 2 of 3 seeds' best is a starting point (init_sum: a scaled sum")
    assert report_verdicts.started_from(s, "genome", 5) == "; every seed's best is a step of the search (1 of 1)"
    assert report_verdicts.started_from(s, "swarm", 4) == "; 1 of 1 seeds' best is a starting point (ties), not a step of the search"
    assert report_verdicts.started_from(s, "ties", 4) == ""  # a registry merge: nothing to say


def test_theorem1_section_without_a_delta_says_why():
    """A plan whose relative Delta had no positive first drop (``delta`` None, n_max 1)."""
    stop = {"sigma2": 0.005, "rho": -0.01, "delta": None, "delta_mode": "relative", "delta_value": 0.1, "n_max": 1,
            "curve": [{"k": 1, "merged_variance": 1.0, "drop": None, "worth_adding": True},
                      {"k": 2, "merged_variance": 2.5, "drop": -1.5, "worth_adding": False}]}
    text = "\n".join(report_md._theorem1_section(stop, {}))
    assert "no relative Delta (the first drop of the merged variance, which it scales, is not positive" in text
    assert "keeps **1** experts" in text
    adaptive = "\n".join(report_md._theorem1_section({**stop, "delta_mode": "adaptive"}, {}))
    assert "no adaptive Delta (the mean drop of the merged variance" in adaptive
    assert "| 1 | 1 | - | yes |" in text and "| 2 | 2.5 | -1.5 | no |" in text
    with_delta = "\n".join(report_md._theorem1_section({**stop, "delta": 0.0001, "n_max": 4}, {}))
    assert "Delta = 0.0001 (relative, fraction 0.1 of the first drop); the rule keeps **4**" in with_delta


def test_started_from_without_the_operation_recorded():
    """A run from before `best_op` was recorded: the count, no "(None)"."""
    s = {"searches": [{"method": "genome", "k": 4, "seed": 0, "best_generation": 0, "best_op": None}]}
    assert report_verdicts.started_from(s, "genome", 4) == "; 1 of 1 seeds' best is a starting point, not a step of the search"


def test_rules_section_marks_a_pca_count_at_its_ceiling_and_not_below():
    """The rendered rule table: `(ceiling)` on the pca95 rows and the sentence saying why, for 9
    of 10 experts; neither for 6 of 10."""
    from types import SimpleNamespace

    sc = SimpleNamespace(law_first_k=4, online_tol=0.02, law_noise_z=0.0)
    rows = [{**_row("ties", "all", 4, error=5.0, rule="pca95"), "fired_k": 9, "fired": True, "cut_at": None},
            {**_row("ties", "all", 4, error=1.0), "fired_k": 5.0, "fired": True, "keeps_k": 4, "cut_at": None}]

    def section(pca):
        for r in rows:
            if r["rule"] == "pca95":
                r["fired_k"] = pca
        s = {"delta_mode": "relative", "pca_components_95": pca, "n_experts": 10, "rules_detail": rows,
             "rules": rows, "scaling_fits": []}
        return "\n".join(report_md._rules_section(s, sc))

    at = section(9)
    assert "| pca95 | ties | all | 9 (ceiling) |" in at and "**at its ceiling**: 10 centred experts span at most 9" in at
    below = section(6)
    assert "| pca95 | ties | all | 6 |" in below and "ceiling" not in below
