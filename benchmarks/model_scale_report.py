"""The printed tables of ``benchmarks/model_scale.py`` (per phase; the registry merge; the naive loop)."""

from __future__ import annotations

from typing import Any

MERGE_METHODS = ("task_arithmetic", "ties", "dare_ties")


def report(res: dict[str, Any]) -> None:
    ws, mb = res["workspace"], 1 << 20
    print(f"size {res['size']}: {ws['n_params'] / 1e6:.1f}M parameters ({res['dtype']}), {ws['n_linear']} adapted "
          f"linears, {res['experts']} rank-8 experts of {ws['expert_ab_bytes'] / mb:.1f} MiB, population "
          f"{res['population']} in space {res['space']} ({res['individual_bytes'] / mb:.1f} MiB each), device "
          f"{res['device']}; {'reused' if res.get('reused_workdir') else 'built'} in {res['build_s']:.1f} s")
    print(f"{'phase':<8}{'wall s':>8}{'evals':>6}{'eval/s':>8}{'merge':>7}{'swap':>7}{'fwd':>7}{'score':>7}{'ray':>7}{'other':>7}"
          f"{'outside':>8}{'peak MiB':>9}{'bound':>7}{'ratio':>6}{'own MiB':>8}{'ratio':>6}{'shm MiB':>8}{'dev MiB':>8}"
          f"{'store/rnd':>10}  dtype")
    for p in res["phases"]:
        sh = p.get("shares", {})
        cells = "".join(f"{100 * sh[k]:>6.1f}%" if k in sh else f"{'':>7}"
                        for k in ("merging", "swapping", "forward", "scoring", "transfer", "other"))
        out = f"{100 * p['outside_eval']:>7.1f}%" if "outside_eval" in p else f"{'':>8}"
        print(f"{p['phase']:<8}{p['wall_s']:>8.2f}{p['evaluations']:>6}{p.get('evals_per_s', 0):>8.2f}{cells}{out}"
              f"{p['host_peak_extra'] / mb:>9.0f}{p['bound'] / mb:>7.0f}{p['host_peak_extra'] / p['bound']:>6.2f}"
              f"{p.get('own_peak_extra', 0) / mb:>8.0f}{p.get('own_peak_extra', 0) / p['bound']:>6.2f}"
              f"{p.get('shmem_peak', 0) / mb:>8.0f}"
              f"{p['device_peak'] / mb:>8.0f}{p['traffic_per_round'] / 1024:>8.0f}KiB  {p['eval_dtype']}")
    for p in res["phases"]:
        at = p.get("at_own_peak") or {}
        if at:
            held = (f"; {at['individuals']} individuals with weights ({at['individual_bytes'] / mb:.0f} MiB), "
                    f"{at['lazy']} as recipes, {'inside' if at['in_eval'] else 'outside'} evaluate_many"
                    if "individuals" in at else "")
            print(f"  {p['phase']} at its own peak: heap {at['anon_extra'] / mb:.0f} MiB + mapped files "
                  f"{at['file_extra'] / mb:.0f} MiB above the idle actor{held}")
    m = next((p["detail"] for p in res["phases"] if p["phase"] == "merge"), None)
    if m is not None:
        print(f"registry merge of {m['n']} experts ({m['input_bytes'] / mb:.0f} MiB of stacked deltas; densifying "
              f"B@A {m['stack_s']:.2f} s, a copy {m['copy_s']:.3f} s):")
        print(f"{'method':<16}{'merged() s':>11}{'per-tensor s':>13}{'x copy':>8}{'peft s':>9}{'peft/this':>10}")
        for k in MERGE_METHODS:
            print(f"{k:<16}{m[f'merged_{k}_s']:>11.2f}{m[f'{k}_s']:>13.3f}{m[f'{k}_s'] / m['copy_s']:>8.1f}"
                  f"{m[f'peft_{k}_s']:>9.3f}{m[f'peft_{k}_s'] / m[f'{k}_s']:>10.1f}")
    nv = res["naive"]
    if nv:
        loops = nv.get("loops", ["copy"])
        extra = "".join(f"; naive ({x}): {nv[f'naive_{x}_per_s']:.2f} cand/s ({nv[f'speedup_{x}']:.1f}x)" for x in loops[1:])
        print(f"{nv['candidates']} candidates; naive save-reload-evaluate ({loops[0]}): {nv['naive_per_s']:.2f} cand/s;"
              f" evaluate_many: {nv['in_memory_per_s']:.2f} cand/s ({nv['speedup']:.1f}x){extra};"
              f" max |score diff| {nv['max_score_diff']:.1e}; evolve rounds: "
              + ", ".join(f"{p['phase']} {p['evals_per_s'] / nv['naive_per_s']:.1f}x"
                          for p in res["phases"] if p["phase"] in ("genome", "swarm")))
