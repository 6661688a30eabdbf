"""XLA:CPU compile options of the inference programs: compile and run time, side by side.

    python benchmarks/compile_options.py [--rounds 2] [--json FILE] [--quick]

For the worked example's four models, compiles and runs ``cx.fit``'s loop, the Laplace
Hessian and one block (50 steps, 4 chains) of the NUTS runner twice: with XLA's
defaults (``.plain``) and with the options caskax uses on the CPU (``.tuned``):
`caskax.infer._jit.CPU_COMPILER_OPTIONS` for the fit and the NUTS runner,
``CPU_RUN_ONCE_OPTIONS`` (``-O0``) for the Hessian, which each call runs once. Rounds
alternate the two, each compile after
``jax.clear_caches()``; the table shows the minimum over rounds. Run times are medians
of repeated calls of the compiled program. ``--quick`` (a smoke run for the tests):
stage 1's fit and Hessian only, one round.
"""

import argparse
import importlib
import json
import sys
import time
from pathlib import Path

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
    __package__ = "benchmarks"

import jax  # noqa: E402
import numpy as np  # noqa: E402

import caskax as cx  # noqa: E402
from caskax.examples import stages  # noqa: E402
from caskax.infer import _jit  # noqa: E402

# the submodules (caskax.infer's names fit/laplace/nuts are the functions)
fit_mod = importlib.import_module("caskax.infer.fit")
laplace_mod = importlib.import_module("caskax.infer.laplace")
nuts_mod = importlib.import_module("caskax.infer.nuts")
from caskax.infer._target import Target  # noqa: E402

from ._timing import timeit  # noqa: E402


def _cases(data, quick=False):
    """(label, (plain jit, tuned jit), args) per model and program."""
    models = {
        "stage1": stages.stage1_model(data, 0),
        "stage2": stages.stage2_model(data),
        "stage3": stages.stage3_model(data),
        "stage4": stages.hierarchical_model(data),
    }
    fit = fit_mod._fit
    out = []
    for name, model in models.items():
        f = cx.compile(model)
        target = Target(f, unconstrained=False, density=False)
        x = f.init
        out.append((f"{name} fit", fit, (target, x, "lbfgs", 1000, 1e-6, None, ())))
        out.append((f"{name} hessian", laplace_mod._hessian, (target, x)))
        if quick:
            return out
    # one block of the NUTS runner on the hierarchical model as cx.nuts runs it: at the
    # mode, with the Laplace metric and a step size near the adapted one
    f4 = cx.compile(models["stage4"])
    target = Target(f4, unconstrained=True)
    mode = cx.fit(target.logdensity, target.to_z(f4.init)).x
    cov = np.asarray(cx.laplace(target.logdensity, mode).cov)
    chains = 4
    z0 = np.broadcast_to(np.asarray(mode), (chains, f4.size)).copy()
    keys = np.asarray(jax.random.key_data(jax.random.split(jax.random.key(0), chains)))
    args = (
        z0,
        z0,
        nuts_mod._fresh_da(chains, z0.dtype),
        np.ones(chains, bool),
        keys,
        np.zeros(chains, np.int32),
        np.zeros((chains, 50, 1), np.int32),
        np.full(chains, 0.6, z0.dtype),
        np.broadcast_to(cov.astype(z0.dtype), (chains,) + cov.shape),
    )
    out.append(
        (
            "stage4 NUTS block",
            nuts_mod._MAPS["vectorized"],
            (nuts_mod._run_one, target, args, nuts_mod._Sampling(1, "threefry2x32")),
        )
    )
    return out


def _compile_s(fn, args):
    jax.clear_caches()
    lowered = fn.lower(*args)
    t0 = time.perf_counter()
    lowered.compile()
    return time.perf_counter() - t0


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--json", default=None)
    p.add_argument("--quick", action="store_true")
    args = p.parse_args(argv)
    if args.quick:
        args.rounds = 1
    if not _jit.options_known(_jit.CPU_COMPILER_OPTIONS):
        sys.exit("this jaxlib does not know caskax's CPU compile options: nothing to compare")
    data = stages.mock_data()
    rows = []
    for label, fn, fargs in _cases(data, args.quick):
        comp = {"default": [], "tuned": []}
        for _ in range(args.rounds):
            comp["default"].append(_compile_s(fn.plain, fargs))
            comp["tuned"].append(_compile_s(fn.tuned, fargs))
        run = {
            k: timeit(lambda g=getattr(fn, v): g(*fargs), repeats=10, budget_s=1.0)["median"]
            for k, v in (("default", "plain"), ("tuned", "tuned"))
        }
        row = {
            "case": label,
            "compile_default_s": min(comp["default"]),
            "compile_tuned_s": min(comp["tuned"]),
            "run_default_s": run["default"],
            "run_tuned_s": run["tuned"],
        }
        rows.append(row)
        print(
            f"{label:<20s} compile {row['compile_default_s']:6.2f} s -> {row['compile_tuned_s']:5.2f} s"
            f" ({row['compile_tuned_s'] / row['compile_default_s']:.2f}x)   run "
            f"{row['run_default_s'] * 1e3:7.2f} ms -> {row['run_tuned_s'] * 1e3:7.2f} ms"
            f" ({row['run_tuned_s'] / row['run_default_s']:.2f}x)",
            flush=True,
        )
    total = {k: sum(r[f"compile_{k}_s"] for r in rows) for k in ("default", "tuned")}
    print(
        f"{'all compiles':<20s} {total['default']:.1f} s -> {total['tuned']:.1f} s "
        f"({total['tuned'] / total['default']:.2f}x); options {dict(_jit.CPU_COMPILER_OPTIONS)}, "
        f"Hessian {dict(_jit.CPU_RUN_ONCE_OPTIONS)}, "
        f"jax {jax.__version__}, {jax.devices()[0].device_kind}"
    )
    if args.json:
        Path(args.json).write_text(
            json.dumps(
                {"rows": rows, "options": dict(_jit.CPU_COMPILER_OPTIONS), "jax": jax.__version__},
                indent=2,
            )
        )
    return rows


if __name__ == "__main__":
    main()
