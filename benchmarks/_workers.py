"""What each benchmark process measures. `run.py` starts one process per backend and
calls one of `run_jax`, `run_caskade`; `overhead.py` calls `jax_core` directly.

Every function returns a list of rows (plain dicts, JSON-ready):
``figure, model, case, peer, param`` identify a row; ``min, median, max, n`` are
seconds and repeats; sampling rows add ``ess_min, rhat_max, wall_s, ess_per_s``.
"""

from __future__ import annotations

import math
import time

import numpy as np

from . import models as M
from ._timing import compare, once, timeit

__all__ = ["CONFIGS", "jax_core", "run_jax", "run_caskade"]

# Settings per mode. "tiny" only exercises every code path (schema test), "quick" is
# the CI smoke run, "full" is what RESULTS.md records.
CONFIGS = {
    "full": dict(
        n_pix=50,
        epochs=5,
        vmap=(32, 1024),
        repeats=20,
        budget_s=1.5,
        compile_repeats=20,
        scale_epochs=(5, 50, 500),
        scale_nodes=(1, 10, 100, 1000),
        scale_compile_repeats=3,
        scale_big=(500, 1000),
        caskade_jax_scale_max=(50, 100),
        nuts=dict(num_warmup=500, num_samples=1000, num_chains=4),
        emcee=dict(walkers=32, burn=100, steps=1000),
        gpu_vmap=(1024, 16384),
        gpu_chains=64,
    ),
    "quick": dict(
        n_pix=50,
        epochs=5,
        vmap=(32, 1024),
        repeats=20,
        budget_s=0.4,
        compile_repeats=3,
        scale_epochs=(5, 50),
        scale_nodes=(1, 10, 100),
        scale_compile_repeats=1,
        scale_big=(),
        caskade_jax_scale_max=(50, 10),
        nuts=dict(num_warmup=150, num_samples=150, num_chains=2),
        emcee=dict(walkers=32, burn=50, steps=200),
        gpu_vmap=(1024, 16384),
        gpu_chains=64,
    ),
    "tiny": dict(
        n_pix=8,
        epochs=2,
        vmap=(4,),
        repeats=3,
        budget_s=0.01,
        compile_repeats=1,
        scale_epochs=(2, 3),
        scale_nodes=(1, 2),
        scale_compile_repeats=1,
        scale_big=(),
        caskade_jax_scale_max=(3, 2),
        nuts=dict(num_warmup=10, num_samples=20, num_chains=2),
        nuts_calls=1,
        emcee=dict(walkers=32, burn=5, steps=40),
        gpu_vmap=(64, 128),
        gpu_chains=4,
    ),
}

MODELS = {
    # seed's name: (caskax builder, hand builder, caskade builder, idiomatic hand or None)
    "likelihood2": ("caskax_stage3", "hand_stage3", "caskade_stage3", "hand_stage3_opt"),
    "likelihood3": ("caskax_hier", "hand_hier", "caskade_hier", None),
}


def _row(figure, model, case, peer, stats, param=None, **extra):
    row = dict(figure=figure, model=model, case=case, peer=peer, param=param)
    row.update(stats)
    row.update(extra)
    return row


def _once_stats(samples):
    from ._timing import summary

    return summary(samples)


def _jitter(x, n, seed=0):
    rng = np.random.default_rng(seed)
    x = np.asarray(x, dtype=np.float32)
    return (x[None] * (1 + 0.01 * rng.standard_normal((n, x.shape[0])))).astype(np.float32)


# ---------------------------------------------------------------------------------------
# JAX: hand-written JAX and caskax, interleaved in one process
def jax_core(model: str, cfg: dict, log=print) -> list[dict]:
    """Figures 1-4 for one of the seed's models: caskax against the hand-written JAX
    function of the same flat vector (same order, same arithmetic: peer ``hand``) and,
    where the module tree repeats work a JAX author would not (likelihood2 evaluates the
    shared galaxy once per image), against the idiomatic hand version (``hand-opt``)."""
    import jax
    import jax.numpy as jnp

    import caskax as cx

    cx_name, hand_name, _, opt_name = MODELS[model]
    cx_build = getattr(M, cx_name)
    builders = {"hand": getattr(M, hand_name)}
    if opt_name:
        builders["hand-opt"] = getattr(M, opt_name)
    data = M.mock_data(n_epochs=cfg["epochs"], n_pix=cfg["n_pix"])
    L = cx_build(data)
    f = cx.compile(L)
    names = list(f.names)
    x = jnp.asarray(f.init)
    hands = {}
    for peer, build in builders.items():
        h, x0 = build(data, names)
        if not np.allclose(np.asarray(x), np.asarray(x0)):
            raise RuntimeError(f"{model}: caskax init {x} differs from {peer}'s start {x0}")
        a, b = float(f(x)), float(jax.jit(h)(x))
        if not math.isclose(a, b, rel_tol=1e-4):
            raise RuntimeError(f"{model}: caskax gives {a}, {peer} {b} at the start")
        hands[peer] = h

    rows = []
    kw = dict(repeats=cfg["repeats"], budget_s=cfg["budget_s"])

    def measure(figure, case, fns):
        res = compare(fns, **kw)
        for key, stats in res.items():
            peer, _, sub = key.partition(":")
            rows.append(_row(figure, model, sub or case, peer, stats))
        log(
            f"  {figure:10s} {model} {case:12s} "
            + "  ".join(f"{k}={v['median'] * 1e6:9.1f}us" for k, v in res.items())
        )
        return res

    # 1. one call: jitted, direct f(x), and the Program passed to jit as an argument
    jf = jax.jit(f)
    as_arg = jax.jit(lambda p, v: p(v))
    fns = {f"{p}:jit": (lambda jh=jax.jit(h): jh(x)) for p, h in hands.items()}
    fns.update(
        {
            "caskax:jit": lambda: jf(x),
            "caskax:direct": lambda: f(x),
            "caskax:jit-program-arg": lambda: as_arg(f, x),
        }
    )
    res = measure("1-call", "jit", fns)
    for p in hands:  # a hand-written function's direct call is its jitted call
        rows.append(_row("1-call", model, "direct", p, res[f"{p}:jit"]))
    # 2. derivatives (jitted)
    for case, tr in (("grad", jax.grad), ("hessian", jax.hessian)):
        fns = {f"{p}:{case}": (lambda th=jax.jit(tr(h)): th(x)) for p, h in hands.items()}
        tf = jax.jit(tr(f))
        fns[f"caskax:{case}"] = lambda: tf(x)
        measure("2-deriv", case, fns)
    # 3. vmap (jitted)
    for n in cfg["vmap"]:
        X = jnp.asarray(_jitter(x, n))
        fns = {f"{p}:vmap{n}": (lambda vh=jax.jit(jax.vmap(h)): vh(X)) for p, h in hands.items()}
        vf = jax.jit(jax.vmap(f))
        fns[f"caskax:vmap{n}"] = lambda: vf(X)
        measure("3-vmap", f"vmap{n}", fns)
    # 4. build, and compile + first call (a fresh trace and XLA compile each time)
    comp = {p: [] for p in [*hands, "caskax"]}
    build = {p: [] for p in comp}
    for _ in range(cfg["compile_repeats"]):
        for p, b in builders.items():
            t0 = time.perf_counter()
            h2, _ = b(data, names)
            build[p].append(time.perf_counter() - t0)
            comp[p].append(once(lambda: jax.jit(h2)(x)))
        t0 = time.perf_counter()
        L2 = cx_build(data)
        build["caskax"].append(time.perf_counter() - t0)
        comp["caskax"].append(once(lambda: cx.compile(L2)(x)))
    for peer in comp:
        rows.append(_row("4-compile", model, "compile+first", peer, _once_stats(comp[peer])))
        rows.append(_row("4-compile", model, "build", peer, _once_stats(build[peer])))
    log(
        f"  4-compile  {model} compile+first "
        + "  ".join(f"{p}={np.median(v):.3f}s" for p, v in comp.items())
    )
    return rows


def _scaling_jax(cfg, log) -> list[dict]:
    """Figure 5: call and compile time against epochs and node count."""
    import jax
    import jax.numpy as jnp

    import caskax as cx

    rows = []

    def epochs(n):
        return M.mock_data(n_epochs=n, n_pix=cfg["n_pix"])

    families = [
        (
            "5-epochs",
            "likelihood2-stage2",
            cfg["scale_epochs"],
            epochs,
            M.caskax_stage2,
            {"hand": M.hand_stage2, "hand-opt": M.hand_stage2_opt},
        ),
        (
            "5-epochs",
            "likelihood3",
            cfg["scale_epochs"],
            epochs,
            M.caskax_hier,
            {"hand": M.hand_hier},
        ),
        (
            "5-nodes",
            "nodes",
            cfg["scale_nodes"],
            lambda k: M.nodes_data(k, n_pix=min(32, cfg["n_pix"])),
            M.caskax_nodes,
            {"hand": M.hand_nodes, "hand-opt": M.hand_nodes_opt},
        ),
    ]
    for figure, model, sizes, make, cx_build, hand_builds in families:
        for n in sizes:
            data = make(n)
            reps = 1 if n in cfg["scale_big"] else cfg["scale_compile_repeats"]
            t0 = time.perf_counter()
            L = cx_build(data)
            t_build = time.perf_counter() - t0
            comp = {p: [] for p in [*hand_builds, "caskax"]}
            fns = {}
            for _ in range(reps):
                f = cx.compile(L)
                x = jnp.asarray(f.init)
                comp["caskax"].append(once(lambda: f(x)))
                fns["caskax"] = lambda f=f, x=x: f(x)
                for p, hb in hand_builds.items():
                    jh = jax.jit(hb(data, list(f.names))[0])
                    comp[p].append(once(lambda: jh(x)))
                    fns[p] = lambda jh=jh, x=x: jh(x)
            res = compare(fns, repeats=cfg["repeats"], budget_s=cfg["budget_s"])
            for peer in comp:
                rows.append(
                    _row(figure, model, "call", peer, res[peer], param=n, n_params=int(np.size(x)))
                )
                rows.append(
                    _row(figure, model, "compile+first", peer, _once_stats(comp[peer]), param=n)
                )
            rows.append(_row(figure, model, "build", "caskax", _once_stats([t_build]), param=n))
            log(
                f"  {figure} {model} n={n}: call "
                + " ".join(f"{p}={res[p]['median'] * 1e3:.3f}ms" for p in comp)
                + "; compile+first "
                + " ".join(f"{p}={np.median(comp[p]):.2f}s" for p in comp)
            )
    return rows


# ---------------------------------------------------------------------------------------
# Sampling (figure 6)
def _ess_rhat(samples):
    """samples: [chains, draws, dim] -> (min bulk ESS, max R-hat) over params."""
    import arviz as az

    s = np.asarray(samples, dtype=np.float64)
    ds = az.convert_to_dataset({"x": s})  # dims: chain, draw, x_dim_0
    ess = np.asarray(az.ess(ds, method="bulk")["x"]).ravel()
    rhat = np.asarray(az.rhat(ds)["x"]).ravel()
    return float(np.min(ess)), float(np.max(rhat))


def _sampling_row(model, peer, samples, wall, first_wall=None, **extra):
    ess, rhat = _ess_rhat(samples)
    return dict(
        figure="6-sampling",
        model=model,
        case="ess_per_s",
        peer=peer,
        param=None,
        min=wall,
        median=wall,
        max=wall,
        n=1,
        wall_s=wall,
        first_call_s=first_wall,
        ess_min=ess,
        rhat_max=rhat,
        ess_per_s=ess / wall,
        chains=int(np.shape(samples)[0]),
        draws=int(np.shape(samples)[1]),
        **extra,
    )


def hand_blackjax(logdensity, x0, key, num_warmup, num_samples, num_chains):
    """Window adaptation (blackjax defaults: diagonal mass matrix starting at identity,
    step size 1, target acceptance 0.8) then NUTS, chains vmapped; returns the compiled
    runner and its arguments so compile and run can be timed apart."""
    import blackjax
    import jax

    warmup = blackjax.window_adaptation(blackjax.nuts, logdensity)

    def one_chain(key, x):
        k_warm, k_draw = jax.random.split(key)
        (state, params), _ = warmup.run(k_warm, x, num_steps=num_warmup)
        step = blackjax.nuts(logdensity, **params).step

        def body(state, k):
            state, info = step(k, state)
            return state, (state.position, info.is_divergent)

        _, (pos, div) = jax.lax.scan(body, state, jax.random.split(k_draw, num_samples))
        return pos, div

    keys = jax.random.split(key, num_chains)
    xs = jax.numpy.broadcast_to(x0, (num_chains,) + x0.shape)
    run = jax.jit(jax.vmap(one_chain))
    return run, (keys, xs)


def _sampling_jax(cfg, log, num_chains=None, figure="6-sampling") -> list[dict]:
    import jax
    import jax.numpy as jnp

    import caskax as cx

    nuts_cfg = dict(cfg["nuts"])
    if num_chains:
        nuts_cfg["num_chains"] = num_chains
    data = M.mock_data(n_epochs=cfg["epochs"], n_pix=cfg["n_pix"])
    f = cx.compile(M.caskax_hier(data))
    h, x0 = M.hand_hier(data, list(f.names))
    rows = []

    # hand blackjax
    run, args = hand_blackjax(h, jnp.asarray(x0), jax.random.key(1), **nuts_cfg)
    t0 = time.perf_counter()
    compiled = run.lower(*args).compile()
    t_compile = time.perf_counter() - t0
    t0 = time.perf_counter()
    pos, div = compiled(*args)
    pos.block_until_ready()
    wall = time.perf_counter() - t0
    rows.append(
        dict(
            _sampling_row(
                "likelihood3",
                "hand-blackjax",
                pos,
                wall,
                first_wall=wall + t_compile,
                divergences=int(np.sum(div)),
            ),
            figure=figure,
        )
    )
    log(
        f"  {figure} hand-blackjax: ESS_min={rows[-1]['ess_min']:.0f} in {wall:.1f}s "
        f"(+{t_compile:.1f}s compile) -> {rows[-1]['ess_per_s']:.1f} ESS/s, "
        f"R-hat {rows[-1]['rhat_max']:.3f}"
    )

    # caskax's own NUTS (cx.nuts), when it exists
    nuts = getattr(cx, "nuts", None)
    if nuts is None:
        rows.append(
            dict(
                figure=figure,
                model="likelihood3",
                case="ess_per_s",
                peer="caskax",
                param=None,
                skipped="caskax.nuts is not available in this checkout",
            )
        )
        log(f"  {figure} caskax: skipped (no cx.nuts)")
        return rows
    walls, chains = [], None
    for seed in (2, 3)[: cfg.get("nuts_calls", 2)]:  # the first call traces and compiles
        t0 = time.perf_counter()
        chains = nuts(f, jax.random.key(seed), progress=False, **nuts_cfg)
        samples = np.asarray(chains.samples)
        walls.append(time.perf_counter() - t0)
    div = getattr(chains, "divergences", None)
    rows.append(
        dict(
            _sampling_row(
                "likelihood3",
                "caskax",
                samples,
                walls[-1],
                first_wall=walls[0],
                divergences=None if div is None else int(np.sum(div)),
            ),
            figure=figure,
        )
    )
    log(
        f"  {figure} caskax: ESS_min={rows[-1]['ess_min']:.0f} in {walls[-1]:.1f}s "
        f"(first call {walls[0]:.1f}s) -> {rows[-1]['ess_per_s']:.1f} ESS/s, "
        f"R-hat {rows[-1]['rhat_max']:.3f}"
    )
    return rows


def _gpu_jax(cfg, log) -> list[dict]:
    """GPU section: larger vmaps and many chains (only when a GPU is present)."""
    import jax
    import jax.numpy as jnp

    import caskax as cx

    rows = []
    data = M.mock_data(n_epochs=cfg["epochs"], n_pix=cfg["n_pix"])
    for model, (cb, hb, _, _) in MODELS.items():
        f = cx.compile(getattr(M, cb)(data))
        h, _ = getattr(M, hb)(data, list(f.names))
        x = jnp.asarray(f.init)
        for n in cfg["gpu_vmap"]:
            X = jnp.asarray(_jitter(x, n))
            vh, vf = jax.jit(jax.vmap(h)), jax.jit(jax.vmap(f))
            res = compare(
                {"hand": lambda: vh(X), "caskax": lambda: vf(X)},
                repeats=cfg["repeats"],
                budget_s=cfg["budget_s"],
            )
            for peer, stats in res.items():
                rows.append(_row("gpu-vmap", model, f"vmap{n}", peer, stats))
            log(
                f"  gpu-vmap {model} {n}: hand={res['hand']['median'] * 1e3:.3f}ms "
                f"caskax={res['caskax']['median'] * 1e3:.3f}ms"
            )
    rows += _sampling_jax(cfg, log, num_chains=cfg["gpu_chains"], figure="gpu-sampling")
    return rows


def run_jax(cfg, log=print, parts=("core", "scaling", "sampling", "gpu")) -> list[dict]:
    import jax

    rows = []
    if "core" in parts:
        for model in MODELS:
            rows += jax_core(model, cfg, log)
    if "scaling" in parts:
        rows += _scaling_jax(cfg, log)
    if "sampling" in parts:
        rows += _sampling_jax(cfg, log)
    if "gpu" in parts and jax.devices()[0].platform == "gpu":
        rows += _gpu_jax(cfg, log)
    return rows


# ---------------------------------------------------------------------------------------
# caskade (torch or jax backend: whatever this process imported)
def run_caskade(cfg, log=print, parts=("core", "scaling", "sampling")) -> list[dict]:
    import caskade as ck

    backend = ck.backend.backend
    peer = f"caskade-{backend}"
    if backend == "torch":
        import os

        import torch

        torch.manual_seed(0)
        if os.environ.get("CASKAX_BENCH_TORCH_THREADS"):
            torch.set_num_threads(int(os.environ["CASKAX_BENCH_TORCH_THREADS"]))
        as_arr = torch.as_tensor
        vmap = torch.vmap

        def grad(L):
            return torch.func.grad(L)

        def hessian(L):
            return lambda x: torch.autograd.functional.hessian(L, x, strict=True)

        def jit(fn):
            return fn
    else:
        import jax
        import jax.numpy as jnp

        as_arr = jnp.asarray
        vmap = jax.vmap

        def grad(L):
            return jax.jit(jax.grad(lambda x: L(x)))

        def hessian(L):
            return jax.jit(jax.hessian(lambda x: L(x)))

        def jit(fn):
            return jax.jit(fn)

    rows = []
    kw = dict(repeats=cfg["repeats"], budget_s=cfg["budget_s"])

    def add(figure, model, case, stats, param=None, **extra):
        rows.append(_row(figure, model, case, peer, stats, param=param, **extra))
        log(f"  {figure:10s} {model} {case:14s} {peer} n={param}: {stats['median'] * 1e3:.3f} ms")

    if "core" in parts:
        data = M.mock_data(n_epochs=cfg["epochs"], n_pix=cfg["n_pix"])
        for model, (_, _, ck_name, _) in MODELS.items():
            build = getattr(M, ck_name)
            L = build(data)
            x = L.get_values()
            # 1. call: eager (what a caskade user calls), and jitted on the jax backend
            add("1-call", model, "direct", timeit(lambda: L(x), **kw))
            if backend == "jax":
                jf = jit(lambda v: L(v))
                add("1-call", model, "jit", timeit(lambda: jf(x), **kw))
            # 2. gradient and hessian (the seed: torch.autograd.functional.hessian)
            g, hs = grad(L), hessian(L)
            add("2-deriv", model, "grad", timeit(lambda: g(x), **kw))
            add("2-deriv", model, "hessian", timeit(lambda: hs(x), **kw))
            # 3. vmap (the seed: torch.vmap)
            for n in cfg["vmap"]:
                X = as_arr(_jitter(np.asarray(x), n))
                vf = jit(vmap(L))
                add("3-vmap", model, f"vmap{n}", timeit(lambda: vf(X), **kw))
            # 4. build, and first call (compile + first call on the jax backend)
            builds, firsts = [], []
            for _ in range(cfg["compile_repeats"]):
                t0 = time.perf_counter()
                L2 = build(data)
                builds.append(time.perf_counter() - t0)
                if backend == "jax":
                    firsts.append(once(lambda: jax.jit(lambda v: L2(v))(x)))
                else:
                    firsts.append(once(lambda: L2(x)))
            add("4-compile", model, "compile+first", _once_stats(firsts))
            add("4-compile", model, "build", _once_stats(builds))

    if "scaling" in parts:
        big = cfg["caskade_jax_scale_max"] if backend == "jax" else (math.inf, math.inf)
        families = [
            (
                "5-epochs",
                "likelihood2-stage2",
                cfg["scale_epochs"],
                big[0],
                lambda n: M.mock_data(n_epochs=n, n_pix=cfg["n_pix"]),
                M.caskade_stage2,
            ),
            (
                "5-epochs",
                "likelihood3",
                cfg["scale_epochs"],
                big[0],
                lambda n: M.mock_data(n_epochs=n, n_pix=cfg["n_pix"]),
                M.caskade_hier,
            ),
            (
                "5-nodes",
                "nodes",
                cfg["scale_nodes"],
                big[1],
                lambda k: M.nodes_data(k, n_pix=min(32, cfg["n_pix"])),
                M.caskade_nodes,
            ),
        ]
        for figure, model, sizes, limit, make, build in families:
            for n in sizes:
                if n > limit:
                    rows.append(
                        dict(
                            figure=figure,
                            model=model,
                            case="call",
                            peer=peer,
                            param=n,
                            skipped=f"{peer} scaling capped at {limit} "
                            "to bound the run (its XLA compile is the cost)",
                        )
                    )
                    continue
                data = make(n)
                t0 = time.perf_counter()
                L = build(data)
                t_build = time.perf_counter() - t0
                x = L.get_values()
                fn = jit(lambda v: L(v))
                t_first = once(lambda: fn(x))
                add(
                    figure,
                    model,
                    "call",
                    timeit(lambda: fn(x), **kw),
                    param=n,
                    n_params=int(np.size(np.asarray(x))),
                )
                add(figure, model, "compile+first", _once_stats([t_first]), param=n)
                add(figure, model, "build", _once_stats([t_build]), param=n)

    if "sampling" in parts:
        rows += _emcee(cfg, backend, peer, log)
    return rows


def _emcee(cfg, backend, peer, log) -> list[dict]:
    """The seed's emcee run on likelihood3: 32 walkers, vectorised log-density, start at
    init * (1 + 0.1 N(0, 1)), burn-in, reset, production."""
    import emcee

    e = cfg["emcee"]
    data = M.mock_data(n_epochs=cfg["epochs"], n_pix=cfg["n_pix"])
    L = M.caskade_hier(data)
    params = np.asarray(L.get_values(), dtype=np.float32)
    ndim = params.shape[0]
    if backend == "torch":
        import torch

        vsim = torch.vmap(L)

        def density(x):
            return vsim(torch.as_tensor(x, dtype=torch.float32)).numpy()
    else:
        import jax
        import jax.numpy as jnp

        vsim = jax.jit(jax.vmap(lambda v: L(v)))

        def density(x):
            return np.asarray(vsim(jnp.asarray(x, dtype=jnp.float32)))

    raw_density = density

    def density(x):
        # A walker outside the model's domain (e.g. a negative sigma) gives NaN, which
        # emcee refuses; the seed's run only gets away with it by luck. -inf rejects it.
        lp = raw_density(x)
        return np.where(np.isfinite(lp), lp, -np.inf)

    rng = np.random.default_rng(0)
    start = params * (1 + 0.1 * rng.standard_normal((e["walkers"], ndim))).astype(np.float32)
    density(start)  # warm-up (compiles on the jax backend)
    sampler = emcee.EnsembleSampler(e["walkers"], ndim, density, vectorize=True)
    t0 = time.perf_counter()
    state = sampler.run_mcmc(start, e["burn"], skip_initial_state_check=True)
    sampler.reset()
    state = sampler.run_mcmc(state, e["steps"])
    wall = time.perf_counter() - t0
    chain = np.swapaxes(sampler.get_chain(), 0, 1)  # [walkers, draws, dim]
    row = _sampling_row(
        "likelihood3",
        f"{peer}+emcee",
        chain,
        wall,
        acceptance=float(np.mean(sampler.acceptance_fraction)),
    )
    log(
        f"  6-sampling {peer}+emcee: ESS_min={row['ess_min']:.0f} in {wall:.1f}s -> "
        f"{row['ess_per_s']:.1f} ESS/s, R-hat {row['rhat_max']:.3f}"
    )
    return [row]
