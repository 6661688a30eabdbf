"""The first `cx.nuts` call on the worked example's hierarchical model, cold, side by side.

    python benchmarks/nuts_first_call.py               # 4 rounds, 4 chains x (200 + 1000)
    python benchmarks/nuts_first_call.py --rounds 2 --quick --json FILE

A cold first call is mostly compiling: the mode fit, the Laplace Hessian and the NUTS
runner. Each run is a fresh process with no persistent compilation cache, timing one
``cx.nuts(f4, ...)`` call (compile, fit, Laplace, warmup and draws). The variants run
one after another within each round, so that this machine's drifts hit them alike:

* ``default``: one CPU device per chain (``jax_num_cpu_devices``), chains sharded, the
  runner compiled in a background thread while the mode is fitted (what the worked
  example does);
* ``two-per-device``: half as many devices, two vmapped chains on each;
* ``no-compile-ahead``: as ``default``, but the runner compiles on first use
  (``_Runner.compile_ahead`` replaced by a no-op in that process).

Reported: every run's seconds and each variant's median, and the ratio of each median
to ``default``'s.
"""

import argparse
import json
import statistics
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

CHILD = """
import sys, time
import jax
jax.config.update("jax_num_cpu_devices", {devices})
import caskax as cx
from caskax.examples import stages
if {no_ahead}:
    import importlib
    importlib.import_module("caskax.infer.nuts")._Runner.compile_ahead = lambda *a, **k: None
f4 = cx.compile(stages.hierarchical_model(stages.mock_data()))
t0 = time.perf_counter()
c = cx.nuts(f4, jax.random.key(1), num_warmup={warmup}, num_samples={draws},
            num_chains={chains}, progress=False, chain_method="sharded")
print(time.perf_counter() - t0)
"""

VARIANTS = {
    "default": dict(per_device=1, no_ahead=False),
    "two-per-device": dict(per_device=2, no_ahead=False),
    "no-compile-ahead": dict(per_device=1, no_ahead=True),
}


def _run(chains, warmup, draws, per_device, no_ahead):
    code = CHILD.format(
        devices=chains // per_device, no_ahead=no_ahead, warmup=warmup, draws=draws, chains=chains
    )
    out = subprocess.run(
        [sys.executable, "-c", code],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=600,
        env={"JAX_PLATFORMS": "cpu", **_env()},
    )
    if out.returncode != 0:
        raise RuntimeError(out.stderr[-2000:])
    return float(out.stdout.strip().splitlines()[-1])


def _env():
    import os

    env = dict(os.environ)
    env.pop("JAX_COMPILATION_CACHE_DIR", None)  # cold: every compile happens
    return env


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--rounds", type=int, default=4)
    p.add_argument("--quick", action="store_true", help="2 chains x (20 + 40): a smoke run")
    p.add_argument("--json", default=None)
    args = p.parse_args(argv)
    chains, warmup, draws = (2, 20, 40) if args.quick else (4, 200, 1000)
    runs = {name: [] for name in VARIANTS}
    for r in range(args.rounds):
        for name, v in VARIANTS.items():
            runs[name].append(_run(chains, warmup, draws, **v))
        print(
            f"round {r + 1}: " + ", ".join(f"{n} {runs[n][-1]:.2f} s" for n in VARIANTS), flush=True
        )
    base = statistics.median(runs["default"])
    rows = {
        n: {"seconds": s, "median": statistics.median(s), "x_default": statistics.median(s) / base}
        for n, s in runs.items()
    }
    for n, row in rows.items():
        print(
            f"{n:<18s} median {row['median']:.2f} s ({row['x_default']:.2f}x default); "
            f"runs {', '.join(f'{s:.2f}' for s in row['seconds'])}"
        )
    if args.json:
        Path(args.json).write_text(
            json.dumps(
                {"chains": chains, "num_warmup": warmup, "num_samples": draws, "rows": rows},
                indent=2,
            )
        )
    return rows


if __name__ == "__main__":
    main()
