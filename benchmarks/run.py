"""caskax against hand-written JAX and caskade, side by side.

    python benchmarks/run.py                  # full run (~8-10 min on 2 cores)
    python benchmarks/run.py --quick          # CI smoke (a few minutes)
    python benchmarks/run.py --tiny           # every code path on toy sizes (< 1 min)
    python benchmarks/run.py --out DIR        # where results.json and results.md go
    python benchmarks/run.py --torch-threads 1  # torch on one thread (shared machines)
    python benchmarks/run.py --publish        # also keep it as benchmarks/results-cpu.json
                                              # (-gpu.json on a GPU) and render the page
    python benchmarks/run.py --render-only    # benchmarks/RESULTS.md, docs/performance.md
                                              # and docs/img/bench/ from the JSON alone

One process per backend, run one after another on the same machine:

* ``jax``: hand-written JAX (``hand``: the module tree's arithmetic; ``hand-opt``: what a
  JAX author would write, where that differs) and caskax, interleaved;
  blackjax NUTS written by hand, and ``cx.nuts`` when the checkout has it;
* ``caskade-torch``: caskade 1.1.5 on torch (skipped, with a note, without torch), and
  emcee as caskade's tutorial runs it (32 walkers);
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
PEER_ORDER = (
    "hand",
    "hand-opt",
    "caskax",
    "caskade-torch",
    "caskade-jax",
    "hand-blackjax",
    "caskade-torch+emcee",
    "caskade-jax+emcee",
)
ROW_KEYS = ("figure", "model", "case", "peer", "param")
STAT_KEYS = ("min", "median", "max", "n")
FIGURE_TITLES = {
    "1-call": "1. One likelihood call (jitted; direct `f(x)`; caskade eager)",
    "2-deriv": "2. Gradient and hessian (jitted; caskade-torch: torch.func.grad and "
    "torch.autograd.functional.hessian, as caskade's tutorial takes them)",
    "3-vmap": "3. vmap over parameter vectors (jitted; caskade-torch: torch.vmap)",
    "4-compile": "4. Build, and compile + first call",
    "5-epochs": "5a. Scaling with epochs (likelihood2 stage 2: params and pixels grow, "
    "`hand-opt` vectorised over epochs; likelihood3: pixels grow)",
    "5-nodes": "5b. Scaling with node count (k sources sharing one PSF param through k-1 "
    "links, k flux pointers to one light curve; 32x32 px; `hand` unrolled like "
    "the module tree, `hand-opt` vectorised over sources)",
    "gpu-vmap": "vmap 1024 / 16384",
}


def _versions() -> dict:
    out = {"python": platform.python_version()}
    for pkg in (
        "jax",
        "jaxlib",
        "equinox",
        "blackjax",
        "numpy",
        "caskade",
        "torch",
        "emcee",
        "arviz",
        "caskax",
    ):
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
        p for p in (str(ROOT), str(ROOT / "src"), env.get("PYTHONPATH", "")) if p
    )
    out = Path(tmp) / f"{peer}.json"
    log = open(Path(tmp) / f"{peer}.log", "w+")
    cmd = [
        sys.executable,
        "-m",
        "benchmarks.run",
        "--worker",
        "jax" if peer == "jax" else "caskade",
        "--mode",
        mode,
        "--json",
        str(out),
        "--parts",
        ",".join(parts),
    ]
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT, text=True)
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
        status[peer] = dict(
            status="ok", device=payload["device"], wall_s=payload["wall_s"], reused=str(path)
        )
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
    samp = {
        (r["figure"], r["model"]): r["ess_per_s"]
        for r in rows
        if r.get("peer") == "hand-blackjax" and "ess_per_s" in r
    }
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


# ---------------------------------------------------------------------------------------
# the page: benchmarks/RESULTS.md (and docs/performance.md) from the committed JSON files
PUBLISHED = {
    "cpu": ROOT / "benchmarks" / "results-cpu.json",
    "gpu": ROOT / "benchmarks" / "results-gpu.json",
    "workflows": ROOT / "benchmarks" / "results-workflows.json",
    "stack": ROOT / "benchmarks" / "stack.json",
    "batch": ROOT / "benchmarks" / "batch.json",
    # benchmarks/gpu.sh's batch step (OUT/batch/batch.json), copied here to publish it
    "batch_gpu": ROOT / "benchmarks" / "batch-gpu.json",
}
PAGE = ROOT / "benchmarks" / "RESULTS.md"
DOCS_PAGE = ROOT / "docs" / "performance.md"
IMG_DIR = ROOT / "docs" / "img" / "bench"
PEER_COLORS = {
    "hand": "#7f7f7f",
    "hand-opt": "#bcbd22",
    "caskax": "#1f77b4",
    "caskade-torch": "#d62728",
    "caskade-jax": "#ff7f0e",
    "hand-blackjax": "#7f7f7f",
    "caskade-torch+emcee": "#d62728",
    "caskade-jax+emcee": "#ff7f0e",
}
PEER_NOTES = {
    "hand": "the models as plain JAX functions of one flat vector, with the module tree's "
    "arithmetic (each image model evaluates the shared galaxy itself): caskax / hand "
    "is caskax's own overhead, the ratio in every cell",
    "hand-opt": "the same models as a JAX author would write them from scratch (shared "
    "profiles once, sources vectorised): the floor",
    "caskax": "`f = cx.compile(model)`; `jit` = `jax.jit(f)`, `direct` = `f(x)`, "
    "`jit-program-arg` = `jax.jit(lambda f, x: f(x))(f, x)` (the Program as an "
    "argument, the path that reuses compiled code for new data)",
    "caskade-torch": "caskade 1.1.5 running its tutorial's code on torch (gradients with "
    "`torch.func.grad`, Hessians with `torch.autograd.functional.hessian`, "
    "batches with `torch.vmap`)",
    "caskade-jax": "caskade 1.1.5 on its jax backend (`CASKADE_BACKEND=jax`; `jit` = "
    "`jax.jit(lambda x: L(x))`, `direct` = the eager call)",
    "hand-blackjax": "blackjax NUTS written by hand (`window_adaptation` defaults: "
    "identity start, diagonal mass matrix), compiled ahead",
    "caskade-torch+emcee": "emcee as caskade's tutorial runs it (32 walkers, start "
    "`init * (1 + 0.1 N)`, 100 burn-in, 1000 steps)",
}


def _fmt_ratio(r):
    return "" if r is None else f"{r:.2f}x"


def _cell(r):
    if r is None:
        return ""
    if "skipped" in r:
        return "skipped"
    s = fmt_time(r["median"])
    if r.get("ratio") is not None and r["peer"] != "hand":
        s += f" ({r['ratio']:.2f}x)"
    return s


def _index(rows):
    return {
        (r["figure"], r["model"], r["case"], r["param"], r["peer"]): r
        for r in rows
        if "median" in r and "ess_per_s" not in r
    }


def _span(values):
    values = sorted(v for v in values if v is not None)
    if not values:
        return "n/a"
    lo, hi = values[0], values[-1]
    return f"{lo:.2f}x" if f"{lo:.2f}" == f"{hi:.2f}" else f"{lo:.2f}x–{hi:.2f}x"


def _speedups(rows, slow_peer, cases):
    """slow_peer's median over caskax's for the same figure/model/case/param."""
    idx = _index(rows)
    out = []
    for (fig, model, case, param, peer), r in idx.items():
        if peer != slow_peer or (fig, case) not in cases:
            continue
        ref = idx.get((fig, model, case, param, "caskax"))
        if ref:
            out.append(r["median"] / ref["median"])
    return out


def _ratios(rows, figures, exclude=("jit-program-arg", "build", "compile+first")):
    return [
        r["ratio"]
        for r in rows
        if r["figure"] in figures
        and r["peer"] == "caskax"
        and r.get("ratio") is not None
        and r["case"] not in exclude
        and "ess_per_s" not in r
    ]


def _sampling_ratio(rows, figure="6-sampling"):
    by = {r["peer"]: r for r in rows if r["figure"] == figure and "ess_per_s" in r}
    if "caskax" in by and "hand-blackjax" in by:
        return by["caskax"]["ess_per_s"] / by["hand-blackjax"]["ess_per_s"]
    return None


def _meta_lines(result, what):
    meta = result["meta"]
    m = meta["machine"]
    machine = ", ".join(
        str(v)
        for v in (
            m.get("gpu"),
            m.get("cpu") and f"host CPU {m['cpu']}" if m.get("gpu") else m.get("cpu"),
            f"{m['cores']} cores",
            m.get("memory"),
            m.get("platform"),
        )
        if v
    )
    versions = ", ".join(f"{k} {v}" for k, v in meta["versions"].items() if v)
    lines = [
        f"* **Machine:** {machine}; {what}, {meta.get('dtype', 'float32')}.",
        f"* **Software:** {versions}.",
        f"* **Command:** `{meta['command']}` (mode `{meta['mode']}`).",
    ]
    for peer, st in result.get("peers", {}).items():
        if st["status"] != "ok":
            lines.append(f"* Peer `{peer}` {st['status']}: {st.get('reason', '')}".rstrip())
    lines += [f"* {n}" for n in meta.get("notes", [])]
    lines += [f"* {n}" for n in sorted({r["skipped"] for r in result["rows"] if "skipped" in r})]
    return lines


def _figure_tables(rows, title_prefix=""):
    out = []
    for fig, title in FIGURE_TITLES.items():
        frows = [r for r in rows if r["figure"] == fig and "ess_per_s" not in r]
        if not frows:
            continue
        peers = [p for p in PEER_ORDER if any(r["peer"] == p for r in frows)]
        keys = list(dict.fromkeys((r["model"], r["case"], r["param"]) for r in frows))
        idx = {(r["model"], r["case"], r["param"], r["peer"]): r for r in frows}
        head, _, detail = title.partition(" (")
        out += [f"### {title_prefix}{head}", ""]
        if detail:
            out += [detail[:-1][0].upper() + detail[:-1][1:] + ".", ""]
        out += [
            "| model | case | n | " + " | ".join(peers) + " |",
            "|---|---|---|" + "---|" * len(peers),
        ]
        for m, c, p in keys:
            cells = [_cell(idx.get((m, c, p, peer))) for peer in peers]
            out.append(f"| {m} | {c} | {'' if p is None else p} | " + " | ".join(cells) + " |")
        out.append("")
    return out


def _sampling_tables(rows, title_prefix=""):
    out = []
    for fig in ("6-sampling", "gpu-sampling"):
        srows = [r for r in rows if r["figure"] == fig]
        if not srows:
            continue
        chains = (
            max((r.get("chains") or 0) for r in srows if "skipped" not in r)
            if any("skipped" not in r for r in srows)
            else 0
        )
        title = (
            "6. Sampling likelihood3 (11 entries)"
            if fig == "6-sampling"
            else f"Sampling likelihood3 with {chains} chains"
        )
        out += [
            f"### {title_prefix}{title}",
            "",
            "| peer | chains x draws | ESS min | R-hat max | time | ESS/s | x hand-blackjax "
            "| first call |",
            "|---|---|---|---|---|---|---|---|",
        ]
        for r in srows:
            if "skipped" in r:
                out.append(f"| {r['peer']} | skipped: {r['skipped']} | | | | | | |")
                continue
            first = fmt_time(r["first_call_s"]) if r.get("first_call_s") else ""
            out.append(
                f"| {r['peer']} | {r['chains']} x {r['draws']} | {r['ess_min']:.0f} | "
                f"{r['rhat_max']:.3f} | {fmt_time(r['wall_s'])} | "
                f"{r['ess_per_s']:.1f} | {_fmt_ratio(r.get('ratio'))} | {first} |"
            )
        out.append("")
    return out


def _workflow_tables(wf):
    out = []
    s = wf.get("sampling")
    if s:
        base = {r["peer"]: r["ess_per_s"] for r in s["rows"]}
        hb, em = base.get("hand-blackjax"), base.get("caskade-torch+emcee")
        out += [
            "### Sampling, first call included",
            "",
            f"`{s['command']}`: {s['what']}. Time counts warm-up and draws; the first "
            "call adds compiling (and for `cx.nuts` its own mode fit and Laplace step).",
            "",
            "| peer | chains x (warm-up + draws) | ESS min | R-hat max | time | ESS/s "
            "| x hand-blackjax | x caskade+emcee | first call | ESS/s incl. first call |",
            "|---|---|---|---|---|---|---|---|---|---|",
        ]
        for r in s["rows"]:
            first = r.get("first_call_s")
            out.append(
                f"| {r['peer']} | {r['chains']} x ({r['warmup']} + {r['draws']}) | "
                f"{r['ess_min']:.0f} | {r['rhat_max']:.3f} | {fmt_time(r['wall_s'])} | "
                f"{r['ess_per_s']:.1f} | {_fmt_ratio(hb and r['ess_per_s'] / hb)} | "
                f"{_fmt_ratio(em and r['ess_per_s'] / em)} | "
                f"{fmt_time(first) if first else ''} | "
                f"{r['ess_min'] / first if first else float('nan'):.1f} |"
            )
        out.append("")
    f = wf.get("fit")
    if f:
        ref = f["rows"][0]["median_s"]
        out += [
            "### Fitting",
            "",
            f"`{f['command']}`: {f['what']}; median of 5 calls after the first.",
            "",
            "| method | time | x cx.fit | first call |",
            "|---|---|---|---|",
        ]
        for r in f["rows"]:
            first = fmt_time(r["first_call_s"]) if r.get("first_call_s") else ""
            out.append(
                f"| {r['method']} | {fmt_time(r['median_s'])} | "
                f"{r['median_s'] / ref:.1f}x | {first} |"
            )
        out.append("")
    e = wf.get("example")
    if e:
        out += [
            "### The worked example end to end",
            "",
            f"`{e['command']}`: {e['what']}. "
            "Process: the whole command, interpreter and imports included; script: the "
            "script's own clock after its imports.",
            "",
            "| run | process | script | sampler |",
            "|---|---|---|---|",
        ]
        for r in e["rows"]:
            out.append(
                f"| {r['run']} | {r['process_s']:.2f} s | {r['script_s']:.2f} s | {r['sampler']} |"
            )
        out.append("")
    return out


def _headlines(cpu, gpu, wf):
    rows = [
        "| | CPU (2 cores) | GPU (H200) |" if gpu else "| | CPU |",
        "|---|---|---|" if gpu else "|---|---|",
    ]

    def add(label, c, g=None):
        rows.append(f"| {label} | {c} |" + (f" {g if g is not None else '—'} |" if gpu else ""))

    cr = cpu["rows"] if cpu else []
    gr = gpu["rows"] if gpu else []
    add(
        "caskax / hand-written JAX: calls, vmap (figures 1, 3)",
        _span(_ratios(cr, ("1-call", "3-vmap"))),
        _span(_ratios(gr, ("1-call", "3-vmap", "gpu-vmap"))),
    )
    add(
        "caskax / hand-written JAX: grad, hessian (figure 2)",
        _span(_ratios(cr, ("2-deriv",))),
        _span(_ratios(gr, ("2-deriv",))),
    )
    add(
        "caskax / hand-written JAX: compile + first call (figure 4)",
        _span(_ratios(cr, ("4-compile",), exclude=("build",))),
        _span(_ratios(gr, ("4-compile",), exclude=("build",))),
    )
    call = {("1-call", "direct")}
    add("caskade-torch / caskax: one call", _span(_speedups(cr, "caskade-torch", call)))
    add(
        "caskade-torch / caskax: vmap 32, 1024",
        _span(_speedups(cr, "caskade-torch", {("3-vmap", "vmap32"), ("3-vmap", "vmap1024")})),
    )
    add(
        "caskade-torch / caskax: grad, hessian",
        _span(_speedups(cr, "caskade-torch", {("2-deriv", "grad"), ("2-deriv", "hessian")})),
    )
    sr, gs = _sampling_ratio(cr), _sampling_ratio(gr)
    g64 = _sampling_ratio(gr, "gpu-sampling")
    add(
        "`cx.nuts` ESS/s / hand-written blackjax (4 chains)",
        _fmt_ratio(sr) or "n/a",
        (_fmt_ratio(gs) + (f"; {_fmt_ratio(g64)} with 64 chains" if g64 else "")) if gs else None,
    )
    if wf and wf.get("sampling"):
        by = {r["peer"]: r["ess_per_s"] for r in wf["sampling"]["rows"]}
        if "caskax" in by and "caskade-torch+emcee" in by:
            add(
                "`cx.nuts` ESS/s / caskade + emcee (tutorial settings)",
                _fmt_ratio(by["caskax"] / by["caskade-torch+emcee"]),
            )
    if wf and wf.get("example"):
        ex = {r["run"]: r for r in wf["example"]["rows"]}
        cold, c1 = ex.get("caskax, cold cache"), ex.get("caskade-torch, 1 thread")
        if cold and c1:
            add(
                "worked example, caskax cold / caskade tutorial (process time)",
                f"{cold['process_s'] / c1['process_s']:.2f}x "
                f"({cold['process_s']:.1f} s / {c1['process_s']:.1f} s)",
            )
    return rows


def _peer_bars(result, path, title):
    """Grouped bars: each peer's median over hand's, per model and case, one panel per
    figure (1 call, 2 derivatives, 3 vmap; the GPU's large vmaps)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    idx = _index(result["rows"])
    figs = [f for f in ("1-call", "2-deriv", "3-vmap", "gpu-vmap") if any(k[0] == f for k in idx)]
    fig, axes = plt.subplots(
        1, len(figs), figsize=(4.2 * len(figs), 4.2), squeeze=False, sharey=True
    )
    lo_hi = [1.0]
    for ax, f in zip(axes[0], figs):
        keys = list(
            dict.fromkeys((m, c) for (ff, m, c, p, _) in idx if ff == f and c != "jit-program-arg")
        )
        peers = [
            p for p in PEER_ORDER if p != "hand" and any((f, m, c, None, p) in idx for m, c in keys)
        ]
        w = 0.8 / max(1, len(peers))
        for j, peer in enumerate(peers):
            xs, ys = [], []
            for i, (m, c) in enumerate(keys):
                r, h = idx.get((f, m, c, None, peer)), idx.get((f, m, c, None, "hand"))
                if r and h:
                    xs.append(i + (j - (len(peers) - 1) / 2) * w)
                    ys.append(r["median"] / h["median"])
            # bars from 1 (parity with hand) up or down to the ratio
            ax.bar(
                xs,
                [y - 1.0 for y in ys],
                bottom=1.0,
                width=w,
                color=PEER_COLORS.get(peer),
                label=peer,
            )
            if peer == "caskax":  # near 1x its bars are short: print the ratios
                for xx, yy in zip(xs, ys):
                    ax.text(
                        xx,
                        max(yy, 1.0) * 1.04,
                        f"{yy:.2f}",
                        ha="center",
                        va="bottom",
                        fontsize=7,
                        color=PEER_COLORS["caskax"],
                        rotation=90,
                    )
        ax.axhline(1.0, color="k", lw=0.8)
        ax.set_yscale("log")
        lo_hi.extend(y for b in ax.patches for y in (b.get_y(), b.get_y() + b.get_height()))
        ax.set_xticks(range(len(keys)))
        ax.set_xticklabels([f"{m.replace('likelihood', 'L')}\n{c}" for m, c in keys], fontsize=8)
        ax.set_title(FIGURE_TITLES.get(f, f).split(" (")[0], fontsize=10)
        ax.grid(axis="y", which="both", alpha=0.3)
    from matplotlib.ticker import FixedLocator, NullLocator

    lo, hi = min(0.5, min(lo_hi) / 1.3), max(2.0, max(lo_hi) * 1.3)
    ticks = [t for t in (0.1, 0.2, 0.5, 1, 2, 5, 10, 20, 50, 100, 200) if lo <= t <= hi]
    for ax in axes[0]:
        ax.set_ylim(lo, hi)
        ax.yaxis.set_major_locator(FixedLocator(ticks))
        ax.yaxis.set_minor_locator(NullLocator())
        ax.set_yticklabels([f"{t:g}x" for t in ticks])
    axes[0, 0].set_ylabel("time / hand-written JAX (log scale)")
    handles = {}
    for ax in axes[0]:
        for h, lab in zip(*ax.get_legend_handles_labels()):
            handles.setdefault(lab, h)
    fig.legend(
        handles.values(),
        handles.keys(),
        loc="lower center",
        ncol=len(handles),
        frameon=False,
        bbox_to_anchor=(0.5, 0.0),
    )
    fig.suptitle(title)
    fig.tight_layout(rect=(0, 0.07, 1, 1))
    fig.savefig(path, dpi=80)
    plt.close(fig)


def _scaling_lines(result, path, title):
    """Log-log lines of call and compile + first call time against epochs and nodes."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    idx = _index(result["rows"])
    families = [
        (f, m)
        for f, m in (
            ("5-epochs", "likelihood2-stage2"),
            ("5-epochs", "likelihood3"),
            ("5-nodes", "nodes"),
        )
        if any(k[:2] == (f, m) for k in idx)
    ]
    if not families:
        return False
    fig, axes = plt.subplots(2, len(families), figsize=(4.2 * len(families), 7), squeeze=False)
    for col, (f, m) in enumerate(families):
        for row, case in enumerate(("call", "compile+first")):
            ax = axes[row, col]
            for peer in PEER_ORDER:
                pts = sorted(
                    (k[3], r["median"])
                    for k, r in idx.items()
                    if k[:3] == (f, m, case) and k[4] == peer and k[3] is not None
                )
                if pts:
                    ax.plot(
                        *zip(*pts),
                        "o-",
                        color=PEER_COLORS.get(peer),
                        label=peer,
                        lw=2.2 if peer == "caskax" else 1.2,
                        ms=4,
                    )
            ax.set_xscale("log")
            ax.set_yscale("log")
            ax.grid(which="both", alpha=0.3)
            ax.set_xlabel("sources (nodes)" if f == "5-nodes" else "epochs")
            ax.set_ylabel(f"{case} time (s)")
            ax.set_title(m, fontsize=10)
    handles = {}
    for ax in axes.ravel():
        for h, lab in zip(*ax.get_legend_handles_labels()):
            handles.setdefault(lab, h)
    fig.legend(
        handles.values(), handles.keys(), loc="lower center", ncol=len(handles), frameon=False
    )
    fig.suptitle(title)
    fig.tight_layout(rect=(0, 0.05, 1, 1))
    fig.savefig(path, dpi=80)
    plt.close(fig)
    return True


def _sampling_bars(panels, path, title):
    """Horizontal bars of ESS per second, one panel per sampling table."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = [(name, rows) for name, rows in panels if rows]
    if not panels:
        return False
    fig, axes = plt.subplots(1, len(panels), figsize=(5.2 * len(panels), 2.8), squeeze=False)
    for ax, (name, rows) in zip(axes[0], panels):
        rows = [r for r in rows if "ess_per_s" in r][::-1]
        ys = range(len(rows))
        ax.barh(
            ys,
            [r["ess_per_s"] for r in rows],
            color=[PEER_COLORS.get(r["peer"].split(" ")[0], "#1f77b4") for r in rows],
        )
        ax.set_yticks(list(ys))
        ax.set_yticklabels([r["peer"] for r in rows], fontsize=9)
        ax.set_xscale("log")
        top = max(r["ess_per_s"] for r in rows)
        ax.set_xlim(1.0, top * 12)
        for y, r in zip(ys, rows):
            ax.text(
                r["ess_per_s"] * 1.15, y, f"{r['ess_per_s']:.0f} ESS/s", va="center", fontsize=8
            )
        ax.set_xlabel("effective samples per second (min over params; log)")
        ax.set_title(name, fontsize=10)
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)
    return True


def _device_section(result, tag, heading, img_dir, img_prefix, what, title_prefix=""):
    rows = result["rows"]
    out = [f"## {heading}", ""] + _meta_lines(result, what) + [""]
    name = f"{tag}-peers.png"
    _peer_bars(result, img_dir / name, f"{heading}: time relative to hand-written JAX")
    out += [f"![{heading}: each peer's time over hand-written JAX]({img_prefix}{name})", ""]
    name = f"{tag}-scaling.png"
    if _scaling_lines(result, img_dir / name, f"{heading}: scaling with epochs and nodes"):
        out += [f"![{heading}: scaling with epochs and with node count]({img_prefix}{name})", ""]
    return out + _figure_tables(rows, title_prefix) + _sampling_tables(rows, title_prefix)


def _stack_section(stack) -> list:
    """`benchmarks/stack.py`'s table with its machine and command."""
    if not stack:
        return []
    m, v = stack["machine"], stack["versions"]
    soft = ", ".join(f"{k} {val}" for k, val in v.items())
    return [
        "## Many components (`cx.stack`)",
        "",
        "k sources sharing one PSF width, k flux pointers to one light curve: the model "
        "built with `cx.stack`, against the same model vectorised by hand (`hand-opt`), "
        "the unrolled caskax model, and caskade on torch (its list of k modules). "
        "[Many components](../docs/many-components.md) explains the columns.",
        "",
        stack["table"],
        "",
        f"{m['cpu_count']} CPU cores ({m['processor']}), {soft}; load average "
        f"{_load_only(m.get('load', ''))}; `{stack['command']}`.",
        "",
    ]


def _batch_section(batch, gpu=None) -> list:
    """`benchmarks/batch.py`'s tables (they carry their machine and command); with
    ``gpu``, the same run on a GPU and its fits/s over the CPU run's at each shared N."""
    if not batch:
        return []
    from benchmarks import batch as batch_bench

    out = [
        "## Batch inference (`cx.batch`)",
        "",
        "One model, N datasets: `cx.fit(cx.batch(f, data=D))` against a Python loop of "
        "`cx.fit`, hand-written `jax.vmap` of optax L-BFGS, and caskade + scipy; NUTS "
        "batched against a loop. [Batch inference](../docs/batch-inference.md) explains "
        "the rows.",
        "",
        batch_bench.markdown(batch),
        "",
    ]
    if gpu:
        cpu_rate = {r["datasets"]: r["batched"]["fits_per_s"] for r in batch["rows"]}
        shared = [r for r in gpu["rows"] if r["datasets"] in cpu_rate]
        ratios = ", ".join(
            f"N = {r['datasets']}: {r['batched']['fits_per_s'] / cpu_rate[r['datasets']]:.2f}x"
            for r in shared
        )
        out += [
            "### On a GPU",
            "",
            f"`benchmarks/gpu.sh`'s batch step, on {', '.join(gpu['meta']['devices'])}.",
            "",
            batch_bench.markdown(gpu),
            "",
        ]
        if ratios:
            out += [f"cx.fit(cx.batch) fits/s on the GPU over the CPU run above: {ratios}.", ""]
    return out


def _load_only(uptime_line: str) -> str:
    return uptime_line.split("load average:")[-1].strip() if uptime_line else "?"


def render(
    cpu=None,
    gpu=None,
    workflows=None,
    img_dir=IMG_DIR,
    img_prefix="../docs/img/bench/",
    stack=None,
    batch=None,
    batch_gpu=None,
) -> str:
    """The benchmark page (Markdown) from result dicts; the figures go to ``img_dir`` and
    are linked as ``img_prefix + name``."""
    img_dir = Path(img_dir)
    img_dir.mkdir(parents=True, exist_ok=True)
    for r in (cpu, gpu):
        if r is not None:
            _add_ratios(r["rows"])
    out = (
        [
            "# caskax benchmarks",
            "",
            "<!-- generated by `python benchmarks/run.py --render-only` from "
            "benchmarks/results-*.json: rerun it rather than editing this page -->",
            "",
            "caskax against the same models written by hand in JAX, against caskade 1.1.5 "
            "(on torch and on its jax backend), and `cx.nuts` against hand-written blackjax "
            "and emcee. The models are the SN light-curve example's: `likelihood2` (five "
            "image models sharing one galaxy, the SN fluxes pointing to a light curve) and "
            "`likelihood3` (the hierarchical model, vmapped over epochs). Each timing is the "
            "median of at least 20 repeats after warm-up, with `block_until_ready`; caskax "
            "and the hand-written code run interleaved so that load hits them alike. "
            "Cells: median time (ratio to `hand`; below 1 is faster). The JSON files beside "
            "this page hold each timing's min / median / max where the run kept them.",
            "",
            "## Headlines",
            "",
        ]
        + _headlines(cpu, gpu, workflows)
        + [""]
    )
    out += ["## Peers", ""] + [f"* `{p}`: {t}" for p, t in PEER_NOTES.items()] + [""]
    if cpu is not None:
        out += _device_section(cpu, "cpu", "CPU", img_dir, img_prefix, "CPU only")
    if workflows:
        panels = [
            (
                "CPU, 4 chains (first call excluded)",
                [
                    dict(peer=r["peer"], ess_per_s=r["ess_per_s"])
                    for r in workflows.get("sampling", {}).get("rows", [])
                ],
            )
        ]
        if gpu is not None:
            for fig, label in (("6-sampling", "GPU, 4 chains"), ("gpu-sampling", "GPU, 64 chains")):
                panels.append((label, [r for r in gpu["rows"] if r["figure"] == fig]))
        if _sampling_bars(panels, img_dir / "sampling.png", "Sampling likelihood3: ESS per second"):
            out += [
                "## Inference and the worked example",
                "",
                "Same machine and software as the CPU section.",
                "",
                f"![ESS per second of each sampler]({img_prefix}sampling.png)",
                "",
            ]
        out += _workflow_tables(workflows)
    if gpu is not None:
        out += _device_section(
            gpu, "gpu", "GPU", img_dir, img_prefix, "jax on the GPU", title_prefix="GPU "
        )
    out += _stack_section(stack) + _batch_section(batch, batch_gpu)
    out += [
        "## Reproducing",
        "",
        "* `python benchmarks/run.py --torch-threads 1 --publish` runs every figure "
        "(about 7 minutes on 2 cores; `--quick`, `--tiny` for less), writes "
        "`benchmarks/results-cpu.json` (or `-gpu.json` on a GPU) and renders this page.",
        "* `bash benchmarks/gpu.sh OUT` on a GPU machine, then `python benchmarks/run.py "
        "--render-only --merge OUT/*/results.json` to publish its parts; its batch step's "
        "`batch/batch.json` (in `OUT/res.tgz`), copied to `benchmarks/batch-gpu.json`, "
        "adds the GPU rows of the `cx.batch` section.",
        "* `python benchmarks/inference.py` and `python benchmarks/example.py --rounds 3` "
        "measure the inference and worked-example tables (`results-workflows.json`).",
        "* `python benchmarks/stack.py` and `python benchmarks/batch.py` measure the "
        "`cx.stack` and `cx.batch` sections (`stack.json`, `batch.json`).",
        "* `python benchmarks/run.py --render-only` renders this page and its figures "
        "from the JSON files alone.",
        "",
    ]
    return "\n".join(out)


DOCS_HEADER = """# Performance

caskax aims at zero overhead: after `jax.jit`, a compiled Program runs as fast as the
same model written by hand as a JAX function of a flat vector. The graph pass runs in
Python once, at compile time, and the compiled code holds only the model's arithmetic
([How caskax works](how-it-works.md) explains why). The page below is
`benchmarks/RESULTS.md`, generated by `benchmarks/run.py` from the committed results.

"""


def _load_published():
    return {k: json.loads(p.read_text()) if p.exists() else None for k, p in PUBLISHED.items()}


def publish(render_to=None):
    """Render RESULTS.md, docs/performance.md and the figures from the committed JSON
    files; with ``render_to``, write all three into that folder instead."""
    data = _load_published()
    if render_to is None:
        page_path, docs_path, img_dir = PAGE, DOCS_PAGE, IMG_DIR
    else:
        render_to = Path(render_to)
        page_path, docs_path, img_dir = (
            render_to / "RESULTS.md",
            render_to / "performance.md",
            render_to / "img",
        )
    args = (data["cpu"], data["gpu"], data["workflows"], img_dir)
    more = dict(stack=data["stack"], batch=data["batch"], batch_gpu=data["batch_gpu"])
    page = render(*args, img_prefix="../docs/img/bench/", **more)
    docs = DOCS_HEADER + render(*args, img_prefix="img/bench/", **more).split("\n", 2)[2]
    # the docs page sits beside the pages the sections link to
    docs = docs.replace("](../docs/", "](")
    page_path.parent.mkdir(parents=True, exist_ok=True)
    page_path.write_text(page)
    docs_path.write_text(docs)
    return page_path, docs_path, img_dir


def _merge(paths):
    """One result from the results.json files of one run's parts (gpu.sh runs each part
    in its own process)."""
    parts = [json.loads(Path(p).read_text()) for p in paths]
    merged = dict(parts[0])
    merged["rows"] = [r for p in parts for r in p["rows"]]
    merged["meta"] = dict(
        parts[0]["meta"], command=" + ".join(dict.fromkeys(p["meta"]["command"] for p in parts))
    )
    merged["peers"] = parts[0]["peers"]
    return merged


def _store(result):
    """Keep ``result`` as the published CPU or GPU results (by its device)."""
    kind = "gpu" if _is_gpu(result) else "cpu"
    rows = [{k: v for k, v in r.items() if k != "ratio"} for r in result["rows"]]
    PUBLISHED[kind].write_text(json.dumps(dict(result, rows=rows), indent=1, default=float) + "\n")
    return PUBLISHED[kind]


def _is_gpu(result) -> bool:
    return str(result["meta"].get("device", "cpu")).startswith(("gpu", "cuda"))


def markdown(result: dict, img_dir) -> str:
    """One run's page (OUT/results.md), its figures in ``img_dir`` beside it."""
    kind = "gpu" if _is_gpu(result) else "cpu"
    return render(**{kind: result}, img_dir=img_dir, img_prefix="")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description="caskax benchmarks")
    ap.add_argument("--quick", action="store_true", help="CI smoke run (a few minutes)")
    ap.add_argument("--tiny", action="store_true", help="toy sizes: every code path, < 1 min")
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results"))
    ap.add_argument(
        "--peers", default=",".join(PEERS), help=f"comma-separated subset of {','.join(PEERS)}"
    )
    ap.add_argument(
        "--parts",
        default="core,scaling,sampling,gpu",
        help="comma-separated subset of core,scaling,sampling,gpu",
    )
    ap.add_argument("--timeout", type=float, default=1800, help="seconds per peer process")
    ap.add_argument(
        "--jobs",
        type=int,
        default=1,
        help="peer processes at a time (keep 1 for timings you report)",
    )
    ap.add_argument(
        "--torch-threads",
        type=int,
        default=None,
        help="torch.set_num_threads for the caskade-torch peer (default: torch's)",
    )
    ap.add_argument(
        "--reuse",
        action="append",
        default=[],
        metavar="PEER=FILE",
        help="take PEER's rows from a worker file kept by an earlier run "
        "(OUT/workers/PEER.json) instead of running it again",
    )
    ap.add_argument(
        "--publish",
        action="store_true",
        help="keep this run as benchmarks/results-cpu.json (-gpu.json on a GPU) "
        "and render benchmarks/RESULTS.md and docs/performance.md",
    )
    ap.add_argument(
        "--render-only",
        action="store_true",
        help="run nothing: render benchmarks/RESULTS.md, docs/performance.md and "
        "their figures from the committed benchmarks/results-*.json",
    )
    ap.add_argument(
        "--merge",
        nargs="+",
        metavar="RESULTS_JSON",
        help="with --render-only: publish these results.json files of one run's "
        "parts (benchmarks/gpu.sh) first",
    )
    ap.add_argument(
        "--render-to",
        metavar="DIR",
        help="with --render-only: write the pages and figures into DIR instead",
    )
    ap.add_argument("--worker", help=argparse.SUPPRESS)
    ap.add_argument("--mode", help=argparse.SUPPRESS)
    ap.add_argument("--json", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    parts = tuple(p for p in args.parts.split(",") if p)
    if args.worker:
        return _worker(args.worker, args.mode, args.json, parts)
    if args.render_only:
        if args.merge:
            print(f"published {_store(_merge(args.merge))}")
        for path in publish(args.render_to):
            print(f"wrote {path}")
        return 0

    mode = _mode(args)
    peers = [p for p in args.peers.split(",") if p]
    unknown = set(peers) - set(PEERS)
    if unknown:
        ap.error(f"unknown peers {sorted(unknown)}; choose from {', '.join(PEERS)}")
    t_start = time.perf_counter()
    reuse = dict(item.split("=", 1) for item in args.reuse)
    status, rows = _run_peers(
        peers,
        mode,
        parts,
        args.timeout,
        args.jobs,
        args.torch_threads,
        reuse,
        keep=Path(args.out) / "workers",
    )
    _add_ratios(rows)
    device = status.get("jax", {}).get("device", "cpu")
    result = dict(
        schema=SCHEMA_VERSION,
        meta=dict(
            mode=mode,
            date=_dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
            command=" ".join(
                ["python", "benchmarks/run.py", *(argv if argv is not None else sys.argv[1:])]
            ),
            machine=dict(cpu=_cpu_model(), cores=os.cpu_count(), platform=platform.platform()),
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
    md = markdown(result, out)
    (out / "results.md").write_text(md)
    print(md)
    print(
        f"wrote {out / 'results.json'} and {out / 'results.md'} "
        f"in {time.perf_counter() - t_start:.0f} s"
    )
    if args.publish:
        print(f"published {_store(result)}")
        for path in publish():
            print(f"wrote {path}")
    return 1 if any(s["status"] == "failed" for s in status.values()) else 0


if __name__ == "__main__":
    sys.exit(main())
