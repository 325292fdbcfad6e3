"""``report.md`` of a scale run, from the summary :func:`evomerge.pipelines.scale.report.write_report` built."""

from __future__ import annotations

import math
from typing import Any

from evomerge.pipelines.scale.report_verdicts import (
    LAW_METHODS,
    judged,
    law_basis,
    online_basis,
    pca_at_ceiling,
    rule_verdicts,
    started_from,
)
from evomerge.theory.scaling_law import B_BOUNDS


def _fmt(x: Any, nd: int = 3) -> str:
    if x is None or (isinstance(x, float) and not math.isfinite(x)):
        return "n/a"
    return f"{x:.{nd}f}" if isinstance(x, float) else str(x)


def _k(x: Any) -> str:
    """A k, or a mean of k over seeds (to 2 decimals: 3.67, not 3.66667)."""
    if x is None or (isinstance(x, float) and not math.isfinite(x)):
        return "n/a"
    return f"{x:.2f}".rstrip("0").rstrip(".") if isinstance(x, float) else str(x)


def markdown(plan, cfg, s, pk_all, pk_union, figures, run_dir) -> str:
    stop = plan["stop"]
    sc = cfg.scale
    L: list[str] = ["# Scale report", ""]
    L += [f"Run `{run_dir}`: {s['n_experts']} {plan.get('kind', '')} experts ({', '.join(plan['experts'])}); "
          f"{s['cells_done']} of {s['cells_planned']} planned cells done"
          + (f" ({len(s['search_stop']['skipped'])} search cells skipped by the stop rule)"
             if (s.get("search_stop") or {}).get("skipped") else "")
          + f"; wall time {s['wall_seconds'] / 60:.1f} min"
          + (f", CPU time {s['cpu_seconds'] / 60:.1f} min." if s.get("cpu_seconds") else "."), ""]
    L += _missing_header(s, run_dir)
    L += _overrides_header(s, run_dir)
    orders = plan["orders"]
    first = next(iter(orders.values())) if orders else []
    L += [f"Methods: {', '.join(sc.methods + list(sc.search))}; RHT variants: {'yes' if sc.with_rht else 'no'}; "
          f"seeds: {sc.seeds}; expert order `{sc.order}`"
          + (f" ({' > '.join(first)})" if sc.order != "random" else " (a new order per seed)")
          + f"; metric `{cfg.evaluation.metric}`. Registry merges run to k = {stop['k_end']}"
          + (f"; searches on the grid k = {stop['search_k']}" + _searches_ran(s.get("search_stop"), stop, s) if sc.search
             else "; no searches") + ".", ""]
    if s.get("gains"):
        L += ["Own-task validation gain of each expert alone over the base: "
              + ", ".join(f"{n} {_fmt(g)}" for n, g in s["gains"].items()) + ".", ""]
    L += _glance_section(s, sc, pk_all)
    L += _noise_section(s)
    L += _rules_section(s, sc)
    L += _theorem1_section(stop, s)
    L += _peaks_section(s, pk_all, pk_union)
    L += _fits_section(s)
    L += _pairs_section(s)
    L += _search_section(s)
    L += _figures_section(figures, s.get("analysis_missing"), s.get("principal_angle_random_deg"))
    L += ["## Tables", "",
          "`tables/scores.parquet` (one row per k, method, rht, seed, task, split; metric and cross-entropy), "
          "`tables/fitness.parquet` (mean per target), `tables/peaks.parquet`, `tables/rules.parquet` (the rule "
          "table), `tables/scaling_fits.parquet`, `tables/theory.parquet`, `tables/noise.parquet` (each curve point's "
          "95% evaluation-noise interval, p_best and within_noise on validation); `report.json` holds the rule table as "
          "`rules` ({rule, method, target, fired_k, peak_k, error}).", ""]
    return "\n".join(L)


#: How many missing cells the header lists by name (report.json's ``cells_missing`` has them all).
MISSING_LISTED = 12


def _missing_header(s, run_dir) -> list[str]:
    """The header's lines on what the run lacks: cells of the plan without their file (and the
    curves left out for them), the pool analysis."""
    L = []
    missing = s.get("cells_missing") or []
    if missing:
        names = ", ".join(f"`{c}`" for c in missing[:MISSING_LISTED]) + (
            f" and {len(missing) - MISSING_LISTED} more (report.json `cells_missing`)" if len(missing) > MISSING_LISTED else "")
        left = [c["method"] for c in s.get("curves_left_out") or []]
        L += [f"**Incomplete run: {len(missing)} planned cell{'s' if len(missing) > 1 else ''} "
              f"{'have' if len(missing) > 1 else 'has'} no file in `cells/`** (not skipped by the stop rule: the run "
              f"was interrupted, or the file{'s were' if len(missing) > 1 else ' was'} lost): {names}. "
              + (f"Left out of the peaks, the rule table and the fits: {', '.join(left)} (a curve with a missing cell "
                 "lacks a k on some seed or all, so its best measured k is not its peak). " if left else "")
              + f"`evomerge scale --out {run_dir} --resume` computes the missing cells.", ""]
    if s.get("analysis_missing"):
        L += [f"**Pool analysis missing** ({s['analysis_missing']}): no `pca95` rule and no analysis figures; "
              f"`evomerge scale --out {run_dir} --resume` runs the pool analysis again.", ""]
    return L


def _overrides_header(s, run_dir) -> list[str]:
    """The header's line on the ``evomerge report --set`` values this report was judged with."""
    over = s.get("report_overrides") or {}
    if not over:
        return []
    run = s.get("run_settings") or {}
    return [f"**Judged with `evomerge report --set`**, not the run's own settings ({run_dir}/config.yaml): "
            + "; ".join(f"{k} = {v}" + (f" (the run's: {run[k]})" if k in run else "") for k, v in over.items())
            + ". report.json records them as `report_overrides`.", ""]


def _fired_k(r: dict, not_fired: str) -> str:
    """A rule record's k as the tables print it: ``not_fired`` when the rule never fired, and the
    k the online rule keeps where it differs; why a rule has no k (``unavailable``); Theorem 1's
    seeds' mean where their orders fire at different k."""
    if r.get("unavailable"):
        return f"{'analysis missing' if r['rule'] == 'pca95' else 'unavailable'} ({r['unavailable']})"
    keeps = r.get("keeps_k")
    k = r["fired_k"]
    text = _k(k)
    if k is None and r.get("fired_k_seeds"):
        text = f"{_k(r.get('fired_k_mean'))} (seeds: {', '.join(map(str, r['fired_k_seeds']))})"
    return (text + ("" if r["fired"] else not_fired)
            + (f" (keeps {keeps})" if keeps is not None and keeps != k else ""))


def _searches_ran(search_stop: dict | None, stop: dict, s) -> str:
    """``, cut by the stop rule: genome ran k = 2-5, ...`` when the enforced rule cut a search's grid
    (Theorem 1 cuts it when the run is planned: the grid is already the cut one)."""
    if stop.get("enabled") and stop.get("rule") == "theorem1":
        cut = sorted({r["cut_at"] for r in s.get("rules_detail") or [] if r.get("cut_at") is not None})
        return f", cut there by the stop rule (Theorem 1, n_max = {stop['n_max']})" if cut else ""
    if not search_stop or not search_stop.get("enforced") or not search_stop.get("skipped"):
        return ""
    ran = [f"{m} ran k = {min(d['ks_run'])}-{max(d['ks_run'])}" for m, d in (search_stop.get("methods") or {}).items()
           if d.get("ks_run")]
    return ", cut by the stop rule: " + ", ".join(ran) if ran else ""


def _glance_section(s, sc, pk_all) -> list[str]:
    """One row per method without RHT on all tasks: where its validation curve peaked, the test
    score there, and where the online rule, the law on the first k and Theorem 1 stop."""
    if pk_all is None or pk_all.empty:
        return []
    law_rule = f"law_k<={sc.law_first_k}"
    rules = {(r["rule"], r["method"]): r for r in s["rules_detail"] if r["target"] == "all"}
    base = s["base_fitness_all"]
    noise = _noise_points(s)
    L = ["## At a glance: all tasks, without RHT", "",
         f"Base model: validation {_fmt(base['validation'])}, test {_fmt(base['test'])}. Best k = the k with the best "
         "mean validation fitness over seeds; test at the same k (never used to choose). The rule columns give the k "
         "where each rule stops (the full table below)."
         + (" [95% interval] = evaluation noise (the examples drawn, not the seeds; next section); p(best) = the share "
            "of bootstrap replicates in which the best k is best; within noise = the k whose paired difference from "
            "the best k has a 95% interval containing 0 (these examples cannot tell them apart)." if noise else ""), "",
         f"| method | best k | validation there{' [95% interval] | p(best) | k within noise' if noise else ''} | "
         f"test there | largest k run | online rule | {law_rule} | theorem1 |",
         "|---|---|---|---|---|---|---|---|" + ("---|---|" if noise else "")]

    def fired(rule: str, method: str) -> str:
        r = rules.get((rule, method))
        if r is None or (r["fired_k"] is None and not r.get("fired_k_seeds")):
            return "-"
        return _fired_k(r, " (not fired)")

    for r in pk_all[~pk_all["rht"]].itertuples():
        cut = next((x.get("cut_at") for x in s["rules_detail"] if x["method"] == r.label and x.get("cut_at")), None)
        run_to = f"{r.k_max_run}" + (" (cut by the stop)" if cut is not None else "")
        val = f"{r.val_mean:.3f}"
        if noise:
            p = noise.get((r.method, False, "all", "validation", r.peak_k)) or {}
            near = [k for (m, rht, t, sp, k), q in sorted(noise.items())
                    if (m, rht, t, sp) == (r.method, False, "all", "validation") and q.get("within_noise")]
            val += (f" [{_fmt(p.get('low'))}, {_fmt(p.get('high'))}] | {_fmt(p.get('p_best'), 2)} | "
                    f"{_ks(near) if near else 'n/a'}")
        L.append(f"| {r.label} | {r.peak_k} | {val} | {_fmt(r.test_mean)} | {run_to} | "
                 f"{fired('online', r.label)} | {fired(law_rule, r.label)} | {fired('theorem1', r.label)} |")
    return L + [""]


def _noise_points(s) -> dict[tuple, dict]:
    """(method, rht, target, split, k) -> the noise record (empty when the run has no intervals)."""
    return {(r["method"], bool(r["rht"]), r["target"], r["split"], int(r["k"])): r for r in s.get("noise") or []}


def _ks(ks: list[int]) -> str:
    """``[2, 3, 4, 6]`` -> ``2-4, 6``."""
    out, run = [], [ks[0]]
    for k in ks[1:]:
        if k == run[-1] + 1:
            run.append(k)
        else:
            out.append(run)
            run = [k]
    out.append(run)
    return ", ".join(f"{r[0]}-{r[-1]}" if len(r) > 2 else ", ".join(map(str, r)) for r in out)


def _noise_section(s) -> list[str]:
    """What the intervals cover, and each method's best against the best registry merge's best
    on test, paired, at the k validation chose."""
    settings = s.get("noise_settings") or {}
    L = ["## Evaluation noise", ""]
    if not settings.get("available"):
        return L + ["Not available: this run directory has no per-example scores (`examples/`, kept by runs made "
                    "since they were added), so no number of this report carries its evaluation noise. Everything "
                    "else is unaffected.", ""]
    rows = settings.get("rows") or {}

    def n(split: str) -> str:
        per = sorted(set((rows.get(split) or {}).values()))
        total = sum((rows.get(split) or {}).values())
        return (f"{per[0]} per task, {total} in all" if len(per) == 1 else f"{total} in all") if per else "none"

    L += [f"Every score of this report is a mean over fixed evaluation examples (validation: {n('validation')}; "
          f"test: {n('test')}). The 95% intervals are percentile intervals of a paired, task-stratified bootstrap over "
          f"these examples ({settings['replicates']} replicates, seed {settings['seed']}): each task's examples are "
          "redrawn with replacement, the same draws for every cell, and each replicate's value is computed as the "
          "tables compute it (mean over the target's tasks, then over seeds), so differences between k and between "
          "methods are paired. They cover the choice of evaluation examples only: not the seeds (the ± sd columns "
          "are the seeds' spread), and not a new choice of k (the k validation chose stays fixed). Every curve point "
          "is in `tables/noise.parquet` and report.json's `noise`.", ""]
    from evomerge.pipelines.scale.noise import lacking_text

    lacking = lacking_text(s.get("noise") or [])  # a run resumed from a directory made before examples/
    L += [lacking, ""] if lacking else []
    comps = s.get("noise_comparisons") or []
    ref = settings.get("reference")
    if comps and ref:
        rk = comps[0]["reference_k"]
        L += [f"Test, each method at the k validation chose, minus the best registry merge that gives one model "
              f"({ref}, best k = {rk} on validation; a per-task method such as EMR keeps one model per task and is "
              "compared, not the reference); the difference and its paired 95% interval. Test, because no choice saw it: "
              "a search picks its best individual on the validation examples, so its validation value is selected on "
              "them.", "",
              "| method | k | difference on test [95% interval] | what the data show |", "|---|---|---|---|"]
        for c in comps:
            if c["separated"]:
                reading = f"{c['method']} {'above' if c['difference'] > 0 else 'below'} {ref} beyond the noise"
            else:
                reading = "the interval contains 0: the data cannot tell them apart"
            reading += started_from(s, c["method"], c["k"])
            L.append(f"| {c['method']} - {ref} | {c['k']} | {c['difference']:+.3f} [{c['low']:+.3f}, {c['high']:+.3f}] "
                     f"| {reading} |")
        L.append("")
    return L


def _law_noise_text(s, sc) -> str:
    """How the law's tolerance knew the evaluation noise (nothing when ``scale.law_noise_z`` is 0)."""
    z = float(getattr(sc, "law_noise_z", 0.0))
    if z <= 0:
        return ""
    law = [r for r in s["rules_detail"] if str(r["rule"]).startswith("law")]
    missing = sum(1 for r in law if r.get("se") is None or not math.isfinite(r["se"]))
    text = (f"; its tolerance is the larger of the online rule's and {z:g} x the standard error of a paired one-step difference, "
            f"the root mean square over the consecutive steps on k <= {sc.law_first_k}, analytic from the validation "
            "per-example scores")
    if law and missing == len(law):
        text += "; **this run has no per-example scores: the law used the tolerance without the noise**"
    elif missing:
        text += f"; {missing} of {len(law)} curves lack per-example scores and use the tolerance without the noise"
    return text


def _rules_section(s, sc) -> list[str]:
    law_rule = f"law_k<={sc.law_first_k}"
    L = ["## How many experts: the stop rules against the measured peaks", "",
         "Measured peak = per seed the k with the best validation value (highest metric, lowest cross-entropy), "
         "then the mean over seeds [range]. Error = fired k - measured peak. Rules: `theorem1` (eq. 18 along the "
         f"run's order with the method's weights, Delta {s['delta_mode']}), `online` (after each k from the second, predict "
         f"the next expert's gain from L(k) = L_inf + A/k^b: b = 1 through two points, fitted from three; stop when the predicted and the measured gain per expert are both < {sc.online_tol:g} x the "
         f"first point's gain over the base, or when the measured gain of the last step is below minus that (the curve turned); \"keeps\" = the best k measured up to there), `{law_rule}` (the law fitted on k <= {sc.law_first_k} only{_law_noise_text(s, sc)}), "
         f"`pca95` (principal components for 95% of the pool's variance: "
         + (f"analysis missing ({s['analysis_missing']})" if s.get("analysis_missing") else _k(s.get('pca_components_95')))
         + (f"; **at its ceiling**: {s['n_experts']} centred experts span at most {s['n_experts'] - 1} directions, "
            "so the count can be no larger and says nothing about this pool's structure; its rows below measure "
            "nothing" if pca_at_ceiling(s) else "") + "). "
         "Targets: `all` / `union` on the metric, `all/ce` on cross-entropy.", "",
         "| rule | method | target | fired k | measured peak k [seeds' range] | error |", "|---|---|---|---|---|---|"]
    for r in sorted(s["rules_detail"], key=lambda r: (r["target"], r["method"], r["rule"])):
        rng = f" [{r['peak_min']}-{r['peak_max']}]" if r["peak_min"] is not None else ""
        fired = _fired_k(r, " (did not fire)")
        if r["rule"] == "pca95" and pca_at_ceiling(s):
            fired += " (ceiling)"
        err = "n/a" if r["error"] is None else f"{r['error']:+.2f}"
        peak = f"{_k(r['peak_k'])}{rng}"
        if r.get("cut_at") is not None:
            peak += f" (curve cut at {r['cut_at']} by the stop)"
            err = "not judged"
        elif r.get("peaks_split"):
            peak += " (the seeds' peaks disagree)"
            err = "not judged"
        L.append(f"| {r['rule']} | {r['method']} | {r['target']} | {fired} | {peak} | {err} |")
    L += _left_out_text(s)
    v = s.get("verdicts") or rule_verdicts(s["rules"], law_rule)
    cut = sorted({r["method"] for r in s["rules_detail"] if r.get("cut_at") is not None})
    if cut:
        L += ["", f"Not judged: {', '.join(cut)}. The enforced stop rule cut these searches' k grid, so their curves "
              "end where the rule fired and a rule compared with their best k cannot miss; `evomerge scale --out RUN "
              "--resume --no-stop` measures them to the end."]
    split = sorted({f"{r['method']} {r['target']}" for r in s["rules_detail"]
                    if r.get("peaks_split") and r.get("cut_at") is None})
    if split:
        L += ["", f"Not judged either: {', '.join(split)}. The seeds' peaks lie more than 2 apart there, so no k is "
              "within +-1 of every seed's peak and their mean is no measured peak (a rule firing at the mean would be "
              "credited for a k no seed's curve has at its top); more seeds or evaluation examples would settle it."]
    if v["online_pairs"]:
        L += ["", f"Online rule: within +-1 of the measured peak for {v['online_within_1']} of {v['online_pairs']} "
              f"judged (method, target) pairs ({v['online_share_within_1']:.0%}; target >= 80%); at most "
              f"{v['online_max_past_peak']:+.2f} past the peak (target <= 2): **{'met' if v['online_ok'] else 'missed'}**."
              + online_basis(judged(s["rules_detail"], "online"))]
    if v["law_pairs"]:
        law = judged(s["rules_detail"], law_rule, LAW_METHODS)
        L += [f"Law on k <= {sc.law_first_k}: within +-1 for {v['law_within_1']} of {v['law_pairs']} task arithmetic / "
              f"TIES (method, target) pairs: **{'met' if v['law_ok'] else 'missed'}**."
              + law_basis(law, s.get("scaling_fits") or [], sc.law_first_k)]
    stop_info = s.get("search_stop")
    if stop_info and stop_info.get("methods"):
        read = {"all": "the validation fitness of each search's best on all the pool's tasks",
                "own": "each search's own validation fitness (its k experts' tasks)"}
        target = stop_info.get("stop_target", "own")
        L += ["", f"Searches (rule enforced: online, on {read.get(target, target)}): "
              + "; ".join(f"{m}: ran k = {d.get('ks_run')}, " + (f"stopped at k = {d['k']}" if d.get("fired") else "did not fire")
                          for m, d in stop_info["methods"].items()) + "."]
    return L + [""]


def _left_out_text(s) -> list[str]:
    """The curves left out of the peaks, the rule table and the fits, and why."""
    left = s.get("curves_left_out") or []
    if not left:
        return []
    return ["", "Left out (cells missing): " + "; ".join(
        f"{c['method']} (no file for {', '.join(f'`{i}`' for i in c['missing'])})" for c in left)
        + ". A curve with a missing cell lacks a k on some seed (or on all), so its seeds' curves do not cover the "
        "same k and its best measured k is not its peak: it is neither peaked nor judged until `evomerge scale "
        "--resume` computes the cells."]


def _theorem1_section(stop, s) -> list[str]:
    L = ["## Theorem 1 (general form, eq. 18)", "",
         f"Pool: mean sigma^2 = {stop['sigma2']:.4g}, mean rho = {stop['rho']:.4f}. Along the first order with uniform "
         + (f"weights: Delta = {stop['delta']:.4g} ({stop['delta_mode']}"
            + (f", fraction {stop['delta_value']:g} of the first drop" if stop["delta_mode"] == "relative" else "") + ")"
            if stop.get("delta") is not None else
            f"weights: no {stop['delta_mode']} Delta (the {'first' if stop['delta_mode'] == 'relative' else 'mean'} "
            "drop of the merged variance, which it scales, is not positive: the rule keeps adding experts while the "
            "variance still falls)")
         + f"; the rule keeps **{stop['n_max']}** experts. The `theorem1` rows above use each method's own weights "
         "(task arithmetic sums, so its variance rises from the second expert and the rule stops at 1).", ""]
    if stop["delta_mode"] == "adaptive":
        L += ["(Adaptive Delta = the mean drop over the pool: with equal variances and correlations it gives "
              "floor(sqrt(N + 1/4) + 1/2) whatever the experts; it measures the pool's size more than its data.)", ""]
    L += ["| k | merged variance | drop from k-1 | worth adding (drop >= Delta) |", "|---|---|---|---|"]
    for r in stop["curve"]:
        drop = f"{r['drop']:.4g}" if r["k"] > 1 else "-"
        L.append(f"| {r['k']} | {r['merged_variance']:.4g} | {drop} | {'yes' if r['worth_adding'] else 'no'} |")
    return L + [""]


def _peaks_section(s, pk_all, pk_union) -> list[str]:
    base_v = s["base_fitness_all"]["validation"]
    L = ["## Where each method peaked (seed means)", "",
         "Peak = the k with the best mean validation fitness over seeds (ties: smallest k); test is reported at that "
         "k, never used to choose.", "",
         f"### Target `all` (every task of the pool; base model: {_fmt(base_v)})", "",
         "| method | peak k | validation (mean ± sd) | test at peak | gain vs base | largest k run |",
         "|---|---|---|---|---|---|"]
    for r in pk_all.itertuples():
        L.append(f"| {r.label} | {r.peak_k} | {r.val_mean:.3f} ± {r.val_std:.3f} | {_fmt(r.test_mean)} | "
                 f"{_fmt(r.val_mean - base_v)} | {r.k_max_run} |")
    L += ["", "### Target `union` (only the tasks of the k merged experts)", "",
          "| method | peak k | validation (mean ± sd) | test at peak | largest k run |", "|---|---|---|---|---|"]
    for r in pk_union.itertuples():
        L.append(f"| {r.label} | {r.peak_k} | {r.val_mean:.3f} ± {r.val_std:.3f} | {_fmt(r.test_mean)} | {r.k_max_run} |")
    return L + _left_out_text(s) + [""]


def _fits_section(s) -> list[str]:
    if not s["scaling_fits"]:
        return []
    lo, hi = B_BOUNDS
    L = ["## Scaling-law fits", "", "`L(k) = L_inf + A / k^b` on the loss (minus the metric, or cross-entropy), every "
         "seed a point; n = points, distinct k, parameters fitted (a deterministic method repeats one value per k: "
         f"only its distinct k inform the fit). b is fitted within [{lo:g}, {hi:g}]. Reading: `falls` (A > 0: the loss "
         "falls with k, toward L_inf), `rises` (A < 0: the loss grows with k, so more experts hurt and L_inf is no "
         "floor), `b at bound` (the best exponent lies outside the range: the curve's shape is not a power law "
         "there), `poor fit` (R^2 < 0.5).", "",
         "| method | target | points | L_inf | A | b | R^2 | n (k, params) | reading |",
         "|---|---|---|---|---|---|---|---|---|"]
    for f in s["scaling_fits"]:
        n_k = f.get("n_k")
        shape = f" ({n_k} k, {f.get('n_params', 3)})" if n_k else ""
        L.append(f"| {f['method']} | {f['target']} | {f['points']} | {f['L_inf']:.4f} | {f['A']:.4f} | {f['b']:.2f} | "
                 f"{f['r2']:.2f} | {f['n_points']}{shape} | {fit_reading(f)} |")
    return L + [""]


def fit_reading(f: dict) -> str:
    """What a fitted law says of its curve, in words (see the section's legend)."""
    lo, hi = B_BOUNDS
    words = ["rises" if f["A"] < 0 else "falls"]
    if f.get("n_params", 3) == 3 and min(abs(f["b"] - lo), abs(f["b"] - hi)) < 1e-6:
        words.append("b at bound")
    if f["r2"] < 0.5:
        words.append("poor fit")
    return ", ".join(words)


def _pairs_section(s) -> list[str]:
    if not s["pairs"]:
        return ["## Correlated pairs", "", "Not run: the pool records no domains (a zoo's `zoo.json` does).", ""]
    L = ["## Correlated pairs (the paper's section 4.3)", "",
         "Two related experts (the zoo's related pairs: same domain or shared symbols) merged alone against two "
         "unrelated ones; validation mean over the pair's two tasks, and the share of the two experts' own gain over "
         "the base that the merge keeps.", "", "| method | pair | kind | validation | gain kept |", "|---|---|---|---|---|"]
    for p in sorted(s["pairs"], key=lambda p: (p["method"], p["kind"], p["pair"])):
        L.append(f"| {p['method']} | {p['pair']} | {p['kind']} | {p['fitness']:.3f} | {_fmt(p['gain_kept'])} |")
    by: dict[tuple[str, str], list[float]] = {}
    for p in s["pairs"]:
        if math.isfinite(p["gain_kept"]):
            by.setdefault((p["method"], p["kind"]), []).append(p["gain_kept"])
    means = [f"{m}: related {sum(v) / len(v):.2f} vs unrelated {sum(by[(m, 'unrelated')]) / len(by[(m, 'unrelated')]):.2f}"
             for (m, kind), v in sorted(by.items()) if kind == "related" and (m, "unrelated") in by]
    if means:
        L += ["", "Mean gain kept: " + "; ".join(means) + "."]
    return L + [""]


CAPTIONS = {
    "fitness_vs_k": "Validation fitness vs. number of merged experts; left: all tasks of the pool (every line measured "
                    "at k=1 starts at the base model, k=0; a search's line starts at its first k), right: only the tasks of the k merged experts. Line = mean over seeds, band = "
                    "min..max over seeds, light band (where drawn) = the 95% evaluation-noise interval of the curves "
                    "without RHT, dashed = with RHT, star = the first expert alone, red dotted line = Theorem 1's "
                    "k (uniform weights).",
    "pca_cumulative": "PCA of the expert task vectors: cumulative explained variance.",
    "principal_angles": "Mean principal angle between the experts' LoRA subspaces (0 = shared directions); the "
                        "dashed line on the scale is the level of independent random subspaces of the same shapes "
                        "(`principal_angle_random_deg` in analysis/summary.json{random}), not 90.",
    "correlation": "Pearson correlation of the task vectors (drives the low-correlation order).",
    "variance_floor": "Equicorrelated Theorem 1: merged variance and its drop per added expert against Delta.",
    "merged_weight_hist": "Entries of the uniform merge of the whole pool, without and with RHT (each curve the share "
                          "of its own entries per bin).",
}


#: The pool analysis's figures (``analysis/NAME.png``).
ANALYSIS_FIGURES = ("pca_cumulative", "principal_angles", "correlation", "variance_floor", "merged_weight_hist")


def _figures_section(figures, analysis_missing: str | None = None, random_angle: float | None = None) -> list[str]:
    L = ["## Figures", ""]
    for name, rel in figures.items():
        cap = CAPTIONS.get(name) or (f"Merged task-vector entries at the largest k run, without and with RHT "
                                     f"({name.removeprefix('weight_hist_')}); each curve is the share of its own "
                                     "entries per bin, both from the same number of entries (n in the legend: RHT's "
                                     "cells, one per seed, are subsampled with a fixed seed to the plain merge's "
                                     "count), so a longer tail is not an artefact of a larger sample.")
        cap = cap.replace("{random}", f": {random_angle:.1f} degrees on this pool" if random_angle is not None else "")
        L += [f"![{name}]({rel})", "", cap, ""]
    if analysis_missing:
        L += [f"The pool analysis's figures ({', '.join(f'`{n}`' for n in ANALYSIS_FIGURES)}): analysis missing "
              f"({analysis_missing}).", ""]
    return L


def _mean_sd(vals: list) -> str:
    v = [x for x in vals if x is not None]
    if not v:
        return "n/a"
    m = sum(v) / len(v)
    sd = (sum((x - m) ** 2 for x in v) / (len(v) - 1)) ** 0.5 if len(v) > 1 else 0.0
    return f"{m:.3f} ± {sd:.3f} (n={len(v)})"


def _search_section(s) -> list[str]:
    rows = s.get("searches") or []
    if not rows:
        return []
    flagged = any(r["test_best_in_population"] is not None for r in rows)
    L = ["## Searches: the paper's Table 1 numbers", "",
         "Each search optimises the validation fitness on its k experts' tasks. `test (validation-selected)` is the test "
         "score of the individual the search returned, chosen on validation only: the honest number. "
         + _returned_rule(rows)
         + (" `best test in final population` is the paper's own number: the best *test* score over the final "
            "population, which selects on the test set (**test-set selection: not a fair estimate**)." if flagged else "")
         + " `best made by`: the operation that made each seed's returned individual; generation 0 (marked *) is the "
         "search's initial population (the experts, the scaled sums of `init_sums`, the registry merges of "
         "`init_merges`), later generations are the search's own steps.",
         "", "| k | method | validation | test (validation-selected) | best made by |"
         + (" best test in final population (TEST-SET SELECTION) |" if flagged else ""),
         "|---|---|---|---|---|" + ("---|" if flagged else "")]
    for key in sorted({(r["k"], r["method"]) for r in rows}):
        g = [r for r in rows if (r["k"], r["method"]) == key]
        made = ", ".join(_made_by(r) for r in sorted(g, key=lambda r: r["seed"]))
        line = (f"| {key[0]} | {key[1]} | {_mean_sd([r['validation'] for r in g])} | "
                f"{_mean_sd([r['test_val_selected'] for r in g])} | {made} |")
        if flagged:
            line += f" {_mean_sd([r['test_best_in_population'] for r in g])} |"
        L.append(line)
    known = [r for r in rows if r.get("best_generation") is not None]
    if known:
        initial = sum(r["best_generation"] == 0 for r in known)
        L += ["", f"{initial} of {len(known)} searches returned an individual of their initial population"
              f"{_kept_text(known)}; "
              f"{len(known) - initial} one their own steps made. A scaled sum of the initial population "
              "(`init_sum`) is task arithmetic whose scale the search chose on validation: where it is the best, "
              "the search's advantage over a registry merge is that choice, not its own steps."]
    return L + [""]


def _made_by(r: dict) -> str:
    if r.get("best_op") is None:
        return "n/a"
    return f"{r['best_op']}*" if r.get("best_generation") == 0 else f"{r['best_op']} (gen {r['best_generation']})"


def _returned_rule(rows: list[dict]) -> str:
    """Which individual a search returns, with the run's margins (``select_margin`` per method)."""
    margins = {r["method"]: r["select_margin"] for r in rows if r.get("select_margin") is not None}
    if not margins:
        return "It is the individual with the best validation fitness the search scored."
    if not any(margins.values()):
        return ("It is the individual with the best validation fitness the search scored (`select_margin` 0 in this "
                "run).")
    return ("A search returns its best initial individual (generation 0) unless a later one beats it on validation by "
            "more than `select_margin` (this run: " + ", ".join(f"{m} {v:g}" for m, v in sorted(margins.items()))
            + "; config `genome.select_margin` / `swarm.select_margin`, docs/search.md), so the returned individual "
            "is not always the best validation fitness the search scored; `validation` is the returned one's.")


def _kept_text(rows: list[dict]) -> str:
    """`` (N of them kept by `select_margin`: ...)``: the searches that returned an initial
    individual although a later one scored higher on validation, within the margin."""
    known = [r for r in rows if r.get("kept_by_margin") is not None]
    if not known:
        return ""
    kept = sorted((r for r in known if r["kept_by_margin"]), key=lambda r: (r["k"], r["method"], r["seed"]))
    if not kept:
        return ", none of them kept by `select_margin` (no later individual scored higher on validation)"
    return (f", {len(kept)} of them kept by `select_margin` (a later individual scored higher on validation, by no more "
            "than the margin: " + "; ".join(
                f"k = {r['k']} {r['method']} seed {r['seed']}: {r['top_id']} (gen {r['top_generation']}) "
                f"{r['top_fitness']:.5f} against the returned {r['validation']:.5f}" for r in kept) + ")")
