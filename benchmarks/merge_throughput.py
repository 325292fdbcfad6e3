"""Throughput and peak memory of evomerge's TIES / DARE-TIES against peft and a memory copy.

    python benchmarks/merge_throughput.py                   # 10 experts x 2048x2048 fp32, CPU
    python benchmarks/merge_throughput.py --size 1024 --experts 4 --threads 1
    python benchmarks/merge_throughput.py --device cuda
    python benchmarks/merge_throughput.py --device cuda --size 4096 --ops target   # issue 18's GPU target

DARE runs twice in evomerge: with the default ``rng="fast"`` mask (8 random bits per
coordinate, same keep distribution, different draws than peft) and with ``rng="peft"``
(peft's exact ``torch.bernoulli`` draws; the pre-``rng`` behaviour).

On CPU every timing runs in its own subprocess by default on the same deterministic tensors
(rounds of subprocesses interleave the operations, so load drift on a shared machine affects
all alike), so the peak-memory number (``ru_maxrss`` growth, which a process cannot reset)
belongs to that operation alone. On CUDA all operations run in one process by default
(``--isolate`` forces subprocesses; ``--no-isolate`` on CPU gives timings without peaks):
``torch.cuda.max_memory_allocated`` is reset before each, and a process per operation pays
the imports, the CUDA start and the Triton kernel load again (docs/benchmarks.md, "GPU check").
In one process the first call of each operation is an untimed warm-up (Triton compiles there).
Peak memory is printed as a ratio to the stacked input (n experts x one tensor). The tensors
are drawn on the device (a CPU draw of 10 x 4096^2 normals takes seconds); CPU and CUDA data
differ.
``--ops target`` measures only what issue 18's target needs: the copy, evomerge's TIES and
DARE-TIES and peft's two.
Results are then compared in one process: TIES bit for bit, DARE with ``rng="peft"`` bit for
bit (peft's global RNG seeded with our generator's seed), DARE with ``rng="fast"`` by the
fraction of nonzero output coordinates (the same in expectation: ``1 - (1 - density)^n`` for
DARE-TIES, as the masks are independent).
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time

import torch

OPS = (
    "memcopy",
    "evomerge_ties", "peft_ties",
    "evomerge_dare_ties", "evomerge_dare_ties_peftrng", "peft_dare_ties",
    "evomerge_dare_linear", "evomerge_dare_linear_peftrng", "peft_dare_linear",
)
TARGET_OPS = ("memcopy", "evomerge_ties", "peft_ties", "evomerge_dare_ties", "peft_dare_ties")


def _method_of(op: str) -> str:
    """``evomerge_dare_ties_peftrng`` -> ``dare_ties``."""
    return op.split("_", 1)[1].removesuffix("_peftrng")


def make_data(args) -> tuple[torch.Tensor, torch.Tensor]:
    """The experts, drawn on ``args.device`` from ``args.seed`` (the same tensors in every process)."""
    g = torch.Generator(args.device).manual_seed(args.seed)
    d = torch.randn((args.experts, args.size, args.size), generator=g, device=args.device)
    w = torch.linspace(0.5, 1.5, args.experts, device=args.device)
    return d, w


def run_op(name: str, d: torch.Tensor, w: torch.Tensor, args):
    from peft.utils import merge_utils as mu

    from evomerge.merging import get_merge_method

    if name == "memcopy":
        dst = torch.empty_like(d)
        return lambda: dst.copy_(d)
    method = _method_of(name)
    if name.startswith("evomerge_"):
        m = get_merge_method(method)
        params = {"density": args.density}
        if m.random:
            params["rng"] = "peft" if name.endswith("_peftrng") else "fast"
        return lambda: m(d, w, generator=torch.Generator(d.device).manual_seed(args.seed), **params)
    if name.startswith("peft_"):
        fn = getattr(mu, method)

        def f():
            torch.manual_seed(args.seed)  # peft's DARE draws from the global RNG
            return fn(list(d), w, args.density)
        return f
    raise ValueError(name)


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def measure(name: str, args, data=None) -> dict:
    """Time ``name`` (best of ``repeats``) and its peak extra memory, in this process (``data``:
    the experts already made, when several operations share one process; the peak is then
    ``None`` on CPU, where ``ru_maxrss`` cannot be reset)."""
    torch.set_num_threads(args.threads)
    shared = data is not None
    d, w = data if shared else make_data(args)
    fn = run_op(name, d, w, args)
    cuda = args.device.startswith("cuda")
    if cuda or shared:
        fn()  # warm-up (result freed at once): Triton compiles/loads its kernels, the allocator settles
    if cuda:
        torch.cuda.synchronize()
        base = torch.cuda.memory_allocated()
        torch.cuda.reset_peak_memory_stats()
    else:
        base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    times = []
    for _ in range(args.repeats):
        _sync(args.device)
        t0 = time.perf_counter()
        out = fn()
        _sync(args.device)
        times.append(time.perf_counter() - t0)
        del out
    peak = (torch.cuda.max_memory_allocated() if cuda else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024) - base
    if shared and not cuda:
        peak = None
    return {"op": name, "seconds": min(times), "peak_extra_bytes": None if peak is None else max(0, peak),
            "input_bytes": d.numel() * d.element_size()}


def compare(args, data=None) -> dict:
    torch.set_num_threads(args.threads)
    d, w = data if data is not None else make_data(args)
    res = {}
    for op in args.ops:
        if not op.startswith("evomerge_"):
            continue
        ours = run_op(op, d, w, args)()
        ref = run_op("peft_" + _method_of(op), d, w, args)()
        res[op.removeprefix("evomerge_")] = {
            "identical": bool(torch.equal(ours, ref)),
            "differing_coordinates": int((ours != ref).sum()),
            "max_abs_diff": float((ours - ref).abs().max()),
            "nonzero_fraction": float((ours != 0).float().mean()),
            "peft_nonzero_fraction": float((ref != 0).float().mean()),
        }
    return res


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--size", type=int, default=2048, help="each expert tensor is size x size")
    p.add_argument("--experts", type=int, default=10)
    p.add_argument("--device", default="cpu")
    p.add_argument("--density", type=float, default=0.2)
    p.add_argument("--repeats", type=int, default=2, help="timings per subprocess")
    p.add_argument("--rounds", type=int, default=2, help="subprocesses per operation, interleaved")
    p.add_argument("--threads", type=int, default=torch.get_num_threads())
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--ops", default="all",
                   help=f"comma-separated subset of {','.join(OPS)}; 'target': {','.join(TARGET_OPS)} (default: all)")
    p.add_argument("--isolate", action=argparse.BooleanOptionalAction, default=None,
                   help="each timing in its own subprocess (default: on CPU yes, on CUDA no)")
    p.add_argument("--json", action="store_true", help="print the results as JSON too")
    p.add_argument("--_measure", choices=OPS, help=argparse.SUPPRESS)
    p.add_argument("--_compare", action="store_true", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    args.ops = _parse_ops(p, args.ops)
    if args.isolate is None:
        args.isolate = not args.device.startswith("cuda")
    if args._measure:
        print(json.dumps(measure(args._measure, args)))
        return
    if args._compare:
        print(json.dumps(compare(args)))
        return
    passthrough = [f"--size={args.size}", f"--experts={args.experts}", f"--device={args.device}",
                   f"--density={args.density}", f"--repeats={args.repeats}", f"--threads={args.threads}",
                   f"--seed={args.seed}", f"--ops={','.join(args.ops)}"]

    def child(extra):
        r = subprocess.run([sys.executable, __file__, *passthrough, *extra], capture_output=True, text=True, check=True)
        return json.loads(r.stdout.strip().splitlines()[-1])

    data = None if args.isolate else make_data(args)
    # Rounds interleave the operations so that load drift on a shared machine hits all alike;
    # each operation keeps its best time and its largest peak.
    rows: dict[str, dict] = {}
    t0 = time.perf_counter()
    for _ in range(args.rounds):
        for op in args.ops:
            r = child([f"--_measure={op}"]) if args.isolate else measure(op, args, data)
            print(f"[{time.perf_counter() - t0:6.1f} s] {op}: {r['seconds'] * 1e3:.2f} ms", file=sys.stderr, flush=True)
            if op in rows:
                r["seconds"] = min(r["seconds"], rows[op]["seconds"])
                if r["peak_extra_bytes"] is not None:
                    r["peak_extra_bytes"] = max(r["peak_extra_bytes"], rows[op]["peak_extra_bytes"])
            rows[op] = r
    same = child(["--_compare"]) if args.isolate else compare(args, data)
    gb = rows["memcopy"]["input_bytes"] / 1e9
    print(f"{args.experts} experts x {args.size}x{args.size} fp32 on {args.device}, density {args.density}, "
          f"{args.threads} thread(s), best of {args.rounds}x{args.repeats}"
          f"{' (one process each)' if args.isolate else ' (one process)'}; input {gb:.2f} GB")
    copy_s = rows["memcopy"]["seconds"]
    print(f"{'operation':<30}{'ms':>9}{'GB/s':>8}{'x memcopy time':>16}{'peft/this':>11}{'peak mem / input':>18}")
    for op in args.ops:
        r = rows[op]
        ref = rows.get("peft_" + _method_of(op)) if op.startswith("evomerge_") else None
        speedup = f"{ref['seconds'] / r['seconds']:.1f}x" if ref else ""
        peak = "-" if r["peak_extra_bytes"] is None else f"{r['peak_extra_bytes'] / r['input_bytes']:.2f}"
        print(f"{op:<30}{r['seconds'] * 1e3:>9.2f}{gb / r['seconds']:>8.2f}{r['seconds'] / copy_s:>16.1f}"
              f"{speedup:>11}{peak:>18}")
    for short, s in same.items():
        if short.endswith("_peftrng") or short == "ties":
            print(f"{short}: identical to peft: {s['identical']} (differing coordinates: {s['differing_coordinates']}, "
                  f"max |diff| {s['max_abs_diff']:.3g})")
        else:
            print(f"{short} (rng=fast): nonzero fraction {s['nonzero_fraction']:.5f} vs peft {s['peft_nonzero_fraction']:.5f} "
                  f"(independent draws of the same distribution)")
    if args.device.startswith("cuda"):
        print("on CUDA with Triton the fused kernels sum in their own order (TIES equals peft up to float rounding)"
              " and draw the rng=fast mask with Philox; rng=peft reproduces peft's draws on the CPU only")
    if args.json:
        print(json.dumps({"timings": rows, "comparison": same, "size": args.size, "experts": args.experts,
                          "device": args.device, "isolate": args.isolate}))


def _parse_ops(p: argparse.ArgumentParser, text: str) -> list[str]:
    """``all``, ``target`` or a comma list; always with the copy (the bound every row is divided by),
    in ``OPS`` order."""
    if text in ("all", "target"):
        return list(OPS if text == "all" else TARGET_OPS)
    got = {x.strip() for x in text.split(",") if x.strip()}
    bad = sorted(got - set(OPS))
    if bad:
        p.error(f"--ops: unknown operation(s) {bad}; choose from {','.join(OPS)} or 'all' / 'target'")
    return [op for op in OPS if op in got or op == "memcopy"]


if __name__ == "__main__":
    main()
