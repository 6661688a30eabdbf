"""Batch inference: one model, N datasets, ``cx.fit(cx.batch(...))`` against a loop of
``cx.fit``, side by side in one run.

    python benchmarks/batch.py                 # N = 1, 16, 256 (~2 min on 2 cores)
    python benchmarks/batch.py --quick         # N = 1, 16, fewer repeats
    python benchmarks/batch.py --out DIR       # where batch.json goes (the table is printed)

The model is the tutorial's single-epoch image (`caskax.examples.stages.stage1_model`:
SN and galaxy, 9 dynamic entries, 50x50 pixels). Dataset ``k`` is that image with fresh
read noise (sd 0.1, seed ``k``) added; every fit starts from the model's init values,
as the tutorial's does. The batched Program is built by the fast path
(``cx.batch(f, data=images)``); the loop fits the same datasets' Programs (``F[k]``,
built before timing) one by one with ``cx.fit``. Both use L-BFGS with the defaults.

Reported per N: the first call (trace, compile and run) and the median wall time of
repeated calls, fits per second from the median, the ratio batched / loop, and the
largest difference between the two results' ``x`` (they agree to float32 rounding).
Where N > 16, ``cx.fit(F, batch_size=16)`` (chunks of 16 datasets) is timed as well.

NUTS: 64 datasets (``--nuts-datasets``) x 4 chains (200 warmup + 200 draws, the default Laplace metric), one
batched ``cx.nuts`` call against a loop of ``cx.nuts`` with the same per-dataset keys;
wall times without the first call's compile, ESS/s = the sum over datasets of each
dataset's smallest bulk ESS, over the wall time.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
    __package__ = "benchmarks"

import numpy as np  # noqa: E402

from ._timing import once, summary, uptime  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
CHUNK = 16  # batch_size of the chunked variant, run where N is larger


def _datasets(base_image, n):
    rng = np.random.default_rng(0)
    noise = rng.normal(0.0, 0.1, size=(n,) + base_image.shape).astype(np.float32)
    return base_image[None] + noise


def _time(fn, repeats):
    out = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        out.append(time.perf_counter() - t0)
    return summary(out)


def run(sizes, repeats):
    import jax

    import caskax as cx
    from caskax.examples.stages import mock_data, stage1_model

    data = mock_data()
    f = cx.compile(stage1_model(data, epoch=2))
    base = np.asarray(data.images)[2].astype(np.float32)
    rows = []
    for n in sizes:
        images = _datasets(base, n)
        t0 = time.perf_counter()
        F = cx.batch(f, data=images)
        build = time.perf_counter() - t0
        members = [F[k] for k in range(n)]

        def batched():
            return jax.block_until_ready(cx.fit(F))

        def loop():
            return [jax.block_until_ready(cx.fit(g)) for g in members]

        def chunked():
            return jax.block_until_ready(cx.fit(F, batch_size=CHUNK))

        first_batched, first_loop = once(batched), once(loop)
        first_chunked = once(chunked) if n > CHUNK else None
        res_b, res_l = batched(), loop()
        diff = float(
            np.max(np.abs(np.asarray(res_b.x) - np.stack([np.asarray(r.x) for r in res_l])))
        )
        # interleaved rounds: drifts of the shared machine hit both alike
        tb, tl, tc = [], [], []
        for _ in range(repeats):
            tb.append(_time(batched, 1)["min"])
            tl.append(_time(loop, 1)["min"])
            if n > CHUNK:
                tc.append(_time(chunked, 1)["min"])
        sb, sl = summary(tb), summary(tl)
        sc = summary(tc) if tc else None
        rows.append(
            {
                "datasets": n,
                "build_s": build,
                "batched": {"first_s": first_batched, **sb, "fits_per_s": n / sb["median"]},
                "loop": {"first_s": first_loop, **sl, "fits_per_s": n / sl["median"]},
                "ratio": sl["median"] / sb["median"],
                "chunked": None
                if sc is None
                else {
                    "batch_size": CHUNK,
                    "first_s": first_chunked,
                    **sc,
                    "fits_per_s": n / sc["median"],
                    "ratio": sl["median"] / sc["median"],
                },
                "max_abs_x_diff": diff,
                "converged": {
                    "batched": int(np.sum(np.asarray(res_b.converged))),
                    "loop": int(sum(bool(r.converged) for r in res_l)),
                },
                "steps_batched_max": int(np.max(np.asarray(res_b.steps))),
            }
        )
        print(
            f"N={n}: batched {n / sb['median']:.1f} fits/s, loop {n / sl['median']:.1f} fits/s, "
            f"ratio {sl['median'] / sb['median']:.2f}",
            flush=True,
        )
    return rows


def run_nuts(n, num_warmup, num_samples, num_chains=4):
    """NUTS on ``n`` datasets: one batched ``cx.nuts`` call against a loop of ``cx.nuts``
    with the same per-dataset keys (``jax.random.split(key, n)``). Wall times exclude the
    first call's compile (the batched call is timed on its second run, the loop after one
    warm-up call); ESS is each dataset's smallest bulk ESS over its entries."""
    import jax

    import caskax as cx
    from caskax.examples.stages import mock_data, stage1_model

    data = mock_data()
    f = cx.compile(stage1_model(data, epoch=2))
    F = cx.batch(f, data=_datasets(np.asarray(data.images)[2].astype(np.float32), n))
    key = jax.random.key(0)
    run = dict(
        num_warmup=num_warmup, num_samples=num_samples, num_chains=num_chains, progress=False
    )
    first_batched = once(lambda: cx.nuts(F, key, **run).samples)
    t0 = time.perf_counter()
    chains = cx.nuts(F, key, **run)
    wall_b = time.perf_counter() - t0
    keys = jax.random.split(key, n)
    members = [F[k] for k in range(n)]
    cx.nuts(members[0], keys[0], **run)  # compile
    t0 = time.perf_counter()
    alone = [cx.nuts(g, k, **run) for g, k in zip(members, keys)]
    wall_l = time.perf_counter() - t0

    def min_ess(c):
        s = c.summary()
        return min(s[name]["ess_bulk"] for name in c.names)

    ess_b = [min_ess(chains[k]) for k in range(n)]
    ess_l = [min_ess(c) for c in alone]
    return {
        "datasets": n,
        "chains": num_chains,
        "num_warmup": num_warmup,
        "num_samples": num_samples,
        "batched": {
            "first_s": first_batched,
            "wall_s": wall_b,
            "ess_min_median": float(np.median(ess_b)),
            "ess_per_s": float(np.sum(ess_b) / wall_b),
        },
        "loop": {
            "wall_s": wall_l,
            "ess_min_median": float(np.median(ess_l)),
            "ess_per_s": float(np.sum(ess_l) / wall_l),
        },
        "ratio": float((np.sum(ess_b) / wall_b) / (np.sum(ess_l) / wall_l)),
        "divergences": {
            "batched": int(np.sum(chains.divergences)),
            "loop": int(sum(int(np.sum(c.divergences)) for c in alone)),
        },
    }


def meta(command):
    import jax
    import jaxlib

    try:
        commit = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True
        ).stdout.strip()
    except OSError:
        commit = ""
    return {
        "command": command,
        "commit": commit,
        "python": platform.python_version(),
        "jax": jax.__version__,
        "jaxlib": jaxlib.__version__,
        "backend": jax.default_backend(),
        "devices": [str(d) for d in jax.devices()],
        "cpu": platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(),
        "load": uptime(),
        "model": "stage1_model (single-epoch image, 9 entries, 50x50 px)",
    }


def markdown(result) -> str:
    lines = [
        f"| datasets | cx.fit(cx.batch) fits/s | loop of cx.fit fits/s | ratio | batch_size={CHUNK} fits/s (ratio) "
        "| first call batched / loop | max abs x diff |",
        "|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in result["rows"]:
        c = r["chunked"]
        chunk = f"{c['fits_per_s']:.1f} ({c['ratio']:.2f}x)" if c else "-"
        lines.append(
            f"| {r['datasets']} | {r['batched']['fits_per_s']:.1f} | {r['loop']['fits_per_s']:.1f} | "
            f"{r['ratio']:.2f}x | {chunk} | {r['batched']['first_s']:.2f} s / {r['loop']['first_s']:.2f} s | "
            f"{r['max_abs_x_diff']:.1e} |"
        )
    r = result.get("nuts")
    if r:
        lines += [
            "",
            f"NUTS, {r['datasets']} datasets x {r['chains']} chains ({r['num_warmup']} warmup + "
            f"{r['num_samples']} draws):",
            "",
            "| | wall (s) | median of each dataset's min bulk ESS | ESS/s (all datasets) |",
            "|---|---:|---:|---:|",
            f"| cx.nuts(cx.batch) | {r['batched']['wall_s']:.1f} | {r['batched']['ess_min_median']:.0f} | "
            f"{r['batched']['ess_per_s']:.0f} |",
            f"| loop of cx.nuts | {r['loop']['wall_s']:.1f} | {r['loop']['ess_min_median']:.0f} | "
            f"{r['loop']['ess_per_s']:.0f} |",
            "",
            f"ratio {r['ratio']:.2f}x; first batched call (with compile) {r['batched']['first_s']:.1f} s",
        ]
    m = result["meta"]
    lines.append("")
    lines.append(
        f"{m['cpu_count']} CPU cores ({m['cpu']}), jax {m['jax']} ({m['backend']}), "
        f"python {m['python']}, caskax {m['commit']}; `{m['command']}`"
    )
    return "\n".join(lines)


def main(argv=None):
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--quick", action="store_true", help="N = 1, 16 and 2 repeats")
    parser.add_argument("--out", default=str(ROOT / "benchmarks"), help="folder for batch.json")
    parser.add_argument(
        "--nuts-datasets",
        type=int,
        default=None,
        help="datasets of the NUTS comparison (64; 4 with --quick; 0 skips it)",
    )
    args = parser.parse_args(argv)
    sizes, repeats = ((1, 16), 2) if args.quick else ((1, 16, 256), 5)
    command = "python benchmarks/batch.py" + (" --quick" if args.quick else "")
    n_nuts = args.nuts_datasets if args.nuts_datasets is not None else (4 if args.quick else 64)
    if args.nuts_datasets is not None:
        command += f" --nuts-datasets {n_nuts}"
    result = {"meta": meta(command), "rows": run(sizes, repeats)}
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    name = "batch" if not args.quick else "batch-quick"
    (out / f"{name}.json").write_text(
        json.dumps(result, indent=1)
    )  # the fits, should NUTS not finish
    if n_nuts:
        result["nuts"] = run_nuts(n_nuts, *((100, 100) if args.quick else (200, 200)))
        print(f"NUTS: ratio {result['nuts']['ratio']:.2f}", flush=True)
    (out / f"{name}.json").write_text(json.dumps(result, indent=1))
    print(markdown(result))
    print(f"wrote {out / f'{name}.json'}")


if __name__ == "__main__":
    main()
