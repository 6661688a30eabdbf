"""Time `append_state` as the state file grows: milliseconds per append against the
file's size, for in-place appends into chunked datasets.

Run: ``JAX_PLATFORMS=cpu python benchmarks/state_append.py [--draws N] [--width W]``.
The model holds three scalars and a vector of ``W`` floats (``W * 4`` bytes per sample),
so a few thousand draws make a file of tens of MiB. Each line reports the median time of
the ``--every`` appends before it, and the fastest (on a shared machine, the
fastest is the better estimate of the cost itself).
"""

import argparse
import os
import statistics
import tempfile
import time

import numpy as np

import caskax as cx
from caskax.examples.models import Gaussian1D


class Chain(cx.Module):
    lc: Gaussian1D
    vec: cx.Param

    def __init__(self, width):
        super().__init__("chain")
        self.lc = Gaussian1D("lc", t0=0.0, sigma=1.0, peak_flux=1.0)
        self.vec = cx.Param("vec", np.zeros(width, np.float32))


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--draws", type=int, default=8000)
    parser.add_argument("--width", type=int, default=1000)
    parser.add_argument("--every", type=int, default=1000)
    args = parser.parse_args()
    rng = np.random.default_rng(0)
    model = Chain(args.width)
    # Distinct models made up front, so that the loop times the file work alone.
    samples = [
        model.set("vec", rng.normal(size=args.width).astype(np.float32)).set("lc.t0", float(k))
        for k in range(min(args.every, args.draws))
    ]
    with tempfile.TemporaryDirectory() as folder:
        path = os.path.join(folder, "chain.h5")
        model.save_state(path, appendable=True)
        print(f"{'samples':>8} {'file MiB':>9} {'median ms':>10} {'min ms':>7} {'max ms':>7}")
        times = []
        for k in range(1, args.draws + 1):
            start = time.perf_counter()
            samples[k % len(samples)].append_state(path)
            times.append(1e3 * (time.perf_counter() - start))
            if k % args.every == 0 or k == 10:
                size = os.path.getsize(path) / 2**20
                print(
                    f"{k + 1:>8} {size:>9.2f} {statistics.median(times):>10.2f} "
                    f"{min(times):>7.2f} {max(times):>7.2f}"
                )
                times = []
        assert cx.io.count_samples(path) == args.draws + 1


if __name__ == "__main__":
    main()
