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
  sources (source 0 holds the width, the others link to it), up to ``--max-unrolled``;
* ``caskade-torch``: `benchmarks.models.caskade_nodes`, the same list model in caskade
  1.1.5 on torch (CPU), called eagerly as a caskade user calls it (``L(x)``), gradient
  ``torch.func.grad(L)``. Skipped, with the reason in the JSON, without caskade or
  torch, or with ``--no-caskade``.

Per k: building the k member modules and stacking them (Python); compile + first call
(``cx.compile`` + the first ``f(x)`` for caskax, ``jax.jit`` + first call for hand-opt;
the persistent compilation cache is off); then jitted call, ``jax.grad`` and (at one k)
``jax.hessian``, the jax peers interleaved in rounds (`benchmarks._timing.compare`).
caskade-torch is timed right after the jax peers of the same k, in the same process:
its build and first call, its first gradient, then repeated calls and gradients (at
least 3 each, within ``--budget``). Its build + first call, and then its first
gradient, each get ``--caskade-cap`` seconds (default 60); one that runs longer is
stopped there and the rest of that k and every larger k are recorded as skipped, with
the reason. A gradient slower than a tenth of the cap is timed once, not repeated.

    python benchmarks/stack.py                 # k = 10, 100, 1000, 10000 (~9 min on 2 cores)
    python benchmarks/stack.py --quick         # k = 10, 100 (~1 min)
    python benchmarks/stack.py --k 1000 --max-unrolled 0

Writes ``benchmarks/stack.json`` (``--out`` to change) and prints a table.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.util
import json
import os
import platform
import signal
import sys
import time
from pathlib import Path

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
    __package__ = "benchmarks"

import numpy as np  # noqa: E402

from . import models as M  # noqa: E402
from ._timing import compare, fmt_time, once, timeit, uptime  # noqa: E402

TARGET_COMPILE_S = {1000: 1.0, 10000: 3.0}
TARGET_CALL_RATIO = 1.2
ROUNDS = 10  # interleaved rounds per timing: bursts of load on a shared machine hit all peers
CASKADE = "caskade-torch"
CASKADE_REPEATS = 3  # a caskade-torch call takes seconds at k = 10000: few repeats, no rounds


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


class CapExceeded(Exception):
    """A caskade-torch step ran past ``--caskade-cap``."""


@contextlib.contextmanager
def time_limit(seconds, what):
    """Stop the block with `CapExceeded` after ``seconds`` of wall time (SIGALRM: the
    caskade build is Python and each torch op returns within the cap, so the signal
    lands). Without SIGALRM (Windows) the block runs to its end."""
    if seconds is None or not hasattr(signal, "SIGALRM"):
        yield
        return

    def stop(signum, frame):
        raise CapExceeded(f"{what} ran past the {seconds:g} s cap (--caskade-cap); stopped")

    previous = signal.signal(signal.SIGALRM, stop)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


def caskade_unavailable() -> str | None:
    """Why the caskade-torch peer cannot run here, or None."""
    for name, pin in (("caskade", "caskade==1.1.5"), ("torch", "torch==2.13.0")):
        if importlib.util.find_spec(name) is None:
            return f"{name} is not installed (pip install {pin})"
    if "caskade" in sys.modules:
        import caskade as ck

        if ck.backend.backend != "torch":
            return f"caskade was imported with its {ck.backend.backend} backend, not torch"
    return None


def measure_caskade(data, ref, budget_s, cap_s):
    """caskade-torch on the figure-5b list model: build, first call, first gradient under
    ``cap_s`` each, then repeated calls and (when the first took under a tenth of the
    cap) gradients. Returns a dict; a step stopped at the cap raises `CapExceeded` (build
    and first call) or leaves its reason in ``grad_skipped`` (first gradient)."""
    import torch

    out = {}
    with time_limit(cap_s, f"caskade-torch build + first call at k={len(data.times)}"):
        t0 = time.perf_counter()
        like = M.caskade_nodes(data)
        out["build_s"] = time.perf_counter() - t0
        x = like.get_values()
        out["first_call_s"] = once(lambda: like(x))
    value = float(like(x))
    out["value"] = value
    if not np.isclose(value, ref, rtol=1e-4, atol=1e-2):
        raise AssertionError(f"k={len(data.times)}: caskade-torch gives {value}, hand-opt {ref}")
    out["call"] = timeit(lambda: like(x), repeats=CASKADE_REPEATS, warmup=1, budget_s=budget_s)
    grad = torch.func.grad(like)
    try:
        with time_limit(cap_s, f"caskade-torch first gradient at k={len(data.times)}"):
            out["first_grad_s"] = once(lambda: grad(x))
    except CapExceeded as err:
        out["grad_skipped"] = str(err)
    first_grad = out.get("first_grad_s")
    if first_grad is not None and first_grad * 10 <= (cap_s or np.inf):
        out["grad"] = timeit(lambda: grad(x), repeats=CASKADE_REPEATS, warmup=1, budget_s=budget_s)
    elif first_grad is not None:
        out["grad_note"] = (
            f"one gradient took {out['first_grad_s']:.1f} s, over a tenth of the cap: "
            "timed once (first_grad_s), not repeated"
        )
    out["torch_threads"] = torch.get_num_threads()
    return out


def measure(k, max_unrolled, hessian_k, budget_s, log=print, caskade_skip=None, caskade_cap=None):
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
    if caskade_skip is None:
        try:
            row["caskade"] = measure_caskade(data, ref, budget_s, caskade_cap)
        except CapExceeded as err:
            row["caskade"] = {"skipped": str(err)}
    else:
        row["caskade"] = {"skipped": caskade_skip}
    ck = row["caskade"]
    if "call" in ck:
        row["call_s"][CASKADE] = ck["call"]["median"]
        row["ratio_caskade_vs_stacked_call"] = ck["call"]["median"] / row["call_s"]["stacked"]
    if "grad" in ck or "first_grad_s" in ck:
        g = ck["grad"]["median"] if "grad" in ck else ck["first_grad_s"]
        row["grad_s"][CASKADE] = g
        row["ratio_caskade_vs_stacked_grad"] = g / row["grad_s"]["stacked"]
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
        + "".join(f"; {CASKADE}: {ck[key]}" for key in ("skipped", "grad_skipped") if key in ck)
    )
    return row


def table(rows) -> str:
    def cell(d, key):
        return fmt_time(d[key]) if key in d else "-"

    head = (
        "| k | build k members | cx.stack | compile+first: stacked / hand-opt / unrolled "
        "| call: stacked / hand-opt / unrolled | call vs hand-opt: median (min) "
        "| grad vs hand-opt | caskade-torch: build, call, grad "
        "| caskade-torch / stacked: call, grad |"
    )
    lines = [head, "|" + "---|" * 9]
    for r in rows:
        c, t = r["compile_first_s"], r["call_s"]
        grad = f"{r['ratio_grad_vs_hand_opt']:.2f}x"
        if "ratio_hessian_vs_hand_opt" in r:
            grad += f" (hessian {r['ratio_hessian_vs_hand_opt']:.2f}x)"
        ck = r.get("caskade", {})
        if "call" in ck:
            g = r["grad_s"].get(CASKADE)
            once_only = " (1 call)" if "grad" not in ck else ""
            ck_times = f"{fmt_time(ck['build_s'])}, {fmt_time(t[CASKADE])}, " + (
                f"{fmt_time(g)}{once_only}" if g is not None else "-"
            )
            ck_ratio = f"{r['ratio_caskade_vs_stacked_call']:.0f}x, " + (
                f"{r['ratio_caskade_vs_stacked_grad']:.0f}x" if g is not None else "-"
            )
        else:
            ck_times, ck_ratio = "skipped (see JSON)", "-"
        lines.append(
            f"| {r['k']} | {fmt_time(r['build_members_s'])} | {fmt_time(r['stack_s'])} "
            f"| {cell(c, 'stacked')} / {cell(c, 'hand-opt')} / {cell(c, 'unrolled')} "
            f"| {cell(t, 'stacked')} / {cell(t, 'hand-opt')} / {cell(t, 'unrolled')} "
            f"| {r['ratio_call_vs_hand_opt']:.2f}x ({r['ratio_call_vs_hand_opt_min']:.2f}x) "
            f"| {grad} | {ck_times} | {ck_ratio} |"
        )
    return "\n".join(lines)


def caskade_versions() -> dict:
    if "caskade" not in sys.modules:
        return {}
    import caskade
    import torch

    return {"caskade": caskade.__version__, "torch": torch.__version__}


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
    parser.add_argument(
        "--caskade-cap",
        type=float,
        default=60.0,
        help="seconds allowed for caskade-torch's build + first call, and for its first "
        "gradient, at one k; past it that k and larger ones are skipped (default 60)",
    )
    parser.add_argument("--no-caskade", action="store_true", help="leave caskade-torch out")
    parser.add_argument("--out", default=str(Path(__file__).with_name("stack.json")))
    args = parser.parse_args(argv)
    if args.quick:
        args.k, args.budget = [10, 100], 0.5

    # caskade picks its backend when it is first imported; nothing before this imports it.
    os.environ["CASKADE_BACKEND"] = "torch"
    caskade_skip = "--no-caskade" if args.no_caskade else caskade_unavailable()
    import jax

    jax.config.update("jax_enable_compilation_cache", False)
    import caskax as cx

    t_start = time.perf_counter()
    # One small model first: jax's, caskax's, torch's and caskade's one-time setup
    # (torch.func's first gradient takes seconds) is no peer's time.
    measure(
        2,
        max_unrolled=2,
        hessian_k=2,
        budget_s=0.05,
        log=lambda *_: None,
        caskade_skip=caskade_skip,
    )
    rows = []
    for k in args.k:
        rows.append(
            measure(
                k,
                args.max_unrolled,
                args.hessian_k,
                args.budget,
                caskade_skip=caskade_skip,
                caskade_cap=args.caskade_cap,
            )
        )
        ck = rows[-1]["caskade"]
        stopped = ck.get("skipped") or ck.get("grad_skipped")
        if caskade_skip is None and stopped:
            caskade_skip = f"not run: a smaller k was stopped ({stopped})"
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
            **caskade_versions(),
        },
        "caskade_cap_s": args.caskade_cap,
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
