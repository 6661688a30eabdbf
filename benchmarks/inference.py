"""Inference speed, side by side (issue 4 "Speed", issue 7 figure 6).

    python benchmarks/inference.py                 # full run (~3 min on 2 cores)
    python benchmarks/inference.py --quick         # smoke run (shorter chains, < 2 min)
    python benchmarks/inference.py --out DIR       # where inference.json / .md go

Two parts, each peer in its own process, one after another on the same machine:

* **Sampling** the seed's hierarchical likelihood3 (11 dynamic entries), 4 chains x
  (500 warm-up + 1000 draws): ``cx.nuts`` with its defaults, hand-written blackjax NUTS
  (``window_adaptation`` defaults: identity start, diagonal mass matrix) and caskade
  (torch) + emcee exactly as the seed's tutorial runs it (32 walkers, 100 burn-in,
  reset, 1000 steps). ESS: arviz bulk ESS, min over params (emcee: walkers as chains);
  ESS/s counts warm-up (burn-in) and draws, not compilation; the first call (with
  compile, and for ``cx.nuts`` its own mode fit and Laplace step) is reported too.
  The sampling code is `benchmarks/_workers.py`'s (`_sampling_jax`, `_emcee`), the
  same that `run.py` records as figure 6.
* **Fitting** the stage-3 joint likelihood (likelihood2 with light-curve pointers, 11
  entries) from one start (the init jittered by 5 %, as the tutorial starts its fits):
  ``cx.fit`` (L-BFGS, defaults), ``scipy.optimize.minimize(method="L-BFGS-B")`` on the
  caskax Program (``jax.jit(jax.value_and_grad(f))`` as ``fun`` with ``jac=True``) and
  the same scipy call on the caskade model (torch, gradient by torch autograd). Wall
  time (first call and the median of repeats), final log-likelihood (each method's own
  and caskax's ``f`` at every final x, float32), function evaluations.

caskade-torch runs with ``torch.set_num_threads(1)`` (``--torch-threads``), as
`run.py`'s recorded run does: on this shared 2-core machine torch's OpenMP pool stalls.
"""

from __future__ import annotations

import argparse
import datetime as _dt
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

import numpy as np  # noqa: E402

from . import models as M  # noqa: E402
from ._timing import fmt_time, summary, uptime, write_outputs  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent

# Per mode: the sampling settings are run.py's (`_workers.CONFIGS`); fits repeat this often.
FIT = {"full": dict(repeats=5), "quick": dict(repeats=2), "tiny": dict(repeats=1)}
FIT_JITTER = 0.05  # the tutorial starts every fit at init * (1 + 0.05 N(0, 1))
FIT_SEED = 0


def fit_start() -> np.ndarray:
    """The common start of every fit, in the stage-3 order (SN0.x0, light curve, galaxy),
    which caskax's Program and caskade's ``get_values`` share (checked in each worker)."""
    init = M._init_values(M.stage3_names())
    rng = np.random.default_rng(FIT_SEED)
    return (init * (1 + FIT_JITTER * rng.standard_normal(init.shape))).astype(np.float32)


def _timed_fits(fn, repeats):
    """First call (compile included where there is one), then ``repeats`` timed calls;
    returns (first seconds, summary of the rest, the last result)."""
    t0 = time.perf_counter()
    out = fn()
    first = time.perf_counter() - t0
    walls = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        out = fn()
        walls.append(time.perf_counter() - t0)
    return first, summary(walls), out


def _fit_row(peer, first, stats, x, loglike, nfev, nit, **extra):
    return dict(
        part="fit",
        model="likelihood2-stage3",
        peer=peer,
        first_call_s=first,
        **stats,
        x=[float(v) for v in x],
        loglike=float(loglike),
        nfev=None if nfev is None else int(nfev),
        nit=None if nit is None else int(nit),
        **extra,
    )


# ---------------------------------------------------------------------------------------
# workers
def _jax_worker(mode, log=print) -> tuple[list, str]:
    import jax
    import jax.numpy as jnp
    from scipy.optimize import minimize

    import caskax as cx

    from ._workers import CONFIGS, _sampling_jax

    cfg = CONFIGS[mode]
    device = f"{jax.devices()[0].platform}: {jax.devices()[0].device_kind}"
    rows = []

    # -- fits (stage 3) ------------------------------------------------------------------
    data = M.mock_data(n_epochs=cfg["epochs"], n_pix=cfg["n_pix"])
    f = cx.compile(M.caskax_stage3(data))
    if list(f.names) != M.stage3_names():
        raise RuntimeError(f"stage-3 Program order {f.names} is not {M.stage3_names()}")
    if not np.allclose(np.asarray(f.init), M._init_values(M.stage3_names())):
        raise RuntimeError("stage-3 Program init differs from the benchmark's init values")
    xs = jnp.asarray(fit_start())
    reps = FIT[mode]["repeats"]

    first, stats, res = _timed_fits(lambda: jax.block_until_ready(cx.fit(f, xs)), reps)
    # evaluations: one more (untimed) run of the same fit with a host-side counter
    count = [0]

    def tick(_):
        count[0] += 1

    def counted(x):
        v = f(x)
        jax.debug.callback(tick, v)
        return v

    res_c = cx.fit(counted, xs)
    jax.block_until_ready(res_c)
    # The counted run is a plain function closing over f, not the Program passed to jit:
    # its constants fold differently, so in float32 its path near the optimum (and its
    # iteration count) can differ from the timed run's; both are recorded.
    rows.append(
        _fit_row(
            "cx.fit (L-BFGS)",
            first,
            stats,
            np.asarray(res.x),
            res.value,
            count[0],
            int(res.steps),
            converged=bool(res.converged),
            grad_norm=float(res.grad_norm),
            counted_run_steps=int(res_c.steps),
            counted_run_loglike=float(res_c.value),
            note="nfev: forward evaluations counted in a separate untimed run "
            "of cx.fit on lambda x: f(x) with jax.debug.callback",
        )
    )
    log(
        f"  fit cx.fit: median {stats['median']:.3f}s (first {first:.2f}s) "
        f"logL={float(res.value):.3f} steps={int(res.steps)} evals={count[0]}"
    )

    vg = jax.jit(jax.value_and_grad(f))

    def fun(x):
        v, g = vg(jnp.asarray(x, dtype=jnp.float32))
        return -float(v), -np.asarray(g, dtype=np.float64)

    def scipy_fit():
        return minimize(fun, np.asarray(xs, dtype=np.float64), jac=True, method="L-BFGS-B")

    first, stats, sres = _timed_fits(scipy_fit, reps)
    rows.append(
        _fit_row(
            "scipy L-BFGS-B + caskax (jax.value_and_grad)",
            first,
            stats,
            sres.x,
            -sres.fun,
            sres.nfev,
            sres.nit,
            converged=bool(sres.success),
            message=str(sres.message),
        )
    )
    log(
        f"  fit scipy+caskax: median {stats['median']:.3f}s (first {first:.2f}s) "
        f"logL={-sres.fun:.3f} nfev={sres.nfev} ({sres.message})"
    )

    # -- sampling (likelihood3): run.py's figure-6 code ---------------------------------
    rows += [dict(r, part="sampling") for r in _sampling_jax(cfg, log)]
    return rows, device


def _caskade_worker(mode, torch_threads, log=print) -> tuple[list, str]:
    import torch
    from scipy.optimize import minimize

    from ._workers import CONFIGS, _emcee

    if torch_threads:
        torch.set_num_threads(torch_threads)
    torch.manual_seed(0)
    cfg = CONFIGS[mode]
    rows = []

    # -- fit (stage 3), as a caskade user: scipy + torch autograd ------------------------
    data = M.mock_data(n_epochs=cfg["epochs"], n_pix=cfg["n_pix"])
    L = M.caskade_stage3(data)
    if not np.allclose(L.get_values().numpy(), M._init_values(M.stage3_names())):
        raise RuntimeError("caskade stage-3 init is not in the benchmark's order")
    xs = fit_start()

    def fun(x):
        xt = torch.tensor(x, dtype=torch.float32, requires_grad=True)
        v = L(xt)
        (g,) = torch.autograd.grad(v, xt)
        return -float(v.detach()), -g.numpy().astype(np.float64)

    def scipy_fit():
        return minimize(fun, xs.astype(np.float64), jac=True, method="L-BFGS-B")

    first, stats, sres = _timed_fits(scipy_fit, FIT[mode]["repeats"])
    rows.append(
        _fit_row(
            "scipy L-BFGS-B + caskade-torch (autograd)",
            first,
            stats,
            sres.x,
            -sres.fun,
            sres.nfev,
            sres.nit,
            converged=bool(sres.success),
            message=str(sres.message),
        )
    )
    log(
        f"  fit scipy+caskade-torch: median {stats['median']:.3f}s (first {first:.2f}s) "
        f"logL={-sres.fun:.3f} nfev={sres.nfev} ({sres.message})"
    )

    # -- sampling: the seed's emcee run (run.py's code) ----------------------------------
    for r in _emcee(cfg, "torch", "caskade-torch", log):
        r = dict(r, part="sampling")
        r["first_call_s"] = r["wall_s"]  # nothing to compile
        rows.append(r)
    return rows, f"cpu (torch {torch.__version__}, {torch.get_num_threads()} threads)"


def _worker_main(kind, mode, json_path, torch_threads) -> int:
    t0 = time.perf_counter()
    if kind == "jax":
        rows, device = _jax_worker(mode)
    else:
        rows, device = _caskade_worker(mode, torch_threads)
    Path(json_path).write_text(
        json.dumps(dict(rows=rows, device=device, wall_s=time.perf_counter() - t0), default=float)
    )
    return 0


# ---------------------------------------------------------------------------------------
# driver
def _run_worker(kind, mode, tmp, timeout, torch_threads):
    env = dict(os.environ)
    env["CASKADE_BACKEND"] = "torch" if kind == "caskade" else "jax"
    env["PYTHONPATH"] = os.pathsep.join(
        p for p in (str(ROOT), str(ROOT / "src"), env.get("PYTHONPATH", "")) if p
    )
    out = Path(tmp) / f"{kind}.json"
    cmd = [
        sys.executable,
        "-m",
        "benchmarks.inference",
        "--worker",
        kind,
        "--mode",
        mode,
        "--json",
        str(out),
        "--torch-threads",
        str(torch_threads),
    ]
    print(f"[{kind}] running ({mode})", flush=True)
    t0 = time.perf_counter()
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
    except subprocess.TimeoutExpired as err:
        text = err.stdout or ""
        print(text if isinstance(text, str) else text.decode(), flush=True)
        return dict(status="failed", reason=f"timed out after {timeout:.0f} s"), []
    print(proc.stdout, end="", flush=True)
    wall = time.perf_counter() - t0
    if proc.returncode != 0 or not out.exists():
        return dict(
            status="failed", reason="\n".join(proc.stdout.strip().splitlines()[-15:]), wall_s=wall
        ), []
    payload = json.loads(out.read_text())
    return dict(
        status="ok", device=payload["device"], wall_s=payload["wall_s"], process_wall_s=wall
    ), payload["rows"]


def _cross_loglike(rows, mode):
    """caskax's f (float32) at every fit's final x: one yardstick for all three."""
    import jax.numpy as jnp

    import caskax as cx

    from ._workers import CONFIGS

    cfg = CONFIGS[mode]
    f = cx.compile(M.caskax_stage3(M.mock_data(n_epochs=cfg["epochs"], n_pix=cfg["n_pix"])))
    start = float(f(jnp.asarray(fit_start())))
    for r in rows:
        if r.get("part") == "fit":
            r["loglike_caskax_f"] = float(f(jnp.asarray(r["x"], dtype=jnp.float32)))
    return start


def markdown(result) -> str:
    meta, rows = result["meta"], result["rows"]
    out = [
        f"Mode `{meta['mode']}`, {meta['date']}, `{meta['command']}`",
        "",
        f"Machine: {meta['machine']}; torch threads for caskade: {meta['torch_threads']}.",
        f"Load before: `{meta['uptime_before']}`; after: `{meta['uptime_after']}`.",
        "",
    ]
    for peer, st in result["workers"].items():
        if st["status"] != "ok":
            out.append(f"* worker `{peer}` {st['status']}: {st.get('reason', '')}")
    samp = [r for r in rows if r.get("part") == "sampling" and "ess_per_s" in r]
    if samp:
        base = {r["peer"]: r["ess_per_s"] for r in samp}
        hb, em = base.get("hand-blackjax"), base.get("caskade-torch+emcee")
        out += [
            "### Sampling likelihood3 (11 entries)",
            "",
            "ESS: arviz bulk, min over params (emcee: walkers as chains). Time: warm-up "
            "(burn-in) + draws, compile excluded (cx.nuts: its second call, which "
            "includes its mode fit and Laplace step but no compile). First call: "
            "compile included.",
            "",
            "| peer | chains x (warm-up + draws) | ESS min | R-hat max | divergences "
            "| time | ESS/s | x hand-blackjax | x caskade+emcee | first call "
            "| ESS/s incl. first call |",
            "|---|---|---|---|---|---|---|---|---|---|---|",
        ]
        for r in samp:
            first = r.get("first_call_s")
            div = r.get("divergences")
            rh = f"{r['ess_per_s'] / hb:.2f}x" if hb else ""
            re_ = f"{r['ess_per_s'] / em:.2f}x" if em else ""
            out.append(
                f"| {r['peer']} | {r['chains']} x ({r.get('warmup')} + {r['draws']}) "
                f"| {r['ess_min']:.0f} | {r['rhat_max']:.3f} | {'' if div is None else div} "
                f"| {fmt_time(r['wall_s'])} | {r['ess_per_s']:.1f} | {rh} | {re_} "
                f"| {fmt_time(first) if first else ''} "
                f"| {(r['ess_min'] / first) if first else float('nan'):.1f} |"
            )
        out.append("")
    for r in rows:
        if r.get("part") == "sampling" and "skipped" in r:
            out.append(f"* {r['peer']}: skipped: {r['skipped']}")
    fits = [r for r in rows if r.get("part") == "fit"]
    if fits:
        ref = next((r["median"] for r in fits if r["peer"].startswith("cx.fit")), None)
        out += [
            "### Fitting the stage-3 joint likelihood (likelihood2 + light-curve pointers, "
            "11 entries)",
            "",
            f"Same start for all: init x (1 + {FIT_JITTER} N(0,1)), seed {FIT_SEED}; "
            f"log-likelihood there (caskax f): {meta.get('fit_start_loglike', float('nan')):.3f}. "
            "Wall: median of repeats (min-max), after a first call (compile included). "
            "logL: each method's own final value; `caskax f(x)`: caskax's float32 "
            "likelihood at each final x. nfev: scipy's count (value+gradient "
            "evaluations); cx.fit: forward evaluations counted in an untimed run.",
            "",
            "| method | wall median (min-max, n) | x cx.fit | first call | logL (own) "
            "| caskax f(x) | nfev | iterations | converged |",
            "|---|---|---|---|---|---|---|---|---|",
        ]
        for r in fits:
            ratio = f"{r['median'] / ref:.1f}x" if ref else ""
            nfev = r["nfev"]
            if r.get("counted_run_steps") is not None:
                nfev = (
                    f"{nfev} (in the counted run, {r['counted_run_steps']} iterations, "
                    f"logL {r['counted_run_loglike']:.3f})"
                )
            conv = str(r.get("converged"))
            if r.get("message"):
                conv += f" ({r['message']})"
            out.append(
                f"| {r['peer']} | {fmt_time(r['median'])} ({fmt_time(r['min'])}-"
                f"{fmt_time(r['max'])}, {r['n']}) | {ratio} | {fmt_time(r['first_call_s'])} | "
                f"{r['loglike']:.3f} | {r.get('loglike_caskax_f', float('nan')):.3f} | "
                f"{nfev} | {r['nit']} | {conv} |"
            )
        out.append("")
    return "\n".join(out) + "\n"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(
        description="inference speed: cx.nuts / blackjax / emcee, cx.fit / scipy L-BFGS-B (issue 4)"
    )
    ap.add_argument("--quick", action="store_true", help="smoke run: short chains, 2 repeats")
    ap.add_argument("--tiny", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results"))
    ap.add_argument(
        "--torch-threads",
        type=int,
        default=1,
        help="torch.set_num_threads for caskade (0: torch's default)",
    )
    ap.add_argument("--timeout", type=float, default=600, help="seconds per worker process")
    ap.add_argument("--worker", help=argparse.SUPPRESS)
    ap.add_argument("--mode", help=argparse.SUPPRESS)
    ap.add_argument("--json", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.worker:
        return _worker_main(args.worker, args.mode, args.json, args.torch_threads)

    mode = "tiny" if args.tiny else "quick" if args.quick else "full"
    t_start = time.perf_counter()
    before = uptime()
    print(f"uptime before: {before}", flush=True)
    workers, rows = {}, []
    with tempfile.TemporaryDirectory() as tmp:
        for kind, name in (("jax", "jax"), ("caskade", "caskade-torch")):
            workers[name], got = _run_worker(kind, mode, tmp, args.timeout, args.torch_threads)
            rows += got
    after = uptime()
    print(f"uptime after: {after}", flush=True)
    start_ll = _cross_loglike(rows, mode)
    # warm-up length per sampling row (for the table)
    from ._workers import CONFIGS

    cfg = CONFIGS[mode]
    for r in rows:
        if r.get("part") == "sampling" and "ess_per_s" in r:
            r["warmup"] = (
                cfg["emcee"]["burn"] if "emcee" in r["peer"] else cfg["nuts"]["num_warmup"]
            )
    from .run import _cpu_model, _versions

    result = dict(
        meta=dict(
            mode=mode,
            date=_dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
            command=" ".join(
                ["python", "benchmarks/inference.py", *(argv if argv is not None else sys.argv[1:])]
            ),
            machine=f"{_cpu_model()}, {os.cpu_count()} cores, {platform.platform()}",
            versions=_versions(),
            torch_threads=args.torch_threads,
            uptime_before=before,
            uptime_after=after,
            fit_start_loglike=start_ll,
            wall_s=time.perf_counter() - t_start,
        ),
        workers=workers,
        rows=rows,
    )
    write_outputs(args.out, "inference", mode, result, markdown, t_start)
    return 1 if any(w["status"] != "ok" for w in workers.values()) else 0


if __name__ == "__main__":
    sys.exit(main())
