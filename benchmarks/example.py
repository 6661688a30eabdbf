"""The worked example end to end: caskax's against caskade's tutorial code (issue 7,
figure 7).

    python benchmarks/example.py              # full run (~5 min on 2 shared cores)
    python benchmarks/example.py --quick      # smoke run (short chains, ~3 min)
    python benchmarks/example.py --out DIR    # where example.json / .md go
    python benchmarks/example.py --rounds 3   # the whole sequence 3 times, medians

Runs, one after another, each in its own process:

* caskax: ``python -m caskax.examples.sn_lightcurve --no-figures`` cold (an empty
  temporary ``--cache-dir``: every XLA compile happens) and warm (the same cache dir,
  a second run: compiled code comes from JAX's persistent cache);
* caskade: `benchmarks/caskade_tutorial.py`, the tutorial's analysis on torch (Nelder-Mead
  fits + torch hessians in stages 1-3, emcee 32 walkers x (100 + 1000) in stage 4), with
  ``torch.set_num_threads(1)`` and with torch's default thread count.

Reported: the process wall time (interpreter start and imports included), the script's
own total (after its imports) and its per-stage seconds, and what each recovered. The
two sides do different work in stages 1-4 (caskax: L-BFGS + Laplace, NUTS 4 x (200 +
1000); caskade: Nelder-Mead + hessian, emcee): the comparison is of the two worked
examples as each library's tutorial runs them.

A shared 2-core machine's speed can move by 1.5x within minutes, so ``--rounds N``
repeats the whole sequence (a fresh cache for each cold run) and reports the medians
and, per round, the ratio of caskax's cold run to caskade's runs next to it.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
    __package__ = "benchmarks"

from ._timing import uptime, write_outputs  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent


def _run(label, cmd, timeout, result_file, env=None):
    print(f"[{label}] {' '.join(cmd[1:])}", flush=True)
    t0 = time.perf_counter()
    status, tail = "ok", ""
    try:
        proc = subprocess.run(
            cmd,
            cwd=ROOT,
            env=env,
            timeout=timeout,
            text=True,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
        )
        tail = proc.stdout
        if proc.returncode != 0:
            status = f"failed (exit {proc.returncode})"
    except subprocess.TimeoutExpired as err:
        tail = err.stdout if isinstance(err.stdout, str) else (err.stdout or b"").decode()
        status = f"timed out after {timeout:.0f} s"
    wall = time.perf_counter() - t0
    lines = tail.strip().splitlines()
    print("\n".join(f"    {x}" for x in lines[-12:]), flush=True)
    print(f"[{label}] {status}, {wall:.1f} s", flush=True)
    res = json.loads(Path(result_file).read_text()) if Path(result_file).exists() else None
    return dict(label=label, status=status, process_wall_s=wall, results=res, log_tail=lines[-40:])


def _caskax_row(run):
    r = run["results"] or {}
    stages = {f"stage{i}": (r.get(f"stage{i}") or {}).get("seconds") for i in range(1, 5)}
    rec = {}
    if r.get("stage3"):
        rec["stage3"] = {
            k: [r["stage3"][k]["value"], r["stage3"][k]["sigma"]]
            for k in ("t0", "sigma", "peak_flux")
        }
    if r.get("stage4"):
        rec["stage4"] = {
            k: [r["stage4"][k]["mean"], r["stage4"][k]["sd"]] for k in ("t0", "sigma", "peak_flux")
        }
        rec["stage4_diag"] = {
            k: r["stage4"].get(k) for k in ("max_rhat", "min_ess_bulk", "divergences")
        }
    rec["stage1_flux"] = (r.get("stage1") or {}).get("flux")
    rec["stage2_flux"] = (r.get("stage2") or {}).get("flux")
    return dict(stages, total=r.get("total_seconds"), recovered=rec)


def _caskade_row(run):
    r = run["results"] or {}
    st = r.get("stages", {})
    stages = {f"stage{i}": st.get(f"stage{i}", {}).get("seconds") for i in range(0, 5)}
    rec = {}
    if "stage3" in st:
        rec["stage3"] = {k: st["stage3"][k] for k in ("t0", "sigma", "peak_flux")}
    if "stage4" in st and "mean" in st["stage4"]:
        s4 = st["stage4"]
        rec["stage4"] = {k: [s4["mean"][k], s4["sd"][k]] for k in ("t0", "sigma", "peak_flux")}
        rec["stage4_diag"] = {k: s4.get(k) for k in ("max_rhat", "min_ess_bulk", "acceptance")}
    rec["stage1_flux"] = st.get("stage1", {}).get("flux")
    rec["stage2_flux"] = st.get("stage2", {}).get("flux")
    return dict(
        stages,
        total=r.get("total_seconds"),
        recovered=rec,
        threads=(r.get("config") or {}).get("threads"),
    )


def _s(v):
    return "" if v is None else f"{v:.2f}"


def markdown(result) -> str:
    meta = result["meta"]
    out = [
        f"Mode `{meta['mode']}`, {meta['date']}, `{meta['command']}`",
        "",
        f"Machine: {meta['machine']}.",
        f"Load before: `{meta['uptime_before']}`; after: `{meta['uptime_after']}`.",
        "",
        "### Worked example end to end (seconds)",
        "",
        "Process: wall time of the whole process (interpreter, imports, everything). "
        "Total: the script's own clock after its imports. Stage 0 (mock data) is inside "
        "the total; caskax reports it only in its log.",
        "",
        "| run | status | process | total | stage 1 | stage 2 | stage 3 | stage 4 |",
        "|---|---|---|---|---|---|---|---|",
    ]
    rounds = max(run.get("round", 1) for run in result["runs"])
    for run in result["runs"]:
        row = run["row"]
        label = run["label"] + (f", round {run['round']}" if rounds > 1 else "")
        out.append(
            f"| {label} | {run['status']} | {run['process_wall_s']:.2f} | "
            f"{_s(row.get('total'))} | {_s(row.get('stage1'))} | {_s(row.get('stage2'))} | "
            f"{_s(row.get('stage3'))} | {_s(row.get('stage4'))} |"
        )
    if rounds > 1:
        out += _rounds_summary(result["runs"])
    out += [
        "",
        "### What each recovered (light curve: truth t0 = -3, sigma = 2, peak = 0.25)",
        "",
        "| run | stage 3 t0 | stage 3 sigma | stage 3 peak | stage 4 t0 | stage 4 sigma "
        "| stage 4 peak | stage 4 diagnostics |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for run in result["runs"]:
        rec = run["row"]["recovered"]

        def pm(stage, k, rec=rec):
            v = rec.get(stage, {}).get(k)
            return "" if v is None else f"{v[0]:.3f} ± {v[1]:.3f}"

        diag = rec.get("stage4_diag") or {}
        d = ", ".join(f"{k} {v:.3g}" for k, v in diag.items() if v is not None)
        label = run["label"] + (f", round {run['round']}" if rounds > 1 else "")
        out.append(
            f"| {label} | {pm('stage3', 't0')} | {pm('stage3', 'sigma')} | "
            f"{pm('stage3', 'peak_flux')} | {pm('stage4', 't0')} | "
            f"{pm('stage4', 'sigma')} | {pm('stage4', 'peak_flux')} | {d} |"
        )
    out.append("")
    return "\n".join(out) + "\n"


def _rounds_summary(runs) -> list:
    """Medians over rounds, and caskax cold / each caskade run within each round."""
    by_label = {}
    for run in runs:
        by_label.setdefault(run["label"], []).append(run)
    out = [
        "",
        "Medians over rounds (seconds):",
        "",
        "| run | rounds | process | total |",
        "|---|---|---|---|",
    ]
    for label, rs in by_label.items():
        totals = [r["row"]["total"] for r in rs if r["row"].get("total") is not None]
        out.append(
            f"| {label} | {len(rs)} | {statistics.median(r['process_wall_s'] for r in rs):.2f} "
            f"| {_s(statistics.median(totals) if totals else None)} |"
        )
    out += ["", "caskax cold / caskade, each round (process; total):", ""]
    for run in runs:
        if not run["label"].startswith("caskade"):
            continue
        cold = next(
            (r for r in runs if r["label"] == "caskax cold" and r["round"] == run["round"]), None
        )
        if cold is None or not cold["row"].get("total") or not run["row"].get("total"):
            continue
        out.append(
            f"* round {run['round']}, {run['label']}: "
            f"{cold['process_wall_s'] / run['process_wall_s']:.2f}x; "
            f"{cold['row']['total'] / run['row']['total']:.2f}x"
        )
    return out


def _one_round(args, env) -> list:
    """caskax cold (an empty cache) and warm, then caskade on 1 and on torch's default
    threads, each in its own process."""
    runs = []
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        cache = tmp / "jax-cache"
        cache.mkdir()
        for label in ("caskax cold", "caskax warm"):
            outdir = tmp / label.replace(" ", "-")
            cmd = [
                sys.executable,
                "-m",
                "caskax.examples.sn_lightcurve",
                "--no-figures",
                "--out",
                str(outdir),
                "--cache-dir",
                str(cache),
            ] + (["--quick"] if args.quick else [])
            run = _run(label, cmd, args.timeout, outdir / "results.json", env)
            run["row"] = _caskax_row(run)
            runs.append(run)
        thread_runs = [("caskade-torch 1 thread", 1)]
        if not args.skip_default_threads:
            thread_runs.append(("caskade-torch default threads", 0))
        for label, threads in thread_runs:
            js = tmp / f"caskade-{threads}.json"
            cmd = [
                sys.executable,
                str(ROOT / "benchmarks" / "caskade_tutorial.py"),
                "--threads",
                str(threads),
                "--json",
                str(js),
            ] + (["--quick"] if args.quick else [])
            run = _run(label, cmd, args.timeout, js, dict(env, CASKADE_BACKEND="torch"))
            run["row"] = _caskade_row(run)
            if run["row"].get("threads") is not None:
                run["label"] = f"{label} ({run['row']['threads']})"
            runs.append(run)
    return runs


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description="the worked example: caskax vs caskade's tutorial")
    ap.add_argument(
        "--quick",
        action="store_true",
        help="smoke run: caskax --quick (2 chains x 150+200), emcee 50+200",
    )
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results"))
    ap.add_argument(
        "--timeout",
        type=float,
        default=300,
        help="seconds per process (a caskade run on torch's default threads can "
        "stall on a loaded machine)",
    )
    ap.add_argument(
        "--skip-default-threads", action="store_true", help="run caskade with 1 torch thread only"
    )
    ap.add_argument(
        "--rounds",
        type=int,
        default=1,
        help="repeat the whole sequence; the report adds medians and per-round ratios",
    )
    args = ap.parse_args(argv)
    mode = "quick" if args.quick else "full"
    t_start = time.perf_counter()
    before = uptime()
    print(f"uptime before: {before}", flush=True)
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(
        p for p in (str(ROOT), str(ROOT / "src"), env.get("PYTHONPATH", "")) if p
    )
    runs = []
    for k in range(1, args.rounds + 1):
        for run in _one_round(args, env):
            run["round"] = k
            runs.append(run)
    after = uptime()
    print(f"uptime after: {after}", flush=True)
    from .run import _cpu_model, _versions

    result = dict(
        meta=dict(
            mode=mode,
            date=_dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
            command=" ".join(
                ["python", "benchmarks/example.py", *(argv if argv is not None else sys.argv[1:])]
            ),
            machine=f"{_cpu_model()}, {os.cpu_count()} cores, {platform.platform()}",
            versions=_versions(),
            uptime_before=before,
            uptime_after=after,
            wall_s=time.perf_counter() - t_start,
        ),
        runs=runs,
    )
    write_outputs(args.out, "example", mode, result, markdown, t_start)
    return 0 if all(r["status"] == "ok" for r in runs) else 1


if __name__ == "__main__":
    sys.exit(main())
