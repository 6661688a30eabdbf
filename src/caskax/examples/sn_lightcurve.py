"""The SN light-curve study (caskade's worked example) in caskax.

Run ``python -m caskax.examples.sn_lightcurve [--out DIR] [--quick] [--seed N]
[--num-chains K] [--float64]`` (or the console script ``caskax-sn-lightcurve``).

0. mock data: a static galaxy plus a supernova whose flux follows a Gaussian light
   curve through a function pointer of a ``time`` param, 5 noisy 50x50 epochs;
1. each image fitted alone (``cx.fit`` + ``cx.laplace``);
2. one joint likelihood: five image models share one galaxy node, the SN positions
   point to the first image's;
3. the SN fluxes become function pointers to one light-curve module;
4. the hierarchical model: one image model vmapped over epochs with a live flux param,
   sampled with ``cx.nuts``.
Each stage prints a table and its wall time; figures and ``results.json`` go to ``--out``.
"""

import argparse
import json
import os
import shutil
import sys
import time


class _Defaults(argparse.RawDescriptionHelpFormatter):
    """Help text with each option's default, where it has one."""

    def _get_help_string(self, action):
        text = action.help or ""
        if action.default not in (None, False, argparse.SUPPRESS) and "%(default)" not in text:
            text += " (default: %(default)r)" if action.default == "" else " (default: %(default)s)"
        return text


def _parse(argv):
    p = argparse.ArgumentParser(
        prog="caskax-sn-lightcurve", description=__doc__.split("\n\n")[0], formatter_class=_Defaults
    )
    p.add_argument("--out", default="sn_lightcurve_out", help="folder for figures and results.json")
    p.add_argument(
        "--quick", action="store_true", help="fewer NUTS steps and 2 chains (CI smoke run)"
    )
    p.add_argument("--seed", type=int, default=1123, help="seed of the mock data and the sampler")
    p.add_argument("--num-chains", type=int, default=None, help="NUTS chains (default 4, quick 2)")
    p.add_argument(
        "--num-warmup",
        type=int,
        default=None,
        help="NUTS warmup steps per chain (default 200, quick 100): the Laplace "
        "metric leaves only the step size to adapt",
    )
    p.add_argument(
        "--num-samples",
        type=int,
        default=None,
        help="NUTS draws per chain (default 1000, quick 200)",
    )
    p.add_argument("--float64", action="store_true", help="run in double precision")
    p.add_argument("--no-figures", action="store_true", help="skip the figures (numbers only)")
    p.add_argument(
        "--cache-dir",
        default=os.path.join(os.path.expanduser("~"), ".cache", "caskax-jax"),
        help="JAX's persistent compilation cache (XLA compiling dominates a cold "
        "run); '' disables it",
    )
    return p.parse_args(argv)


class _Clock:
    def __init__(self):
        self.t = time.perf_counter()

    def lap(self):
        now = time.perf_counter()
        dt, self.t = now - self.t, now
        return dt


def _row(label, value, sigma, truth):
    sig = "" if sigma is None else f" ± {sigma:.3f}"
    tru = "" if truth is None else f" vs {truth:.3f} (true)"
    return f"  {label:<22s} {value: .3f}{sig}{tru}"


def _host_devices(num_chains):
    """Ask JAX for one CPU device per chain, up to ``max(4, cores)`` devices (a divisor
    of ``num_chains``), so that the chains can be sharded over the cores. One chain per
    device beats two vmapped chains per device even with two devices per core: the
    runner traces and compiles without batching NUTS's while loops (stage 4 of a cold
    run: 5.5 s against 6.3 s on 2 cores, ``benchmarks/nuts_first_call.py``), and no
    chain waits for the longest tree of its batch. Only possible before JAX's backends
    start; afterwards (``main`` called from a notebook or a test) the devices stay as
    they are."""
    import jax

    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    most = max(4, cores or 1)
    n = max(d for d in range(1, min(most, num_chains) + 1) if num_chains % d == 0)
    if n > 1:
        try:
            jax.config.update("jax_num_cpu_devices", n)
        except RuntimeError:
            pass


def _chain_method(jax, num_chains):
    """``"sharded"`` over the host's CPU devices when there are several and the chains
    divide evenly; ``"vectorized"`` otherwise (and on a GPU)."""
    n = len(jax.devices())
    cpu = jax.default_backend() == "cpu"
    return "sharded" if cpu and n > 1 and num_chains % n == 0 else "vectorized"


def main(argv=None):
    args = _parse(sys.argv[1:] if argv is None else argv)
    import jax

    _host_devices(args.num_chains or (2 if args.quick else 4))
    if args.float64:
        jax.config.update("jax_enable_x64", True)
    if args.cache_dir:
        # An application setting, not a library one: reruns load compiled code from disk,
        # all of it (reading even a 0.1 s compile back is faster: warm 10.3-12.1 s with
        # a 0.2 s threshold, 9.3-9.5 s without, --no-figures)
        jax.config.update("jax_compilation_cache_dir", args.cache_dir)
        jax.config.update("jax_persistent_cache_min_compile_time_secs", 0)
    import jax.numpy as jnp
    import numpy as np

    import caskax as cx
    from caskax.examples import stages
    from caskax.infer._jit import run_once_jit

    os.makedirs(args.out, exist_ok=True)
    chains_n = args.num_chains or (2 if args.quick else 4)
    warmup, draws = (100, 200) if args.quick else (200, 1000)
    warmup = warmup if args.num_warmup is None else args.num_warmup
    draws = draws if args.num_samples is None else args.num_samples
    total = _Clock()
    clock = _Clock()
    results = {
        "config": {
            "quick": args.quick,
            "seed": args.seed,
            "num_chains": chains_n,
            "num_warmup": warmup,
            "num_samples": draws,
            "float64": args.float64,
            "device": str(jax.devices()[0]),
        }
    }
    truth = stages.TRUTH

    # -- 0. mock data ---------------------------------------------------------------
    data = stages.mock_data(seed=args.seed)
    times = np.asarray(data.times)
    true_flux = np.asarray(data.true_flux)
    sim = cx.compile(stages.true_simulator(data.x, data.y))
    print(
        f"caskax SN light-curve study: {len(times)} epochs of {data.images.shape[1]}x"
        f"{data.images.shape[2]} px, device {jax.devices()[0]}"
    )
    print(f"[0] mock data made in {clock.lap():.2f} s")
    results["truth"] = {
        "times": times.tolist(),
        "flux": true_flux.tolist(),
        "t0": truth.t0,
        "sigma": truth.lc_sigma,
        "peak_flux": truth.peak_flux,
    }
    rng = np.random.default_rng(args.seed)

    def jitter(x):
        # start away from the truth, as the tutorial does (5% multiplicative noise);
        # numpy, so that the starts cost no compile
        noise = rng.standard_normal(x.shape)
        return jax.device_put((np.asarray(x) * (1 + 0.05 * noise)).astype(x.dtype))

    # -- 1. each image alone ----------------------------------------------------------
    print("[1] each image fitted alone (L-BFGS + Laplace)")

    # run once per stage, for the figures: at -O0 these compile in about half the time
    @run_once_jit
    def model_and_residuals(f, x):
        # f is a Program (a pytree): new data reuse this compiled function
        filled = f.unflatten(x)
        return filled.model(), filled.residuals()[0]

    s1_flux, s1_sigma, s1_fits = [], [], []
    like1 = stages.stage1_model(data, 0)
    images = np.asarray(data.images)
    for i in range(len(times)):
        # same structure, new data (the tutorial's `likelihood.data = data[i]`), so
        # fit, Laplace and the image function compile once for all epochs
        f = cx.compile(like1.set("data", jax.device_put(images[i])))
        fit = cx.fit(f, jitter(f.init))
        k = f.names.index("SN.flux")
        try:
            sigma = float(np.asarray(cx.laplace(f, fit.x).sigma)[k])
        except cx.CaskaxError:  # a faint epoch can leave the SN unconstrained
            sigma = float("nan")
        s1_flux.append(float(np.asarray(fit.x)[k]))
        s1_sigma.append(sigma)
        s1_fits.append((f, fit.x))
        print(_row(f"flux t={times[i]:.2f}", s1_flux[-1], sigma, true_flux[i]))
    t1 = clock.lap()
    print(f"    stage 1: {t1:.2f} s")
    results["stage1"] = {"flux": s1_flux, "sigma": s1_sigma, "seconds": t1}

    # -- 2. joint model --------------------------------------------------------------------
    print("[2] joint model: shared galaxy, linked SN positions")
    like2 = stages.stage2_model(data)
    f2 = cx.compile(like2)
    fit2 = cx.fit(f2, jitter(f2.init))
    lap2 = cx.laplace(f2, fit2.x)
    idx = [f2.names.index(f"SN{i}.flux") for i in range(len(times))]
    s2_flux = [float(np.asarray(fit2.x)[k]) for k in idx]
    s2_sigma = [float(np.asarray(lap2.sigma)[k]) for k in idx]
    for i in range(len(times)):
        print(_row(f"flux t={times[i]:.2f}", s2_flux[i], s2_sigma[i], true_flux[i]))
    t2 = clock.lap()
    print(f"    stage 2: {t2:.2f} s")
    results["stage2"] = {
        "flux": s2_flux,
        "sigma": s2_sigma,
        "seconds": t2,
        "converged": bool(fit2.converged),
        "steps": int(fit2.steps),
    }

    # -- 3. light-curve function pointers -------------------------------------------------
    print("[3] SN fluxes as function pointers to a light-curve module")
    like3 = stages.stage3_model(data)
    f3 = cx.compile(like3)
    fit3 = cx.fit(f3, jitter(f3.init))
    lc_names = ["lightcurve.t0", "lightcurve.sigma", "lightcurve.peak_flux"]
    lap3 = cx.laplace(f3, fit3.x, subset=lc_names)
    lc_idx = [f3.names.index(n) for n in lc_names]
    x3 = np.asarray(fit3.x)
    s3 = {
        n.split(".")[1]: (float(x3[k]), float(s))
        for n, k, s in zip(lc_names, lc_idx, np.asarray(lap3.sigma))
    }
    for label, tru in (("t0", truth.t0), ("sigma", truth.lc_sigma), ("peak_flux", truth.peak_flux)):
        v, s = s3[label]
        print(f"  {label}: {v:.3f} ± {s:.3f} vs {tru:.2f} (true)")
    t3 = clock.lap()
    print(f"    stage 3: {t3:.2f} s")
    results["stage3"] = {k: {"value": v, "sigma": s} for k, (v, s) in s3.items()}
    results["stage3"].update(
        seconds=t3, cov=np.asarray(lap3.cov).tolist(), converged=bool(fit3.converged)
    )

    # -- 4. hierarchical model + NUTS --------------------------------------------------------
    method = _chain_method(jax, chains_n)
    where = f", sharded over {len(jax.devices())} CPU devices" if method == "sharded" else ""
    print(
        f"[4] hierarchical model (vmap over epochs, live flux), NUTS {chains_n} chains "
        f"x ({warmup} warmup + {draws} draws{where})"
    )
    like4 = stages.hierarchical_model(data)
    f4 = cx.compile(like4)
    # cx.nuts fits to the mode itself and seeds the mass matrix from the Laplace covariance
    # chains sharded over CPU devices (one chain each, see _host_devices) where there are several
    chains = cx.nuts(
        f4,
        jax.random.key(args.seed),
        num_warmup=warmup,
        num_samples=draws,
        num_chains=chains_n,
        progress=True,
        chain_method=method,
    )
    t4 = clock.lap()
    summary = chains.summary()
    print(summary)
    post = chains.by_name()
    s4 = {}
    for label, name, tru in (
        ("t0", "lightcurve.t0", truth.t0),
        ("sigma", "lightcurve.sigma", truth.lc_sigma),
        ("peak_flux", "lightcurve.peak_flux", truth.peak_flux),
    ):
        samples = np.asarray(post[name]).ravel()
        s4[label] = (float(samples.mean()), float(samples.std()))
    print(
        f"    stage 4: {t4:.2f} s (mode + Laplace + warmup + sampling), divergences: "
        f"{int(np.sum(np.asarray(chains.divergences)))}"
    )
    rhat = max(row["r_hat"] for row in summary.rows.values())
    ess = min(row["ess_bulk"] for row in summary.rows.values())
    results["stage4"] = {k: {"mean": m, "sd": s} for k, (m, s) in s4.items()}
    results["stage4"].update(
        seconds=t4,
        max_rhat=rhat,
        min_ess_bulk=ess,
        chain_method=method,
        divergences=int(np.sum(np.asarray(chains.divergences))),
    )

    # -- comparison ------------------------------------------------------------------------------
    print("\nlight curve recovered (stage 3 Laplace | stage 4 NUTS | truth)")
    for label, tru in (("t0", truth.t0), ("sigma", truth.lc_sigma), ("peak_flux", truth.peak_flux)):
        (v3, e3), (v4, e4) = s3[label], s4[label]
        print(f"  {label:<10s} {v3: .3f} ± {e3:.3f} | {v4: .3f} ± {e4:.3f} | {tru: .3f}")

    if not args.no_figures:
        # the fitted images, only for the figures (their compile is wasted otherwise)
        s1_models, s1_resid = (
            np.stack(a)
            for a in zip(*([np.asarray(v) for v in model_and_residuals(f, x)] for f, x in s1_fits))
        )
        s2_models, s2_resid = (np.asarray(a) for a in model_and_residuals(f2, fit2.x))
        s3_models, s3_resid = (np.asarray(a) for a in model_and_residuals(f3, fit3.x))
        _figures(
            args.out,
            cx,
            jax,
            jnp,
            np,
            data,
            sim,
            times,
            true_flux,
            truth,
            (s1_flux, s1_sigma, s1_models, s1_resid),
            (s2_flux, s2_sigma, s2_models, s2_resid),
            (fit3, lap3, lc_idx, s3_models, s3_resid, like3),
            (chains, post),
        )
        print(f"figures written to {args.out}/ in {clock.lap():.2f} s")
    results["total_seconds"] = total.lap()
    with open(os.path.join(args.out, "results.json.tmp"), "w") as fh:
        json.dump(results, fh, indent=2)
    os.replace(os.path.join(args.out, "results.json.tmp"), os.path.join(args.out, "results.json"))
    print(f"total wall time: {results['total_seconds']:.1f} s")
    return results


def _figures(out, cx, jax, jnp, np, data, sim, times, true_flux, truth, s1, s2, s3, s4):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    # animation of the simulator over 64 times: sim([t]) as in the tutorial
    grid = jnp.linspace(0.0, 6.0, 64)
    frames = np.asarray(jax.vmap(lambda t: sim(t[None]))(grid))
    anim = cx.plot.animate(
        frames,
        np.asarray(grid),
        vmin=0.0,
        vmax=1.5,
        label="brightness",
        time_label="t",
        saveto=os.path.join(out, "simulator.gif"),
        fps=15,
        dpi=70,
    )
    plt.close(anim._fig)

    images = np.asarray(data.images)
    stages_ = (
        ("stage1", "Stage 1: each image fitted alone", s1[2], s1[3]),
        ("stage2", "Stage 2: joint model, one galaxy, linked SN positions", s2[2], s2[3]),
        ("stage3", "Stage 3: SN fluxes from one light curve", s3[3], s3[4]),
    )
    for label, title, models, resid in stages_:
        fig = cx.plot.images(
            images,
            np.asarray(models),
            np.asarray(resid),
            suptitle=title,
            titles=[f"t = {t:.2f}" for t in times],
            label="brightness",
            residual_label="(data − model)/σ",
        )
        fig.savefig(os.path.join(out, f"fit_{label}.png"), dpi=90)
        plt.close(fig)

    like3 = s3[5]
    if shutil.which("dot"):
        like3.graphviz(saveto=os.path.join(out, "graph_stage3.png"))
    else:
        print(
            "graphviz's `dot` program was not found, so graph_stage3.png is drawn with "
            "matplotlib; for graphviz's drawing install it (apt-get install graphviz, "
            "brew install graphviz or conda install -c conda-forge graphviz)",
            file=sys.stderr,
        )
        fig = cx.plot.graph(like3)
        fig.savefig(os.path.join(out, "graph_stage3.png"), dpi=90)
        plt.close(fig)

    fit3, lap3, lc_idx = s3[0], s3[1], s3[2]
    t0, sig, peak = (float(np.asarray(fit3.x)[k]) for k in lc_idx)
    tt = np.linspace(0, 6, 200)
    chains, post = s4
    t0s = np.asarray(post["lightcurve.t0"]).ravel()
    sis = np.asarray(post["lightcurve.sigma"]).ravel()
    pks = np.asarray(post["lightcurve.peak_flux"]).ravel()
    pick = np.random.default_rng(0).choice(t0s.size, size=min(400, t0s.size), replace=False)
    curves = pks[pick, None] * np.exp(-(((tt[None] + t0s[pick, None]) / sis[pick, None]) ** 2))
    # stage-3 band from the Laplace covariance by drawing curves
    draws = np.random.default_rng(1).multivariate_normal([t0, sig, peak], np.asarray(lap3.cov), 400)
    curves3 = draws[:, 2:3] * np.exp(-(((tt[None] + draws[:, 0:1]) / draws[:, 1:2]) ** 2))
    truth_curve = truth.peak_flux * np.exp(-(((tt + truth.t0) / truth.lc_sigma) ** 2))
    fig = cx.plot.lightcurve(tt, curves, truth=truth_curve, label="stage 4 NUTS")
    ax = fig.axes[0]
    lo, hi = np.percentile(curves3, [16, 84], axis=0)
    ax.fill_between(tt, lo, hi, color="tab:orange", alpha=0.3, label="stage 3 Laplace 1σ")
    ax.errorbar(
        times - 0.06,
        s1[0],
        yerr=np.nan_to_num(s1[1]),
        fmt="o",
        color="C2",
        capsize=2,
        label="stage 1 fits",
    )
    ax.errorbar(
        times + 0.06, s2[0], yerr=s2[1], fmt="s", color="C4", capsize=2, label="stage 2 joint"
    )
    ax.plot(times, true_flux, "k*", ms=9, label="true flux")
    ax.set_ylim(-0.05, 0.4)
    ax.set_title("SN light curve: each stage's estimate against the truth")
    ax.legend(fontsize=8, ncols=2, loc="upper left", frameon=False)
    fig.savefig(os.path.join(out, "lightcurve.png"), dpi=100)
    plt.close(fig)

    fig = cx.plot.ellipse(
        np.array([sig, peak]),
        np.asarray(lap3.cov)[1:, 1:],
        truth=(truth.lc_sigma, truth.peak_flux),
        names=["lightcurve.sigma", "lightcurve.peak_flux"],
    )
    fig.axes[0].set_title("Stage 3 Laplace approximation")
    fig.savefig(os.path.join(out, "laplace_sigma_peak.png"), dpi=100)
    plt.close(fig)

    g = truth.galaxy
    truths = (
        list(truth.sn_x0)
        + list(g["x0"])
        + [g["q"], g["phi"], g["sigma"], g["flux"], truth.t0, truth.lc_sigma, truth.peak_flux]
    )
    fig = cx.plot.corner(chains, truth=truths)
    fig.savefig(os.path.join(out, "corner_stage4.png"), dpi=80)
    plt.close(fig)
    fig = cx.plot.trace(chains, truth=truths)
    fig.savefig(os.path.join(out, "trace_stage4.png"), dpi=80)
    plt.close(fig)


if __name__ == "__main__":
    main()
