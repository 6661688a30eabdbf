"""caskax against hand-written JAX and caskade, side by side (issue 7).

    python benchmarks/run.py                  # full run (~8-10 min on 2 cores)
    python benchmarks/run.py --quick          # CI smoke (a few minutes)
    python benchmarks/run.py --tiny           # every code path on toy sizes (< 1 min)
    python benchmarks/run.py --out DIR        # where results.json and results.md go
    python benchmarks/run.py --torch-threads 1  # torch on one thread (shared machines)

One process per backend, run one after another on the same machine:

* ``jax``: hand-written JAX (``hand``: the module tree's arithmetic; ``hand-opt``: what a
  JAX author would write, where that differs) and caskax, interleaved;
  blackjax NUTS written by hand, and ``cx.nuts`` when the checkout has it;
* ``caskade-torch``: caskade 1.1.5 on torch (skipped, with a note, without torch), and
  the seed's emcee run (32 walkers);
* ``caskade-jax``: caskade 1.1.5 on its jax backend (``CASKADE_BACKEND=jax``), eager and
  jitted, and emcee on it.

Figures: 1 call (jitted, direct), 2 grad / hessian, 3 vmap, 4 compile + first call,
5 scaling with epochs and with node count, 6 sampling (ESS/s, arviz bulk ESS, min over
params, counting warm-up and draws), and on a GPU the GPU section (vmap 1024 / 16384,
64 chains). Each timing: warm-up, then the median of >= 20 repeats with
``block_until_ready`` (min / median / max recorded); the ratio is to ``hand``.
``CASKAX_BENCH_MODE=tiny|quick|full`` sets the mode when no flag is given.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import importlib.metadata
import importlib.util
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
    __package__ = "benchmarks"

from ._timing import fmt_time  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
SCHEMA_VERSION = 1
PEERS = ("jax", "caskade-torch", "caskade-jax")
PEER_ORDER = ("hand", "hand-opt", "caskax", "caskade-torch", "caskade-jax",
              "hand-blackjax", "caskade-torch+emcee", "caskade-jax+emcee")
ROW_KEYS = ("figure", "model", "case", "peer", "param")
STAT_KEYS = ("min", "median", "max", "n")
FIGURE_TITLES = {
    "1-call": "1. One likelihood call (jitted; direct `f(x)`; caskade eager)",
    "2-deriv": "2. Gradient and hessian (jitted; caskade-torch: torch.func.grad and "
               "torch.autograd.functional.hessian as the seed)",
    "3-vmap": "3. vmap over parameter vectors (jitted; caskade-torch: torch.vmap)",
    "4-compile": "4. Build, and compile + first call",
    "5-epochs": "5a. Scaling with epochs (likelihood2 stage 2: params and pixels grow, "
                "`hand-opt` vectorised over epochs; likelihood3: pixels grow)",
    "5-nodes": "5b. Scaling with node count (k sources sharing one PSF param through k-1 "
               "links, k flux pointers to one light curve; 32x32 px; `hand` unrolled like "
               "the module tree, `hand-opt` vectorised over sources)",
    "gpu-vmap": "GPU: vmap 1024 / 16384",
}


def _versions() -> dict:
    out = {"python": platform.python_version()}
    for pkg in ("jax", "jaxlib", "equinox", "blackjax", "numpy", "caskade", "torch", "emcee",
                "arviz", "caskax"):
        try:
            out[pkg] = importlib.metadata.version(pkg)
        except importlib.metadata.PackageNotFoundError:
            out[pkg] = None
    return out


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _mode(args) -> str:
    if args.tiny:
        return "tiny"
    if args.quick:
        return "quick"
    return os.environ.get("CASKAX_BENCH_MODE", "full")


# ---------------------------------------------------------------------------------------
# worker side
def _worker(kind: str, mode: str, json_path: str, parts) -> int:
    from ._workers import CONFIGS, run_caskade, run_jax

    cfg = CONFIGS[mode]
    t0 = time.perf_counter()
    if kind == "jax":
        import jax

        device = f"{jax.devices()[0].platform}: {jax.devices()[0].device_kind}"
        rows = run_jax(cfg, parts=parts)
    else:
        device = "cpu"
        rows = run_caskade(cfg, parts=parts)
    payload = dict(rows=rows, device=device, wall_s=time.perf_counter() - t0)
    Path(json_path).write_text(json.dumps(payload, default=float))
    return 0


# ---------------------------------------------------------------------------------------
# driver side
def _peer_available(peer: str):
    if importlib.util.find_spec("jax") is None:
        return "jax is not installed"
    if peer == "jax":
        return None
    if importlib.util.find_spec("caskade") is None:
        return "caskade is not installed (pip install caskade==1.1.5)"
    if peer == "caskade-torch" and importlib.util.find_spec("torch") is None:
        return "torch is not installed (pip install torch==2.13.0 for the caskade-torch peer)"
    return None


def _start_peer(peer, mode, parts, tmp, torch_threads=None):
    env = dict(os.environ)
    if torch_threads:
        env["CASKAX_BENCH_TORCH_THREADS"] = str(torch_threads)
    env["CASKADE_BACKEND"] = {"caskade-torch": "torch", "caskade-jax": "jax"}.get(peer, "jax")
    env["PYTHONPATH"] = os.pathsep.join(
        p for p in (str(ROOT), str(ROOT / "src"), env.get("PYTHONPATH", "")) if p)
    out = Path(tmp) / f"{peer}.json"
    log = open(Path(tmp) / f"{peer}.log", "w+")
    cmd = [sys.executable, "-m", "benchmarks.run", "--worker",
           "jax" if peer == "jax" else "caskade", "--mode", mode, "--json", str(out),
           "--parts", ",".join(parts)]
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT,
                            text=True)
    return dict(proc=proc, out=out, log=log, t0=time.perf_counter())


def _finish_peer(job, timeout):
    proc = job["proc"]
    try:
        proc.wait(timeout=max(1.0, timeout - (time.perf_counter() - job["t0"])))
        why = None
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
        why = f"timed out after {timeout:.0f} s"
    job["log"].seek(0)
    text = job["log"].read()
    job["log"].close()
    print(text, end="", flush=True)
    wall = time.perf_counter() - job["t0"]
    if why is None and (proc.returncode != 0 or not job["out"].exists()):
        why = "\n".join(text.strip().splitlines()[-15:])
    if why is not None:
        return dict(status="failed", reason=why, wall_s=wall), []
    payload = json.loads(job["out"].read_text())
    return dict(status="ok", device=payload["device"], wall_s=payload["wall_s"]), payload["rows"]


def _run_peers(peers, mode, parts, timeout, jobs, torch_threads=None, reuse=None, keep=None):
    """Run each peer in its own process, ``jobs`` at a time (1 for timings you keep).
    ``reuse``: {peer: worker JSON} of peers measured earlier in this mode, not rerun."""
    status, rows, queue = {}, [], []
    got = {}
    for peer, path in (reuse or {}).items():
        payload = json.loads(Path(path).read_text())
        status[peer] = dict(status="ok", device=payload["device"], wall_s=payload["wall_s"],
                            reused=str(path))
        got[peer] = payload["rows"]
        print(f"[{peer}] reused from {path}", flush=True)
    for peer in peers:
        if peer in got:
            continue
        why = _peer_available(peer)
        if why:
            status[peer] = dict(status="skipped", reason=why)
            print(f"[{peer}] skipped: {why}", flush=True)
        else:
            queue.append(peer)
    with tempfile.TemporaryDirectory() as tmp:
        running = []
        while queue or running:
            while queue and len(running) < max(1, jobs):
                peer = queue.pop(0)
                print(f"[{peer}] running ({mode})", flush=True)
                running.append((peer, _start_peer(peer, mode, parts, tmp, torch_threads)))
            peer, job = running.pop(0)
            status[peer], got[peer] = _finish_peer(job, timeout)
            print(f"[{peer}] {status[peer]['status']}", flush=True)
            if status[peer]["status"] == "ok" and keep is not None:
                keep.mkdir(parents=True, exist_ok=True)
                (keep / f"{peer}.json").write_text(job["out"].read_text())
    for peer in peers:
        rows += got.get(peer, [])
    return {p: status[p] for p in peers}, rows


def _add_ratios(rows):
    """``ratio``: median over hand's median for the same figure/model/case/param
    (sampling: ESS/s over hand-blackjax's, so there higher is better)."""
    ref = {}
    for r in rows:
        if r.get("peer") == "hand" and "median" in r:
            ref[(r["figure"], r["model"], r["case"], r["param"])] = r["median"]
    samp = {(r["figure"], r["model"]): r["ess_per_s"] for r in rows
            if r.get("peer") == "hand-blackjax" and "ess_per_s" in r}
    for r in rows:
        if "ess_per_s" in r:
            base = samp.get((r["figure"], r["model"]))
            r["ratio"] = r["ess_per_s"] / base if base else None
            continue
        if "median" not in r:
            r["ratio"] = None
            continue
        case = r["case"]
        if case == "jit-program-arg":
            case = "jit"
        base = ref.get((r["figure"], r["model"], case, r["param"]))
        r["ratio"] = r["median"] / base if base else None
    return rows


def _cell(r):
    if r is None:
        return ""
    if "skipped" in r:
        return "skipped"
    s = fmt_time(r["median"])
    if r.get("ratio") is not None and r["peer"] != "hand":
        s += f" ({r['ratio']:.2f}x)"
    return s


def markdown(result: dict) -> str:
    rows, meta = result["rows"], result["meta"]
    out = [
        f"Mode `{meta['mode']}`, {meta['date']}, `{meta['command']}`",
        "",
        f"Machine: {meta['machine']['cpu']}, {meta['machine']['cores']} cores, "
        f"{meta['machine']['platform']}; device {meta['device']}. "
        + ", ".join(f"{k} {v}" for k, v in meta["versions"].items() if v),
        "",
        "Cells: median time (ratio to `hand`, the hand-written JAX function with the module "
        "tree's arithmetic). Full min/median/max/n in results.json.",
        "",
    ]
    for peer, st in result["peers"].items():
        if st["status"] != "ok":
            out.append(f"* peer `{peer}`: {st['status']}: {st.get('reason', '')}".rstrip())
    notes = sorted({r["skipped"] for r in rows if "skipped" in r})
    out += [f"* {n}" for n in notes]
    out.append("")
    for fig, title in FIGURE_TITLES.items():
        frows = [r for r in rows if r["figure"] == fig and "ess_per_s" not in r]
        if not frows:
            continue
        peers = [p for p in PEER_ORDER if any(r["peer"] == p for r in frows)]
        keys = list(dict.fromkeys((r["model"], r["case"], r["param"]) for r in frows))
        idx = {(r["model"], r["case"], r["param"], r["peer"]): r for r in frows}
        out += [f"### {title}", "",
                "| model | case | n | " + " | ".join(peers) + " |",
                "|---|---|---|" + "---|" * len(peers)]
        for m, c, p in keys:
            cells = [_cell(idx.get((m, c, p, peer))) for peer in peers]
            out.append(f"| {m} | {c} | {'' if p is None else p} | " + " | ".join(cells) + " |")
        out.append("")
    for fig in ("6-sampling", "gpu-sampling"):
        srows = [r for r in rows if r["figure"] == fig]
        if not srows:
            continue
        title = "6. Sampling likelihood3 (11 entries)" if fig == "6-sampling" else \
            "GPU: sampling with many chains"
        out += [f"### {title}", "",
                "ESS: arviz bulk ESS, min over params; time counts warm-up (burn-in) and "
                "draws, not compilation; ratio: ESS/s over hand-blackjax's (higher is better).",
                "",
                "| peer | chains x draws | ESS min | R-hat max | time | ESS/s | ratio "
                "| first call |",
                "|---|---|---|---|---|---|---|---|"]
        for r in srows:
            if "skipped" in r:
                out.append(f"| {r['peer']} | skipped: {r['skipped']} | | | | | | |")
                continue
            first = fmt_time(r["first_call_s"]) if r.get("first_call_s") else ""
            ratio = f"{r['ratio']:.2f}x" if r.get("ratio") is not None else ""
            out.append(f"| {r['peer']} | {r['chains']} x {r['draws']} | {r['ess_min']:.0f} | "
                       f"{r['rhat_max']:.3f} | {fmt_time(r['wall_s'])} | "
                       f"{r['ess_per_s']:.1f} | {ratio} | {first} |")
        out.append("")
    out += ["### All timings (min / median / max, n repeats)", "",
            "| figure | model | case | n | peer | min | median | max | repeats |",
            "|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        if "median" not in r or "ess_per_s" in r:
            continue
        out.append(f"| {r['figure']} | {r['model']} | {r['case']} | "
                   f"{'' if r['param'] is None else r['param']} | {r['peer']} | "
                   f"{fmt_time(r['min'])} | {fmt_time(r['median'])} | {fmt_time(r['max'])} | "
                   f"{r['n']} |")
    return "\n".join(out) + "\n"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description="caskax benchmarks (issue 7)")
    ap.add_argument("--quick", action="store_true", help="CI smoke run (a few minutes)")
    ap.add_argument("--tiny", action="store_true", help="toy sizes: every code path, < 1 min")
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results"))
    ap.add_argument("--peers", default=",".join(PEERS),
                    help=f"comma-separated subset of {','.join(PEERS)}")
    ap.add_argument("--parts", default="core,scaling,sampling,gpu",
                    help="comma-separated subset of core,scaling,sampling,gpu")
    ap.add_argument("--timeout", type=float, default=1800, help="seconds per peer process")
    ap.add_argument("--jobs", type=int, default=1,
                    help="peer processes at a time (keep 1 for timings you report)")
    ap.add_argument("--torch-threads", type=int, default=None,
                    help="torch.set_num_threads for the caskade-torch peer (default: torch's)")
    ap.add_argument("--reuse", action="append", default=[], metavar="PEER=FILE",
                    help="take PEER's rows from a worker file kept by an earlier run "
                         "(OUT/workers/PEER.json) instead of running it again")
    ap.add_argument("--worker", help=argparse.SUPPRESS)
    ap.add_argument("--mode", help=argparse.SUPPRESS)
    ap.add_argument("--json", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    parts = tuple(p for p in args.parts.split(",") if p)
    if args.worker:
        return _worker(args.worker, args.mode, args.json, parts)

    mode = _mode(args)
    peers = [p for p in args.peers.split(",") if p]
    unknown = set(peers) - set(PEERS)
    if unknown:
        ap.error(f"unknown peers {sorted(unknown)}; choose from {', '.join(PEERS)}")
    t_start = time.perf_counter()
    reuse = dict(item.split("=", 1) for item in args.reuse)
    status, rows = _run_peers(peers, mode, parts, args.timeout, args.jobs, args.torch_threads,
                              reuse, keep=Path(args.out) / "workers")
    _add_ratios(rows)
    device = status.get("jax", {}).get("device", "cpu")
    result = dict(
        schema=SCHEMA_VERSION,
        meta=dict(
            mode=mode,
            date=_dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
            command=" ".join(["python", "benchmarks/run.py", *(argv if argv is not None
                                                                else sys.argv[1:])]),
            machine=dict(cpu=_cpu_model(), cores=os.cpu_count(),
                         platform=platform.platform()),
            device=device,
            versions=_versions(),
            wall_s=time.perf_counter() - t_start,
            torch_threads=args.torch_threads,
        ),
        peers=status,
        rows=rows,
    )
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.json").write_text(json.dumps(result, indent=1, default=float))
    md = markdown(result)
    (out / "results.md").write_text(md)
    print(md)
    print(f"wrote {out / 'results.json'} and {out / 'results.md'} "
          f"in {time.perf_counter() - t_start:.0f} s")
    return 1 if any(s["status"] == "failed" for s in status.values()) else 0


if __name__ == "__main__":
    sys.exit(main())
