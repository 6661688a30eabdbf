"""Many components: the figure-5b model built with `cx.stack` against hand-vectorised JAX
and the unrolled caskax model.

The model (`benchmarks.models.nodes_data`): one 32x32 image of k point sources that
share one PSF width and read their fluxes through k function pointers to one light
curve at each source's time. Three peers, measured side by side in one process:

* ``stacked``: k `Gaussian` sources (each ``sigma`` a link to one shared width param,
  each ``flux`` a pointer to the light curve) stacked with ``cx.stack`` into one
  source module, which the image model maps over with ``cx.stack_map`` and sums;
* ``hand-opt``: `benchmarks.models.hand_nodes_opt`, the model written vectorised by
  hand as a JAX function of the same flat vector (the floor);
* ``unrolled``: `benchmarks.models.caskax_nodes`, the same model as a list of k
  sources (source 0 holds the width, the others link to it), up to ``--max-unrolled``.

Per k: building the k member modules and stacking them (Python); compile + first call
(``cx.compile`` + the first ``f(x)`` for caskax, ``jax.jit`` + first call for hand-opt;
the persistent compilation cache is off); then jitted call, ``jax.grad`` and (at one k)
``jax.hessian``, the peers interleaved in rounds (`benchmarks._timing.compare`).

    python benchmarks/stack.py                 # k = 10, 100, 1000, 10000 (~2 min on 2 cores)
    python benchmarks/stack.py --quick         # k = 10, 100
    python benchmarks/stack.py --k 1000 --max-unrolled 0

Writes ``benchmarks/stack.json`` (``--out`` to change) and prints a table.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
    __package__ = "benchmarks"

import numpy as np  # noqa: E402

from . import models as M  # noqa: E402
from ._timing import compare, fmt_time, once, uptime  # noqa: E402

TARGET_COMPILE_S = {1000: 1.0, 10000: 3.0}
TARGET_CALL_RATIO = 1.2
ROUNDS = 10  # interleaved rounds per timing: bursts of load on a shared machine hit all peers


def build_stacked(data):
    """The figure-5b likelihood with its k sources stacked: returns (likelihood,
    seconds to build the k members, seconds to stack them)."""
    import jax
    import jax.numpy as jnp

    import caskax as cx
    from caskax.examples.models import Gaussian, Gaussian1D, Likelihood

    class Sky(cx.Module):
        """An image of many sources of one class: one stacked module, mapped and summed."""

        x: jax.Array
        y: jax.Array
        sources: Gaussian

        def __init__(self, name, x, y, sources):
            super().__init__(name)
            self.x, self.y = jnp.asarray(x), jnp.asarray(y)
            self.sources = sources

        @cx.forward
        def __call__(self):
            images = cx.stack_map(self.sources, lambda s: s.brightness(self.x, self.y))
            return images.sum(axis=0)

    t0 = time.perf_counter()
    lc = Gaussian1D(
        "lightcurve", t0=M.TRUTH["t0"], sigma=M.LC_SIGMA0, peak_flux=M.TRUTH["peak_flux"]
    ).to_dynamic()
    width = cx.Param("width", M.PSF0, dynamic=True, valid=(0, None))
    sources = [
        Gaussian(
            f"src{i}",
            x0=[float(px), float(py)],
            q=1.0,
            phi=0.0,
            sigma=width,
            flux=cx.Pointer(lambda lc, t: lc.flux(t), lc, np.float32(t)),
        )
        for i, ((px, py), t) in enumerate(zip(data.positions, data.times))
    ]
    t1 = time.perf_counter()
    stacked = cx.stack(sources, name="sources")
    t2 = time.perf_counter()
    like = Likelihood(
        "likelihood",
        Sky("image", data.x, data.y, stacked),
        data.image,
        data.sigma_read,
        data.exp_time,
    )
    return like, t1 - t0, t2 - t1


def measure(k, max_unrolled, hessian_k, budget_s, log=print):
    import jax

    import caskax as cx

    data = M.nodes_data(k)
    row = {"k": k}
    like, row["build_members_s"], row["stack_s"] = build_stacked(data)

    def first_stacked():
        f = cx.compile(like)
        return f(f.init)

    row["compile_first_s"] = {"stacked": once(first_stacked)}
    f = cx.compile(like)
    x = f.init
    hand = jax.jit(M.hand_nodes_opt(data)[0])
    row["compile_first_s"]["hand-opt"] = once(lambda: hand(x))
    fns = {"stacked": f, "hand-opt": hand}
    if k <= max_unrolled:
        t0 = time.perf_counter()
        unrolled_like = M.caskax_nodes(data)
        row["build_unrolled_s"] = time.perf_counter() - t0

        def first_unrolled():
            fu = cx.compile(unrolled_like)
            return fu(fu.init)

        row["compile_first_s"]["unrolled"] = once(first_unrolled)
        fu = cx.compile(unrolled_like)
        # Both vectors read [width, light curve]: the unrolled model's width is src0.sigma.
        fns["unrolled"] = fu
    values = {name: float(fn(x)) for name, fn in fns.items()}
    row["values"] = values
    ref = values["hand-opt"]
    for name, v in values.items():
        if not np.isclose(v, ref, rtol=1e-4, atol=1e-2):
            raise AssertionError(f"k={k}: {name} gives {v}, hand-opt {ref}")

    calls = compare(
        {n: (lambda fn=fn: fn(x)) for n, fn in fns.items()}, rounds=ROUNDS, budget_s=budget_s
    )
    row["call_s"] = {n: s["median"] for n, s in calls.items()}
    row["call"] = calls
    # The unrolled model's grad and hessian take minutes of XLA compile past k = 10.
    grads = {n: jax.jit(jax.grad(fn)) for n, fn in fns.items() if n != "unrolled" or k <= 10}
    gres = compare(
        {n: (lambda g=g: g(x)) for n, g in grads.items()}, rounds=ROUNDS, budget_s=budget_s
    )
    row["grad_s"] = {n: s["median"] for n, s in gres.items()}
    if k == hessian_k:
        hess = {n: jax.jit(jax.hessian(fn)) for n, fn in fns.items() if n != "unrolled" or k <= 10}
        hres = compare(
            {n: (lambda h=h: h(x)) for n, h in hess.items()}, rounds=ROUNDS, budget_s=budget_s
        )
        row["hessian_s"] = {n: s["median"] for n, s in hres.items()}
    row["ratio_call_vs_hand_opt"] = row["call_s"]["stacked"] / row["call_s"]["hand-opt"]
    row["ratio_call_vs_hand_opt_min"] = calls["stacked"]["min"] / calls["hand-opt"]["min"]
    row["ratio_grad_vs_hand_opt"] = row["grad_s"]["stacked"] / row["grad_s"]["hand-opt"]
    if "hessian_s" in row:
        hs = row["hessian_s"]
        row["ratio_hessian_vs_hand_opt"] = hs["stacked"] / hs["hand-opt"]
    if "unrolled" in row["call_s"]:
        row["ratio_unrolled_vs_stacked_call"] = row["call_s"]["unrolled"] / row["call_s"]["stacked"]
    log(
        f"k={k}: stack {fmt_time(row['stack_s'])}; compile+first "
        + ", ".join(f"{n} {fmt_time(t)}" for n, t in row["compile_first_s"].items())
        + "; call "
        + ", ".join(f"{n} {fmt_time(t)}" for n, t in row["call_s"].items())
    )
    return row


def table(rows) -> str:
    def cell(d, key):
        return fmt_time(d[key]) if key in d else "-"

    head = (
        "| k | build k members | cx.stack | compile+first: stacked / hand-opt / unrolled "
        "| call: stacked / hand-opt / unrolled | call vs hand-opt: median (min) "
        "| grad vs hand-opt |"
    )
    lines = [head, "|" + "---|" * 7]
    for r in rows:
        c, t = r["compile_first_s"], r["call_s"]
        grad = f"{r['ratio_grad_vs_hand_opt']:.2f}x"
        if "ratio_hessian_vs_hand_opt" in r:
            grad += f" (hessian {r['ratio_hessian_vs_hand_opt']:.2f}x)"
        lines.append(
            f"| {r['k']} | {fmt_time(r['build_members_s'])} | {fmt_time(r['stack_s'])} "
            f"| {cell(c, 'stacked')} / {cell(c, 'hand-opt')} / {cell(c, 'unrolled')} "
            f"| {cell(t, 'stacked')} / {cell(t, 'hand-opt')} / {cell(t, 'unrolled')} "
            f"| {r['ratio_call_vs_hand_opt']:.2f}x ({r['ratio_call_vs_hand_opt_min']:.2f}x) "
            f"| {grad} |"
        )
    return "\n".join(lines)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--k", type=int, nargs="+", default=[10, 100, 1000, 10000])
    parser.add_argument("--quick", action="store_true", help="k = 10, 100 and short budgets")
    parser.add_argument(
        "--max-unrolled",
        type=int,
        default=1000,
        help="largest k for the unrolled caskax model (~25 s compile at 1000)",
    )
    parser.add_argument("--hessian-k", type=int, default=100)
    parser.add_argument("--budget", type=float, default=3.0, help="seconds per timing group")
    parser.add_argument("--out", default=str(Path(__file__).with_name("stack.json")))
    args = parser.parse_args(argv)
    if args.quick:
        args.k, args.budget = [10, 100], 0.5

    import jax

    jax.config.update("jax_enable_compilation_cache", False)
    import caskax as cx

    t_start = time.perf_counter()
    # One small model first: jax's and caskax's one-time setup is no peer's compile time.
    measure(2, max_unrolled=2, hessian_k=2, budget_s=0.05, log=lambda *_: None)
    rows = [measure(k, args.max_unrolled, args.hessian_k, args.budget) for k in args.k]
    md = table(rows)
    print(md)
    result = {
        "command": " ".join(
            ["python benchmarks/stack.py", *(sys.argv[1:] if argv is None else argv)]
        ),
        "machine": {
            "platform": platform.platform(),
            "processor": platform.processor() or platform.machine(),
            "cpu_count": os.cpu_count(),
            "device": str(jax.devices()[0]),
            "load": uptime(),
        },
        "versions": {
            "python": platform.python_version(),
            "jax": jax.__version__,
            "caskax": cx.__version__,
        },
        "targets": {
            "compile_first_s": TARGET_COMPILE_S,
            "call_ratio_vs_hand_opt": TARGET_CALL_RATIO,
        },
        "rows": rows,
        "table": md,
        "wall_s": time.perf_counter() - t_start,
    }
    Path(args.out).write_text(json.dumps(result, indent=1, default=float))
    print(f"wrote {args.out} in {result['wall_s']:.0f} s")


if __name__ == "__main__":
    main()
