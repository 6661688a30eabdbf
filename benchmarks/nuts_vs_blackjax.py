"""cx.nuts against blackjax NUTS written by hand, and the warmup length of cx.nuts.

    python benchmarks/nuts_vs_blackjax.py               # full run (10-20 min on 2 cores,
                                                        # depending on their load)
    python benchmarks/nuts_vs_blackjax.py --quick       # smoke run (short chains, 1 round)
    python benchmarks/nuts_vs_blackjax.py --sweep-only  # part 2 again, part 1 kept (~5 min)
    python benchmarks/nuts_vs_blackjax.py --out F       # JSON path (default: beside this file)

**Part 1, head to head** on the tutorial's hierarchical likelihood (``likelihood3``,
11 entries, 5 epochs of 50x50 pixels; `benchmarks/models.py`), every sampler with the
same chains, warmup steps and draws, in float32 on the same Program ``f``:

* ``cx.nuts``: its defaults (fit to the mode, dense Laplace inverse mass matrix, starts
  drawn from the Laplace Gaussian, step size by dual averaging; unconstrained space).
* ``blackjax (typical)``: what a user writes from blackjax's docs: ``window_adaptation``
  (diagonal metric from the identity) from the Program's starting values, then NUTS,
  chains under ``jax.vmap``, on ``f`` as it is (constrained space).
* ``blackjax (expert)``: the same strategy as cx.nuts, written by hand with blackjax
  and optax in one jitted function: L-BFGS to the mode of the unconstrained density
  (``f(f.from_valid(u)) + f.log_det_jacobian(u)``), ``jax.hessian`` there, its inverse
  as the dense inverse mass matrix, starts ``mode + L z``, dual averaging of the step
  size (target acceptance 0.8) with the metric fixed, then the draws: the fair limit.

Each round runs each sampler in a fresh Python process (JAX's persistent compilation
cache off). ``cx.nuts`` is called twice: the first call is **cold** (tracing and
compiling included), the second, with another key, **warm**. The blackjax samplers are
compiled ahead (``jit(...).lower(...).compile()``, timed), then run once: **warm** is
that run, **cold** the compile plus the run, which is what their first call costs. Time
counts the whole call (for cx.nuts and the expert: fit, Hessian, warmup and draws).
ESS: bulk ESS of `cx.Chains.summary`, the minimum over the 11 entries; ESS/s = that /
time. Rounds interleave the samplers; the table shows medians over rounds.

**Part 2, warmup length**: ``cx.nuts`` warm at ``num_warmup`` = 100, 200, 500 on three
models: the tutorial's ``likelihood3``; ``nodes``, one 32x32 image of 20 point sources
sharing a PSF width whose fluxes follow one light curve (4 entries,
`models.caskax_nodes`); and ``gauss20``, a 20-D Gaussian with scales from 0.01 to 100
and correlations up to 0.9. The expert blackjax runs the same lengths on
``likelihood3`` (in its first head-to-head process, already compiled: its warmup
length is a run-time argument). Each setting is repeated with different keys (order rotated per
repeat); medians are reported, with R-hat, divergences and the adapted step size, and
ESS per 1000 leapfrog steps (gradient evaluations, warmup and draws), which a busy
machine does not change: ESS/s varies with the load, this does not. The blackjax
samplers count their leapfrog steps; cx.nuts reports those of its draws, and its
warmup's are estimated as warmup length x chains x the draws' mean (same metric, a
step size that settles near the final one).

The machine may be shared: the load average before and after is recorded.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
    __package__ = "benchmarks"

import numpy as np  # noqa: E402

from . import models as M  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
PEERS = ("cx.nuts", "blackjax (typical)", "blackjax (expert)")
SETTINGS = {
    "full": dict(
        chains=4,
        warmup=500,
        draws=1000,
        rounds=3,
        sweep=(100, 200, 500),
        sweep_repeats=3,
        sweep_draws=1000,
    ),
    "quick": dict(
        chains=2,
        warmup=100,
        draws=200,
        rounds=1,
        sweep=(100, 200),
        sweep_repeats=1,
        sweep_draws=200,
    ),
    "tiny": dict(
        chains=2, warmup=20, draws=40, rounds=1, sweep=(20, 40), sweep_repeats=1, sweep_draws=40
    ),  # every code path, for checking the script
}


# ---------------------------------------------------------------------------------------
# models
def load() -> str:
    """The 1, 5 and 15 minute load averages."""
    return "load average: " + ", ".join(f"{v:.2f}" for v in os.getloadavg())


def gauss20():
    """A 20-D Gaussian log-density with scales 0.01..100 and an AR(1) correlation of 0.9
    (a plain function of a flat vector) and its start."""
    import jax.numpy as jnp

    n = 20
    scales = np.logspace(-2, 2, n)
    idx = np.arange(n)
    corr = 0.9 ** np.abs(idx[:, None] - idx[None, :])
    prec = np.linalg.inv(corr * np.outer(scales, scales)).astype(np.float32)
    mean = np.linspace(-1, 1, n).astype(np.float32)
    prec_j, mean_j = jnp.asarray(prec), jnp.asarray(mean)

    def logp(x):
        d = x - mean_j
        return -0.5 * d @ prec_j @ d

    return logp, mean + scales.astype(np.float32) * 0.5


def build(model):
    """``(f, x0)``: a caskax Program (or plain function) and the start given to samplers."""
    import caskax as cx

    if model == "likelihood3":
        f = cx.compile(M.caskax_hier(M.mock_data()))
        return f, np.asarray(f.init)
    if model == "nodes":
        f = cx.compile(M.caskax_nodes(M.nodes_data(20)))
        return f, np.asarray(f.init)
    if model == "gauss20":
        return gauss20()
    raise ValueError(model)


def _ess(samples, f=None):
    """(min bulk ESS, max R-hat) from cx.Chains.summary."""
    import caskax as cx

    s = np.asarray(samples)
    layout = (
        None
        if f is not None and hasattr(f, "names")
        else tuple((f"x[{i}]", ()) for i in range(s.shape[-1]))
    )
    rows = cx.Chains.from_arrays(s, layout=layout, f=f if layout is None else None).summary().rows
    return (
        float(min(r["ess_bulk"] for r in rows.values())),
        float(max(r["r_hat"] for r in rows.values())),
    )


# ---------------------------------------------------------------------------------------
# samplers: each factory returns a Sampler; run(key, warmup) -> (samples [C, D, n], extra)
class Sampler:
    """``run(key, warmup)``; ``compile(key, warmup)`` (blackjax peers) compiles ahead
    and returns the seconds it took, so that a cold call splits into compile + run."""

    def __init__(self, run, compile=None):
        self.run, self.compile = run, compile


def sampler_cx(f, x0, chains, draws):
    import caskax as cx

    def run(key, warmup):
        c = cx.nuts(
            f,
            key,
            x0=None if hasattr(f, "names") else x0,
            num_warmup=warmup,
            num_samples=draws,
            num_chains=chains,
            progress=False,
        )
        steps = np.asarray(c.num_steps, np.float64)
        # leapfrog steps: counted for the draws; for the warmup (same metric, its step
        # size settling near the final one) estimated as warmup x the draws' mean
        return np.asarray(c.samples), dict(
            divergences=int(np.sum(c.divergences)),
            step_size=float(np.median(c.step_size)),
            leapfrog_draws=float(steps.sum()),
            leapfrog_warmup=float(warmup * chains * steps.mean()),
            leapfrog_warmup_estimated=True,
        )

    return Sampler(run)


def _aot(fn, static=()):
    """A jitted ``fn`` whose compiled executables are kept per static argument, with a
    timed ``compile``."""
    import jax

    jitted = jax.jit(fn, static_argnums=static)
    compiled = {}

    def compile(*args):
        t0 = time.perf_counter()
        compiled[tuple(args[i] for i in static)] = jitted.lower(*args).compile()
        return time.perf_counter() - t0

    def call(*args):
        exe = compiled.get(tuple(args[i] for i in static))
        if exe is None:
            return jitted(*args)
        return exe(*(a for i, a in enumerate(args) if i not in static))

    return call, compile


def sampler_typical(f, x0, chains, draws):
    """blackjax as its docs show it: window adaptation from one point, diagonal metric,
    on ``f`` itself (constrained space), chains under ``jax.vmap``."""
    import blackjax
    import jax
    import jax.numpy as jnp

    def sample(keys, starts, warmup):
        adapt = blackjax.window_adaptation(blackjax.nuts, f)

        def one_chain(key, x):
            k_warm, k_draw = jax.random.split(key)
            (state, params), _ = adapt.run(k_warm, x, num_steps=warmup)
            kernel = blackjax.nuts(f, **params)

            def step(state, k):
                state, info = kernel.step(k, state)
                return state, (state.position, info.is_divergent)

            _, (xs, div) = jax.lax.scan(step, state, jax.random.split(k_draw, draws))
            return xs, div, params["step_size"]

        return jax.vmap(one_chain)(keys, starts)

    call, compile_ = _aot(sample, static=(2,))
    starts = jnp.broadcast_to(jnp.asarray(x0), (chains, len(x0)))

    def run(key, warmup):
        xs, div, eps = call(jax.random.split(key, chains), starts, warmup)
        return np.asarray(xs), dict(divergences=int(np.sum(div)), step_size=float(np.median(eps)))

    return Sampler(run, lambda key, warmup: compile_(jax.random.split(key, chains), starts, warmup))


def sampler_expert(f, x0, chains, draws):
    """cx.nuts's strategy by hand: L-BFGS to the mode, Laplace dense metric, starts from
    the Laplace Gaussian, dual averaging of the step size (the warmup length is a
    run-time argument: one compile for every length), then draws; one jitted function."""
    import blackjax
    import blackjax.adaptation.step_size as bss
    import jax
    import jax.numpy as jnp
    import optax
    from optax import tree_utils as otu

    if hasattr(f, "from_valid"):

        def logdensity(u):
            return f(f.from_valid(u)) + f.log_det_jacobian(u)

        to_x, u0 = f.from_valid, f.to_valid(jnp.asarray(x0))
    else:
        logdensity, to_x, u0 = f, (lambda u: u), jnp.asarray(x0)

    def mode_of(u0, maxiter=1000, tol=1e-6):
        loss = lambda u: -logdensity(u)  # noqa: E731
        opt = optax.lbfgs()
        value_and_grad = optax.value_and_grad_from_state(loss)

        def step(carry):
            u, state = carry
            value, grad = value_and_grad(u, state=state)
            updates, state = opt.update(grad, state, u, value=value, grad=grad, value_fn=loss)
            return optax.apply_updates(u, updates), state

        def more(carry):
            _, state = carry
            count, grad = otu.tree_get(state, "count"), otu.tree_get(state, "grad")
            return (count == 0) | ((count < maxiter) & (otu.tree_norm(grad) >= tol))

        return jax.lax.while_loop(more, step, (u0, opt.init(u0)))[0]

    da_init, da_update, da_final = bss.dual_averaging_adaptation(0.8)

    def one_chain(key, z, imm, warmup):
        k_warm, k_draw = jax.random.split(key)

        def adapt(i, carry):
            state, da, n = carry
            kernel = blackjax.nuts(logdensity, jnp.exp(da.log_step_size), imm)
            state, info = kernel.step(jax.random.fold_in(k_warm, i), state)
            return state, da_update(da, info.acceptance_rate), n + info.num_integration_steps

        carry = (
            blackjax.nuts.init(z, logdensity),
            da_init(jnp.ones((), z.dtype)),
            jnp.zeros((), jnp.int32),
        )
        state, da, n_warm = jax.lax.fori_loop(0, warmup, adapt, carry)
        eps = da_final(da)
        kernel = blackjax.nuts(logdensity, eps, imm)

        def step(state, k):
            state, info = kernel.step(k, state)
            return state, (to_x(state.position), info.is_divergent, info.num_integration_steps)

        _, (xs, div, n) = jax.lax.scan(step, state, jax.random.split(k_draw, draws))
        return xs, div, eps, n_warm, jnp.sum(n)

    def sample(key, u0, warmup):
        mode = mode_of(u0)
        cov = jnp.linalg.inv(-jax.hessian(logdensity)(mode))
        cov = 0.5 * (cov + cov.T)
        k_start, k_chains = jax.random.split(key)
        normals = jax.random.normal(k_start, (chains, mode.size), mode.dtype)
        z = mode + normals @ jnp.linalg.cholesky(cov).T
        keys = jax.random.split(k_chains, chains)
        return jax.vmap(one_chain, in_axes=(0, 0, None, None))(keys, z, cov, warmup)

    call, compile_ = _aot(sample)

    def compile(key, warmup):
        return compile_(key, u0, jnp.int32(warmup))

    def run(key, warmup):
        xs, div, eps, n_warm, n_draw = call(key, u0, jnp.int32(warmup))
        return np.asarray(xs), dict(
            divergences=int(np.sum(div)),
            step_size=float(np.median(eps)),
            leapfrog_draws=float(np.sum(n_draw)),
            leapfrog_warmup=float(np.sum(n_warm)),
            leapfrog_warmup_estimated=False,
        )

    return Sampler(run, compile)


SAMPLERS = {
    "cx.nuts": sampler_cx,
    "blackjax (typical)": sampler_typical,
    "blackjax (expert)": sampler_expert,
}


# ---------------------------------------------------------------------------------------
# workers (one fresh process each)
def _timed(run, key, warmup):
    t0 = time.perf_counter()
    xs, extra = run(key, warmup)
    return time.perf_counter() - t0, xs, extra


def worker_peer(peer, seed, cfg, sweep=False, head=True):
    """One sampler on likelihood3 in a fresh process, cold then warm. cx.nuts: a first
    call (cold) and a second with another key (warm). blackjax peers: compiled ahead
    (timed), then one run: warm = the run, cold = compile + run."""
    import jax

    f, x0 = build("likelihood3")
    sampler = SAMPLERS[peer](f, x0, cfg["chains"], cfg["draws"])
    warmup = cfg["warmup"]
    rows = []

    def row(kind, key, wall, xs, extra, **more):
        ess, rhat = _ess(xs, f)
        rows.append(
            dict(
                part="head-to-head",
                model="likelihood3",
                peer=peer,
                call=kind,
                seed=key,
                chains=cfg["chains"],
                warmup=warmup,
                draws=cfg["draws"],
                wall_s=wall,
                ess_min=ess,
                rhat_max=rhat,
                ess_per_s=ess / wall,
                **extra,
                **more,
            )
        )
        print(
            f"  {peer:20s} {kind}: {wall:6.2f} s  ESS min {ess:7.0f}  ESS/s {ess / wall:7.1f}  "
            f"R-hat {rhat:.3f}  div {extra['divergences']}",
            flush=True,
        )

    if not head:
        sampler.run(jax.random.key(999), min(cfg["sweep"]))  # compile, not timed
    elif sampler.compile is None:
        for kind, key in (("cold", 2 * seed), ("warm", 2 * seed + 1)):
            row(kind, key, *_timed(sampler.run, jax.random.key(key), warmup))
    else:
        key = jax.random.key(2 * seed + 1)
        t_compile = sampler.compile(key, warmup)
        wall, xs, extra = _timed(sampler.run, key, warmup)
        row("cold", 2 * seed + 1, wall + t_compile, xs, extra, compile_s=t_compile)
        row("warm", 2 * seed + 1, wall, xs, extra)
    if sweep:  # the same compiled sampler: the warmup length is a run-time argument
        assert cfg["sweep_draws"] == cfg["draws"]
        rows += sweep_runs(sampler, peer, "likelihood3", f, cfg)
    return rows


def sweep_runs(sampler, peer, model, f, cfg):
    """Warm runs of ``sampler`` at each warmup length, ``sweep_repeats`` times (another
    key per repeat, the order of lengths rotated)."""
    import jax

    rows = []
    order = list(cfg["sweep"])
    for rep in range(cfg["sweep_repeats"]):
        for w in order[rep % len(order) :] + order[: rep % len(order)]:
            wall, xs, extra = _timed(sampler.run, jax.random.key(100 + rep), w)
            ess, rhat = _ess(xs, f if hasattr(f, "names") else None)
            leapfrog = extra["leapfrog_warmup"] + extra["leapfrog_draws"]
            rows.append(
                dict(
                    part="warmup",
                    model=model,
                    peer=peer,
                    num_warmup=w,
                    repeat=rep,
                    chains=cfg["chains"],
                    draws=cfg["sweep_draws"],
                    wall_s=wall,
                    ess_min=ess,
                    rhat_max=rhat,
                    ess_per_s=ess / wall,
                    ess_per_1k_leapfrog=1000 * ess / leapfrog,
                    **extra,
                )
            )
            print(
                f"  {peer:18s} {model:11s} warmup {w:4d}: {wall:6.2f} s  ESS min {ess:7.0f}  "
                f"ESS/s {ess / wall:7.1f}  ESS/1k leapfrog {1000 * ess / leapfrog:6.1f}  "
                f"R-hat {rhat:.3f}  div {extra['divergences']}  eps {extra['step_size']:.3g}",
                flush=True,
            )
    return rows


def worker_sweep(cfg):
    """cx.nuts at each warmup length on every model, warm (the expert's sweep runs in
    its first head-to-head process, which has compiled it already)."""
    import jax

    rows = []
    for model in ("likelihood3", "nodes", "gauss20"):
        f, x0 = build(model)
        sampler = SAMPLERS["cx.nuts"](f, x0, cfg["chains"], cfg["sweep_draws"])
        sampler.run(jax.random.key(999), min(cfg["sweep"]))  # compile, not timed
        rows += sweep_runs(sampler, "cx.nuts", model, f, cfg)
    return rows


# ---------------------------------------------------------------------------------------
# driver
def _spawn(args, mode, tmp_json):
    env = {k: v for k, v in os.environ.items() if not k.startswith("JAX_")}
    env["JAX_ENABLE_X64"] = "0"
    env["PYTHONPATH"] = os.pathsep.join(
        p for p in (str(ROOT), str(ROOT / "src"), env.get("PYTHONPATH", "")) if p
    )
    cmd = [
        sys.executable,
        "-m",
        "benchmarks.nuts_vs_blackjax",
        "--mode",
        mode,
        "--json",
        str(tmp_json),
        *args,
    ]
    proc = subprocess.run(cmd, cwd=ROOT, env=env)
    if proc.returncode != 0:
        raise RuntimeError(f"worker {args} failed with exit code {proc.returncode}")
    return json.loads(Path(tmp_json).read_text())


def _median(rows, key):
    return statistics.median(r[key] for r in rows)


def aggregate(rows):
    head = {}
    for peer in PEERS:
        for call in ("cold", "warm"):
            sel = [
                r
                for r in rows
                if r["part"] == "head-to-head" and r["peer"] == peer and r["call"] == call
            ]
            if sel:
                head.setdefault(peer, {})[call] = dict(
                    n=len(sel),
                    wall_s=_median(sel, "wall_s"),
                    ess_min=_median(sel, "ess_min"),
                    ess_per_s=_median(sel, "ess_per_s"),
                    rhat_max=max(r["rhat_max"] for r in sel),
                    divergences=_median(sel, "divergences"),
                )
    sweep = {}
    for r in rows:
        if r["part"] == "warmup":
            sweep.setdefault((r["peer"], r["model"], r["num_warmup"]), []).append(r)
    sweep_out = [
        dict(
            peer=p,
            model=m,
            num_warmup=w,
            n=len(sel),
            wall_s=_median(sel, "wall_s"),
            ess_min=_median(sel, "ess_min"),
            ess_per_s=_median(sel, "ess_per_s"),
            rhat_max=max(r["rhat_max"] for r in sel),
            divergences=_median(sel, "divergences"),
            step_size=_median(sel, "step_size"),
            ess_per_1k_leapfrog=(
                _median(sel, "ess_per_1k_leapfrog")
                if all("ess_per_1k_leapfrog" in r for r in sel)
                else None
            ),
            leapfrog_per_draw=(
                _median(sel, "leapfrog_draws") / (r0["chains"] * r0["draws"])
                if "leapfrog_draws" in (r0 := sel[0])
                else None
            ),
        )
        for (p, m, w), sel in sorted(sweep.items())
    ]
    return head, sweep_out


def _f(v, width, digits):
    return f"{v:{width}.{digits}f}" if v is not None else " " * (width - 1) + "-"


def table(result) -> str:
    head, sweep, s = result["head_to_head"], result["warmup_sweep"], result["settings"]
    meta = result["meta"]
    out = [
        f"Head to head on likelihood3: {s['chains']} chains x ({s['warmup']} warmup + "
        f"{s['draws']} draws), medians of {s['rounds']} rounds ({meta['load_before']} "
        f"before, {meta['load_after']} after)",
        "",
        f"{'sampler':20s} | {'warm s':>7s} | {'ESS min':>7s} | {'ESS/s':>7s} | {'x typical':>9s} "
        f"| {'x expert':>8s} | {'cold s':>7s} | {'ESS/s cold':>10s} | {'x expert':>8s}",
    ]
    ref_t = head.get("blackjax (typical)", {}).get("warm", {}).get("ess_per_s")
    ref_e = head.get("blackjax (expert)", {}).get("warm", {}).get("ess_per_s")
    ref_ec = head.get("blackjax (expert)", {}).get("cold", {}).get("ess_per_s")
    for peer in PEERS:
        if peer not in head:
            continue
        w, c = head[peer]["warm"], head[peer]["cold"]
        out.append(
            f"{peer:20s} | {w['wall_s']:7.2f} | {w['ess_min']:7.0f} | {w['ess_per_s']:7.1f} "
            f"| {w['ess_per_s'] / ref_t:8.2f}x | {w['ess_per_s'] / ref_e:7.2f}x "
            f"| {c['wall_s']:7.2f} | {c['ess_per_s']:10.1f} | {c['ess_per_s'] / ref_ec:7.2f}x"
        )
    load = meta.get("part2", meta)
    out += [
        "",
        f"Warmup length (warm calls, {s['chains']} chains x {s['sweep_draws']} draws, medians "
        f"of {s['sweep_repeats']}; {load['load_before']} before, {load['load_after']} after). "
        "lf: leapfrog steps, warmup and draws",
        "",
        f"{'sampler':18s} | {'model':11s} | {'warmup':>6s} | {'time s':>6s} | {'ESS min':>7s} "
        f"| {'ESS/s':>7s} | {'ESS/1k lf':>9s} | {'lf/draw':>7s} | {'R-hat':>5s} | {'div':>4s} "
        f"| {'step':>6s}",
    ]
    for r in sweep:
        out.append(
            f"{r['peer']:18s} | {r['model']:11s} | {r['num_warmup']:6d} | {r['wall_s']:6.2f} "
            f"| {r['ess_min']:7.0f} | {r['ess_per_s']:7.1f} | {_f(r['ess_per_1k_leapfrog'], 9, 1)} "
            f"| {_f(r['leapfrog_per_draw'], 7, 2)} | {r['rhat_max']:5.3f} "
            f"| {r['divergences']:4.0f} | {r['step_size']:6.3g}"
        )
    return "\n".join(out)


def sweep_only(args, argv, mode, cfg, t_start, before) -> int:
    """Part 2 again (cx.nuts's sweep, then the expert's in a process of its own); the
    head-to-head rows of the JSON at ``--out`` are kept."""
    import tempfile

    result = json.loads(Path(args.out).read_text())
    if result["meta"]["mode"] != mode:
        raise SystemExit(f"{args.out} holds a {result['meta']['mode']!r} run, not {mode!r}")
    with tempfile.TemporaryDirectory() as tmp:
        print("[warmup lengths]", flush=True)
        rows = _spawn(["--sweep"], mode, Path(tmp) / "s.json")
        rows += _spawn(
            ["--peer", "blackjax (expert)", "--sweep", "--sweep-only"], mode, Path(tmp) / "e.json"
        )
    rows = [r for r in result["rows"] if r["part"] != "warmup"] + rows
    head, sweep = aggregate(rows)
    result.update(rows=rows, head_to_head=head, warmup_sweep=sweep)
    result["meta"]["part2"] = dict(
        command=" ".join(
            [
                "python",
                "benchmarks/nuts_vs_blackjax.py",
                *(argv if argv is not None else sys.argv[1:]),
            ]
        ),
        load_before=before,
        load_after=load(),
        wall_s=time.perf_counter() - t_start,
    )
    text = table(result)
    result["table"] = text
    Path(args.out).write_text(json.dumps(result, indent=1) + "\n")
    print()
    print(text)
    print(f"\nwrote {args.out} (part 2: {time.perf_counter() - t_start:.0f} s)")
    return 0


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="smoke run: short chains, one round")
    ap.add_argument("--tiny", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument(
        "--sweep-only",
        action="store_true",
        help="rerun part 2 only, replacing its rows in the JSON at --out",
    )
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "nuts_vs_blackjax.json"))
    ap.add_argument("--mode", help=argparse.SUPPRESS)
    ap.add_argument("--json", help=argparse.SUPPRESS)
    ap.add_argument("--peer", help=argparse.SUPPRESS)
    ap.add_argument("--seed", type=int, default=0, help=argparse.SUPPRESS)
    ap.add_argument("--sweep", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.json:  # a worker
        cfg = SETTINGS[args.mode]
        if args.sweep and not args.peer:
            rows = worker_sweep(cfg)
        else:
            rows = worker_peer(
                args.peer, args.seed, cfg, sweep=args.sweep, head=not args.sweep_only
            )
        Path(args.json).write_text(json.dumps(rows))
        return 0

    import tempfile

    mode = "tiny" if args.tiny else "quick" if args.quick else "full"
    cfg = SETTINGS[mode]
    t_start = time.perf_counter()
    before = load()
    rows = []
    if args.sweep_only:
        return sweep_only(args, argv, mode, cfg, t_start, before)
    with tempfile.TemporaryDirectory() as tmp:
        for rnd in range(cfg["rounds"]):
            peers = PEERS[rnd % 3 :] + PEERS[: rnd % 3]
            for peer in peers:
                print(f"[round {rnd + 1}/{cfg['rounds']}] {peer}", flush=True)
                extra = ["--sweep"] if rnd == 0 and peer == "blackjax (expert)" else []
                rows += _spawn(
                    ["--peer", peer, "--seed", str(rnd), *extra], mode, Path(tmp) / "w.json"
                )
        print("[warmup lengths]", flush=True)
        rows += _spawn(["--sweep"], mode, Path(tmp) / "s.json")
    after = load()
    head, sweep = aggregate(rows)
    from .run import _cpu_model, _versions

    result = dict(
        meta=dict(
            command=" ".join(
                [
                    "python",
                    "benchmarks/nuts_vs_blackjax.py",
                    *(argv if argv is not None else sys.argv[1:]),
                ]
            ),
            mode=mode,
            machine=f"{_cpu_model()}, {os.cpu_count()} cores, {platform.platform()}",
            versions=_versions(),
            load_before=before,
            load_after=after,
            wall_s=time.perf_counter() - t_start,
        ),
        settings=dict(cfg, sweep=list(cfg["sweep"])),
        head_to_head=head,
        warmup_sweep=sweep,
        rows=rows,
    )
    text = table(result)
    result["table"] = text
    Path(args.out).write_text(json.dumps(result, indent=1) + "\n")
    print()
    print(text)
    print(f"\nwrote {args.out} ({result['meta']['wall_s']:.0f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
