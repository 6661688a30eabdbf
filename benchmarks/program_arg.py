"""The Program as a jit argument against a direct call, one process, no other work.

    python benchmarks/program_arg.py

For likelihood2 (five image models) and likelihood3 (one vmapped model), at 2x2 and
50x50 pixels, prints the median time per call (with ``block_until_ready``) and the
time to dispatch one call without waiting, in microseconds, of:

* ``direct``: ``f(x)`` (the Program's own jitted function, arrays closed over);
* ``jit_arg``: ``jax.jit(lambda p, v: p(v))(f, x)`` (the Program as a pytree argument);
* ``compiled``: the same computation through its compiled executable (no jit dispatch);
* ``arrays_arg``: the Program's arrays passed as a plain tuple.

Written to look into `RESULTS.md`'s ``jit-program-arg`` cell on a GPU.
"""

import sys
import time
from pathlib import Path

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
    __package__ = "benchmarks"

import jax  # noqa: E402

import caskax as cx  # noqa: E402
from caskax import program as P  # noqa: E402
from caskax.examples import stages  # noqa: E402

from ._timing import timeit  # noqa: E402


def median_us(fn, n=1500):
    return timeit(fn, repeats=n)["median"] * 1e6


def dispatch_us(fn, n=1500):
    for _ in range(30):
        fn()
    jax.block_until_ready(fn())
    t = time.perf_counter()
    for _ in range(n):
        r = fn()
    elapsed = time.perf_counter() - t
    jax.block_until_ready(r)
    return float(elapsed / n * 1e6)


def main():
    print(jax.devices())
    for n_pix in (2, 50):
        data = stages.mock_data(n_pix=n_pix)
        for name, like in (
            ("likelihood2", stages.stage3_model(data)),
            ("likelihood3", stages.hierarchical_model(data)),
        ):
            f = cx.compile(like)
            x = f.init
            as_arg = jax.jit(lambda p, v: p(v))
            compiled = as_arg.lower(f, x).compile()
            static = f._static
            arrays_arg = jax.jit(lambda a, v: P.Program._from_parts(a, static)(v))
            cases = {
                "direct": lambda: f(x),
                "jit_arg": lambda: as_arg(f, x),
                "compiled": lambda: compiled(f, x),
                "arrays_arg": lambda: arrays_arg(f._arrays, x),
            }
            cells = ", ".join(
                f"{k} {median_us(fn):.1f} / {dispatch_us(fn):.1f}" for k, fn in cases.items()
            )
            print(f"{name} {n_pix}x{n_pix} px (median / dispatch, us): {cells}", flush=True)


if __name__ == "__main__":
    main()
