"""Batch inference: one model, N datasets, ``cx.fit(cx.batch(...))`` against its peers
side by side in one run.

    python benchmarks/batch.py                          # N = 1, 16, 256, 4096
    python benchmarks/batch.py --sizes 1,16,256         # other N
    python benchmarks/batch.py --quick                  # smoke run: N = 1, 4, tiny NUTS
    python benchmarks/batch.py --lanes 1,4,8,16         # also cx.fit(F, lanes=L)
    python benchmarks/batch.py --out DIR                # where batch.json goes

**Model and datasets.** The tutorial's stage-3 model (`caskax.examples.stages.stage3_model`:
five 50x50 epochs sharing one galaxy, the SN fluxes function pointers to one light
curve; 11 dynamic entries). Dataset ``k`` is the noise-free image stack of the
tutorial's true simulator (`caskax.examples.stages.true_simulator`) plus fresh noise
drawn by ``numpy.random.default_rng(k)`` with the mock data's noise model (read noise
sd 0.1 and ``sqrt(img * 25) / 25 * N(0, 1)``), so dataset ``k`` is the same at every N.
Every fit starts from the model's init values, as the tutorial's does.

**Fits, per N** (``--sizes``). Timed calls block until the result is ready; the first
call of each (trace, compile and run) is reported apart; the others run in interleaved
rounds (``--repeats`` rounds for N <= 256, one above and for a variant whose first call
took over 20 s), and rates use the median:

- ``batched``: ``cx.fit(cx.batch(f, data=images))``, L-BFGS with ``maxiter=1000,
  tol=1e-6`` (cx.fit's defaults, as are its other options), all N datasets in one call;
- ``chunked`` (N > ``--batch-size``): the same with ``batch_size=16`` (chunks of 16
  datasets, one compile);
- ``lanes=L`` (``--lanes L1,L2,...``, where ``cx.fit`` takes ``lanes``): ``cx.fit(F,
  lanes=L)``, L datasets side by side in the vmapped loop, the groups one after another;
- ``loop``: a Python loop of ``cx.fit(F[k])`` over the first ``min(N, 64)`` datasets
  (the Programs built before timing); its fits/s is per fit over that subset;
- ``hand-opt`` and ``hand``: hand-written JAX, ``jax.jit(jax.vmap(fit_one))`` over the
  datasets, where ``fit_one`` is ``optax.lbfgs()`` (its zoom line search, the gradient
  reused through ``optax.value_and_grad_from_state``) in a ``lax.while_loop`` stopped
  by cx.fit's rule: ``|grad| <= tol * max(1, |f|)``, at ``maxiter`` accepted steps, on a
  non-finite value, or once a step leaves ``x`` unchanged. ``hand-opt`` fits
  `benchmarks/models.py`'s ``hand_stage3_opt`` (galaxy and SN profile computed once),
  ``hand`` its ``hand_stage3`` (the module tree's arithmetic). Timed on the first
  ``min(N, --hand-max)`` datasets (256): above that the rate is per fit on the subset;
- ``caskade+scipy``: caskade 1.1.5 on torch running the tutorial's fit, ``scipy``'s
  Nelder-Mead on ``-likelihood(torch.tensor(x))`` (benchmarks/models.py
  ``caskade_stage3``) from the same start, scipy's default stopping rule (``--quick``
  caps it at 30 evaluations), looped over the first ``--caskade-datasets`` datasets (3)
  in a separate process (caskade picks its backend at import); its per-fit rate is the
  same for every N.

Ratios are of fits/s: batched over each peer's (> 1: the batched fit is faster), and the
chunked rows' over the loop's. Agreement: the largest ``|x|`` difference of each
peer's fits from the batched ones on the same datasets, and converged counts.

**Evaluation ceiling.** One value-and-gradient of the model timed alone against its
time per dataset with 16 side by side (``jax.vmap`` over the images), each as 100
evaluations inside one compiled loop so that no dispatch is counted. Their ratio bounds
what any batching can gain over a loop of compute-bound fits on the machine.

**Memory.** For each N (``--memory-sizes``), a fresh process builds the datasets and
``F`` and runs one ``cx.fit(F)`` (its first call, compile included); another does the
same with ``batch_size``. Reported: the resident set before the fit (``VmRSS``), and
the peak resident set during it: the kernel's high-water mark (``VmHWM``) reset before
the fit through Linux's ``/proc/self/clear_refs``, so the imports and compiles before
it do not count. The worker waits for jax's background copy of the images onto the
device and frees the numpy source before it reads the memory. The chunked row runs a
second time with glibc's mmap threshold fixed at 128 KiB (``MALLOC_MMAP_THRESHOLD_``):
by default glibc raises the threshold after large frees, and freed chunk buffers then
stay in the heap, part of the resident set. (``resource.getrusage(...).ru_maxrss`` is kept in the JSON for
reference: it cannot be reset, and a child process's starts from its parent's peak.)

**NUTS.** ``--nuts-datasets`` (64) datasets x 4 chains (200 warmup + 200 draws, the
default Laplace metric): one batched ``cx.nuts`` call against a loop of ``cx.nuts``
with the same per-dataset keys; wall times without the first call's compile; ESS/s
per dataset = each dataset's smallest bulk ESS over the entries, summed over datasets,
over the wall time, divided by the number of datasets.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
    __package__ = "benchmarks"

import numpy as np  # noqa: E402

from ._timing import once, summary, uptime  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
SIZES = (1, 16, 256, 4096)
CHUNK = 16  # batch_size of the chunked variant
LOOP_MAX = 64  # datasets of the cx.fit loop at large N
HAND_MAX = 256  # datasets of the hand-written vmapped fits at large N
CASKADE_DATASETS = 3  # Nelder-Mead on torch takes about a minute per fit
MMAP_THRESHOLD = 128 * 1024  # bytes, for the memory rows' fixed-threshold variant
MAXITER, TOL = 1000, 1e-6  # cx.fit's defaults, given to every peer
FEW_ROUNDS_ABOVE = 256  # N above which each variant is timed in one round
SLOW_S = 20.0  # a variant whose first call took longer is timed in one round


# -- data -----------------------------------------------------------------------------------
def clean_images():
    """The mock data (caskax.examples.stages) and the noise-free images it was drawn from."""
    import jax

    import caskax as cx
    from caskax.examples.stages import mock_data, true_simulator

    data = mock_data()
    sim = cx.compile(true_simulator(data.x, data.y))
    clean = jax.vmap(lambda t: sim(t[None]))(data.times)  # time is sim's only dynamic param
    return data, np.asarray(clean, dtype=np.float32)


def datasets(clean, n, sigma_read, exp_time, start=0):
    """Datasets ``start .. start + n - 1``: ``clean`` plus the mock data's noise model,
    dataset ``k`` drawn from ``default_rng(k)`` (the same at every N)."""
    out = np.empty((n,) + clean.shape, np.float32)
    poisson = np.sqrt(clean * exp_time) / exp_time
    for i in range(n):
        z = np.random.default_rng(start + i).standard_normal((2,) + clean.shape)
        out[i] = clean + sigma_read * z[0] + poisson * z[1]
    return out


# -- hand-written JAX -----------------------------------------------------------------------
def hand_fit(loss, x0, maxiter=MAXITER, tol=TOL):
    """Minimise ``loss`` from ``x0`` with ``optax.lbfgs()`` in a ``lax.while_loop``, as
    optax's documentation writes the loop, stopped by cx.fit's rule (see the module
    docstring). Returns ``(x, loglike, grad_norm, steps, converged)``."""
    import jax
    import jax.numpy as jnp
    import optax
    import optax.tree_utils as otu

    opt = optax.lbfgs()
    value_and_grad = optax.value_and_grad_from_state(loss)

    def step(c):
        x, state, _ = c
        value, grad = value_and_grad(x, state=state)
        updates, state = opt.update(grad, state, x, value=value, grad=grad, value_fn=loss)
        x_new = optax.apply_updates(x, updates)
        return x_new, state, jnp.all(x_new == x)

    def small(state):
        value, grad = otu.tree_get(state, "value"), otu.tree_get(state, "grad")
        return otu.tree_norm(grad) <= tol * jnp.maximum(1.0, jnp.abs(value))

    def keep_going(c):
        _, state, stalled = c
        count, value = otu.tree_get(state, "count"), otu.tree_get(state, "value")
        return (count == 0) | ((count < maxiter) & ~small(state) & ~stalled & jnp.isfinite(value))

    x, state, _ = jax.lax.while_loop(keep_going, step, (x0, opt.init(x0), jnp.array(False)))
    value = otu.tree_get(state, "value")
    return (
        x,
        -value,
        otu.tree_norm(otu.tree_get(state, "grad")),
        otu.tree_get(state, "count"),
        small(state) & jnp.isfinite(value),
    )


def hand_batched(builder, data, names):
    """``jax.jit(jax.vmap(fit_one))`` over a stack of images: the hand-written peer."""
    import jax

    from . import models as M

    base = M.Data(
        np.asarray(data.x),
        np.asarray(data.y),
        np.asarray(data.times),
        np.asarray(data.images),
        data.sigma_read,
        data.exp_time,
    )
    _, x0 = builder(base, names)

    def one(images):
        loglike, _ = builder(base._replace(images=images), names)
        return hand_fit(lambda x: -loglike(x), x0)

    return jax.jit(jax.vmap(one))


# -- caskade + scipy (its own process: caskade picks its backend at import) ----------------
# -- the evaluation ceiling ----------------------------------------------------------------
def run_ceiling(width=16, calls=100):
    """What a batched fit can gain over a loop when both are compute-bound: the time of
    one value-and-gradient of the model alone (``F[0]``) against its time per dataset
    with ``width`` datasets side by side (``jax.vmap`` over their images). Each is
    timed as ``calls`` evaluations in one compiled loop (no dispatch in the figure), the
    best of 5 repeats; microseconds."""
    import jax
    import jax.numpy as jnp

    import caskax as cx
    from caskax.examples.stages import stage3_model

    data, clean = clean_images()
    f = cx.compile(stage3_model(data))
    F = cx.batch(f, data=datasets(clean, width, data.sigma_read, data.exp_time))

    def repeated(vg):
        # each evaluation's x depends on the last value, so none can be hoisted
        def run(arrays, x):
            def body(_, acc):
                value, grad = vg(arrays, x + 1e-30 * acc[..., None])
                return acc + value + grad[..., 0]

            return jax.lax.fori_loop(0, calls, body, jnp.zeros(x.shape[:-1], x.dtype))

        return jax.jit(run)

    def one(arrays, x):
        return jax.value_and_grad(F.member_of(arrays))(x)

    alone = repeated(one)
    side = repeated(jax.vmap(one, in_axes=(F.in_axes, 0)))
    member = [a[0] if ax == 0 else a for a, ax in zip(F.arrays, F.in_axes)]
    x = jnp.asarray(F.init)

    def best(call):
        jax.block_until_ready(call())
        times = []
        for _ in range(5):
            t0 = time.perf_counter()
            jax.block_until_ready(call())
            times.append((time.perf_counter() - t0) / calls)
        return min(times) * 1e6

    one_us = best(lambda: alone(member, x[0]))
    many_us = best(lambda: side(F.arrays, x)) / width
    return {
        "width": width,
        "alone_us": one_us,
        "per_dataset_us": many_us,
        "ceiling": one_us / many_us,
    }


def caskade_worker(path):
    """Fit the datasets in ``path`` (.npz) with caskade on torch and scipy's Nelder-Mead,
    as caskade's tutorial fits its stage 3; writes the results next to it (.json)."""
    import caskade  # noqa: F401  (the backend is chosen here, from CASKADE_BACKEND)
    import torch
    from scipy.optimize import minimize

    from . import models as M

    z = np.load(path)
    images, init, maxfev = z["images"], z["init"], int(z["maxfev"])
    base = M.Data(
        z["x"], z["y"], z["times"], images[0], float(z["sigma_read"]), float(z["exp_time"])
    )
    t0 = time.perf_counter()
    like = M.caskade_stage3(base)
    build = time.perf_counter() - t0
    start = like.get_values().numpy()
    # caskade's order of the dynamic params is caskax's (SN x0, light curve, galaxy)
    if not np.allclose(start, init):
        raise SystemExit(f"caskade's start {start} is not caskax's init {init}")
    options = {"maxfev": maxfev} if maxfev else None
    xs, nfev, success, seconds = [], [], [], []
    for img in images:
        like.data = torch.as_tensor(img)
        t0 = time.perf_counter()
        res = minimize(
            lambda x: -like(torch.tensor(x)).numpy(), start, method="Nelder-Mead", options=options
        )
        seconds.append(time.perf_counter() - t0)
        xs.append(np.asarray(res.x, dtype=float).tolist())
        nfev.append(int(res.nfev))
        success.append(bool(res.success))
    out = {
        "build_s": build,
        "seconds": seconds,
        "x": xs,
        "nfev": nfev,
        "success": success,
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "maxfev": maxfev or None,
    }
    Path(path).with_suffix(".json").write_text(json.dumps(out))


def run_caskade(data, images, init, maxfev=0):
    """Run `caskade_worker` on ``images`` in a fresh process; returns its results or a
    reason it did not run."""
    import importlib.util

    if not all(importlib.util.find_spec(m) for m in ("caskade", "torch", "scipy")):
        return {"skipped": "caskade, torch or scipy is not installed"}
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "caskade.npz"
        np.savez(
            path,
            images=images,
            init=np.asarray(init),
            maxfev=maxfev,
            x=np.asarray(data.x),
            y=np.asarray(data.y),
            times=np.asarray(data.times),
            sigma_read=data.sigma_read,
            exp_time=data.exp_time,
        )
        env = {**os.environ, "CASKADE_BACKEND": "torch"}
        proc = subprocess.run(
            [sys.executable, str(Path(__file__).resolve()), "--caskade-worker", str(path)],
            env=env,
            capture_output=True,
            text=True,
        )
        if proc.returncode != 0:
            return {"failed": proc.stderr[-2000:]}
        res = json.loads(path.with_suffix(".json").read_text())
    res["datasets"] = len(images)
    res["fits_per_s"] = len(images) / sum(res["seconds"])
    return res


# -- timing -----------------------------------------------------------------------------------
def _row_of(samples, first, n):
    s = summary(samples)
    return {"first_s": first, **s, "datasets": n, "fits_per_s": n / s["median"]}


def _max_diff(a, b):
    return float(np.max(np.abs(np.asarray(a, dtype=float) - np.asarray(b, dtype=float))))


def run(sizes, repeats, chunk, loop_max, hand_max, hands, caskade, lanes=()):
    """The fit comparison at each N; ``caskade`` is `run_caskade`'s result (rate only)."""
    import jax

    import caskax as cx
    from caskax.examples.stages import stage3_model

    from . import models as M

    data, clean = clean_images()
    f = cx.compile(stage3_model(data))
    names = list(f.names)
    builders = {"hand-opt": M.hand_stage3_opt, "hand": M.hand_stage3}
    hand_fns = {h: hand_batched(builders[h], data, names) for h in hands}
    rows = []
    for n in sizes:
        images = datasets(clean, n, data.sigma_read, data.exp_time)
        t0 = time.perf_counter()
        F = cx.batch(f, data=images)
        build = time.perf_counter() - t0
        n_loop, n_hand = min(n, loop_max), min(n, hand_max)
        members = [F[k] for k in range(n_loop)]
        hand_images = jax.device_put(images[:n_hand])
        calls = {"batched": lambda: jax.block_until_ready(cx.fit(F, maxiter=MAXITER, tol=TOL))}
        if n > chunk:
            calls["chunked"] = lambda: jax.block_until_ready(
                cx.fit(F, maxiter=MAXITER, tol=TOL, batch_size=chunk)
            )
        for w in lanes:
            calls[f"lanes={w}"] = lambda w=w: jax.block_until_ready(
                cx.fit(F, maxiter=MAXITER, tol=TOL, lanes=w)
            )
        calls["loop"] = lambda: [
            jax.block_until_ready(cx.fit(g, maxiter=MAXITER, tol=TOL)) for g in members
        ]
        for h, fn in hand_fns.items():
            calls[h] = lambda fn=fn: jax.block_until_ready(fn(hand_images))
        firsts, results = {}, {}
        for name, call in calls.items():
            firsts[name] = once(call)
            print(f"N={n} {name}: first call {firsts[name]:.2f} s", flush=True)
        # interleaved rounds: drifts of the shared machine hit every variant alike; a
        # slow variant (or any at large N) is timed in one round
        rounds = {
            name: repeats if (n <= FEW_ROUNDS_ABOVE and firsts[name] < SLOW_S) else 1
            for name in calls
        }
        samples = {name: [] for name in calls}
        for i in range(max(rounds.values())):
            for name, call in calls.items():
                if i >= rounds[name]:
                    continue
                t0 = time.perf_counter()
                results[name] = call()
                samples[name].append(time.perf_counter() - t0)
        counts = {"loop": n_loop, **{h: n_hand for h in hands}}
        row = {"datasets": n, "build_s": build}
        for name in calls:
            row[name] = _row_of(samples[name], firsts[name], counts.get(name, n))
        if "chunked" in row:
            row["chunked"]["batch_size"] = chunk
        rb = results["batched"]
        xb = np.asarray(rb.x)
        rate = row["batched"]["fits_per_s"]
        row["ratio"] = {name: rate / row[name]["fits_per_s"] for name in calls if name != "batched"}
        if "chunked" in row:
            row["chunked"]["ratio_to_loop"] = (
                row["chunked"]["fits_per_s"] / row["loop"]["fits_per_s"]
            )
        for w in lanes:
            rw = results[f"lanes={w}"]
            row[f"lanes={w}"]["lanes"] = w
            row.setdefault("lanes", {})[w] = {
                "fits_per_s": row[f"lanes={w}"]["fits_per_s"],
                "max_abs_x_diff": _max_diff(xb, rw.x),
                "converged": int(np.sum(np.asarray(rw.converged))),
            }
        row["converged"] = {
            "batched": int(np.sum(np.asarray(rb.converged))),
            "loop": int(sum(bool(r.converged) for r in results["loop"])),
        }
        row["max_abs_x_diff"] = {
            "loop": _max_diff(xb[:n_loop], np.stack([np.asarray(r.x) for r in results["loop"]]))
        }
        row["steps_max"] = {"batched": int(np.max(np.asarray(rb.steps)))}
        if "chunked" in results:
            rc = results["chunked"]
            row["converged"]["chunked"] = int(np.sum(np.asarray(rc.converged)))
            row["max_abs_x_diff"]["chunked"] = _max_diff(xb, rc.x)
        for h in hands:
            x, _, _, steps, conv = results[h]
            row["converged"][h] = int(np.sum(np.asarray(conv)))
            row["max_abs_x_diff"][h] = _max_diff(xb[:n_hand], x)
            row["steps_max"][h] = int(np.max(np.asarray(steps)))
        if "fits_per_s" in caskade:
            m = min(n, caskade["datasets"])
            row["ratio"]["caskade+scipy"] = rate / caskade["fits_per_s"]
            row["max_abs_x_diff"]["caskade+scipy"] = _max_diff(xb[:m], caskade["x"][:m])
            row["converged"]["caskade+scipy"] = f"{sum(caskade['success'][:m])} of {m} (scipy)"
        rows.append(row)
        print(
            f"N={n}: batched {rate:.1f} fits/s; ratios "
            + ", ".join(f"{k} {v:.2f}x" for k, v in row["ratio"].items()),
            flush=True,
        )
    return rows


# -- memory: one fresh process per N and variant -------------------------------------------
def _status_mib(field):
    """A memory field of /proc/self/status (VmRSS, VmHWM) in MiB; NaN elsewhere."""
    try:
        with open("/proc/self/status") as fh:
            for line in fh:
                if line.startswith(field + ":"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return float("nan")


def memory_worker(n, batch_size):
    import jax

    import caskax as cx
    from caskax.examples.stages import stage3_model

    data, clean = clean_images()
    f = cx.compile(stage3_model(data))
    images = datasets(clean, n, data.sigma_read, data.exp_time)
    F = cx.batch(f, data=images)
    # jax copies host arrays onto the device in the background: wait for the copy and
    # free the numpy source, so that neither is counted as the fit's memory
    jax.block_until_ready(F.arrays)
    del images
    gc.collect()
    rss_before = _status_mib("VmRSS")
    peak_before = _status_mib("VmHWM")
    # The peak resident set is a high-water mark: reset it (Linux clear_refs 5) so that
    # the one read after the fit is the fit's own. ru_maxrss cannot be reset, and in a
    # child process it starts from the parent's peak at the fork, so it is only kept
    # for reference.
    try:
        with open("/proc/self/clear_refs", "w") as fh:
            fh.write("5")
        reset = True
    except OSError:
        reset = False
    t0 = time.perf_counter()
    res = jax.block_until_ready(cx.fit(F, maxiter=MAXITER, tol=TOL, batch_size=batch_size))
    wall = time.perf_counter() - t0
    peak = _status_mib("VmHWM")
    print(
        json.dumps(
            {
                "datasets": n,
                "batch_size": batch_size,
                "rss_before_fit_mib": rss_before,
                "peak_rss_before_fit_mib": peak_before,
                "peak_rss_mib": peak if reset else max(peak, peak_before),
                "fit_mib": peak - rss_before,
                "peak_reset": reset,
                # KiB on Linux
                "ru_maxrss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
                "first_call_s": wall,
                "converged": int(np.sum(np.asarray(res.converged))),
            }
        )
    )


def run_memory(sizes, chunk):
    rows = []
    for n in sizes:
        # the chunked rows again with glibc's mmap threshold fixed at 128 KiB: by default
        # glibc raises it after large frees, and the heap then keeps freed chunk buffers
        variants = [(None, None)] + ([(chunk, None), (chunk, MMAP_THRESHOLD)] if n > chunk else [])
        for bs, threshold in variants:
            cmd = [sys.executable, str(Path(__file__).resolve()), "--memory-worker", str(n)]
            cmd += [] if bs is None else ["--batch-size", str(bs)]
            env = dict(os.environ)
            if threshold is not None:
                env["MALLOC_MMAP_THRESHOLD_"] = str(threshold)
            proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
            if proc.returncode != 0:
                rows.append({"datasets": n, "batch_size": bs, "failed": proc.stderr[-2000:]})
                continue
            rows.append(json.loads(proc.stdout.strip().splitlines()[-1]))
            r = rows[-1]
            r["mmap_threshold"] = threshold
            print(
                f"memory N={n} batch_size={bs} mmap_threshold={threshold}: peak "
                f"{r['peak_rss_mib']:.0f} MiB (before the fit {r['rss_before_fit_mib']:.0f} MiB)",
                flush=True,
            )
    return rows


# -- NUTS -------------------------------------------------------------------------------------
def run_nuts(n, num_warmup, num_samples, num_chains=4):
    """NUTS on ``n`` datasets: one batched ``cx.nuts`` call against a loop of ``cx.nuts``
    with the same per-dataset keys (``jax.random.split(key, n)``). Wall times exclude the
    first call's compile (the batched call is timed on its second run, the loop after one
    warm-up call); ESS is each dataset's smallest bulk ESS over its entries."""
    import jax

    import caskax as cx
    from caskax.examples.stages import stage3_model

    data, clean = clean_images()
    f = cx.compile(stage3_model(data))
    F = cx.batch(f, data=datasets(clean, n, data.sigma_read, data.exp_time))
    key = jax.random.key(0)
    kw = dict(num_warmup=num_warmup, num_samples=num_samples, num_chains=num_chains, progress=False)
    first_batched = once(lambda: cx.nuts(F, key, **kw).samples)
    t0 = time.perf_counter()
    chains = cx.nuts(F, key, **kw)
    wall_b = time.perf_counter() - t0
    keys = jax.random.split(key, n)
    members = [F[k] for k in range(n)]
    first_loop = once(lambda: cx.nuts(members[0], keys[0], **kw).samples)
    t0 = time.perf_counter()
    alone = [cx.nuts(g, k, **kw) for g, k in zip(members, keys)]
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
            "ess_per_s_per_dataset": float(np.sum(ess_b) / wall_b / n),
        },
        "loop": {
            "first_s": first_loop,
            "wall_s": wall_l,
            "ess_min_median": float(np.median(ess_l)),
            "ess_per_s_per_dataset": float(np.sum(ess_l) / wall_l / n),
        },
        "ratio": float((np.sum(ess_b) / wall_b) / (np.sum(ess_l) / wall_l)),
        "divergences": {
            "batched": int(np.sum(chains.divergences)),
            "loop": int(sum(int(np.sum(c.divergences)) for c in alone)),
        },
    }


# -- output -----------------------------------------------------------------------------------
def meta(command):
    import jax
    import jaxlib
    import optax

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
        "optax": optax.__version__,
        "backend": jax.default_backend(),
        "devices": [str(d) for d in jax.devices()],
        "cpu": platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(),
        "load": uptime(),
        "model": "stage3_model (5 epochs of 50x50 px, SN fluxes pointers to one light "
        "curve, 11 entries)",
        "fit": {"method": "lbfgs", "maxiter": MAXITER, "tol": TOL},
    }


def _load(line):
    # uptime's load averages, without its clock time
    return line[line.find("load average") :] if "load average" in line else "load -"


def _rate(r, key):
    v = r.get(key)
    if not v:
        return "-"
    sub = f" ({v['datasets']} of {r['datasets']})" if v["datasets"] != r["datasets"] else ""
    return f"{v['fits_per_s']:.2f}{sub}"


def markdown(result) -> str:
    m = result["meta"]
    hands = [h for h in ("hand-opt", "hand") if result["rows"] and h in result["rows"][0]]
    ck = result.get("caskade", {})
    ck_rate = f"{ck['fits_per_s']:.4f}" if "fits_per_s" in ck else "-"
    lines = [
        "Fits per second (median of the timed rounds; `(m of N)`: timed on the first m "
        "datasets, per fit):",
        "",
        "| N | cx.fit(cx.batch) | batch_size chunks | loop of cx.fit | "
        + " | ".join(f"{h} vmapped optax" for h in hands)
        + " | caskade+scipy loop |",
        "|---:|---:|---:|---:|" + "---:|" * len(hands) + "---:|",
    ]
    for r in result["rows"]:
        cells = [str(r["datasets"]), _rate(r, "batched"), _rate(r, "chunked"), _rate(r, "loop")]
        cells += [_rate(r, h) for h in hands] + [ck_rate]
        lines.append("| " + " | ".join(cells) + " |")
    lines += [
        "",
        "Ratios (batched fits/s over each peer's), agreement with the batched fits "
        "(max |x diff|) and converged counts:",
        "",
        "| N | vs loop (target 5x) | vs caskade+scipy (target 200x) | "
        + " | ".join(f"vs {h} (target 0.83x)" for h in hands)
        + " | max abs x diff | converged | max steps |",
        "|---:|---:|---:|" + "---:|" * len(hands) + "---|---|---|",
    ]
    for r in result["rows"]:
        ratio = r["ratio"]
        cells = [
            str(r["datasets"]),
            f"{ratio['loop']:.1f}x",
            f"{ratio['caskade+scipy']:.0f}x" if "caskade+scipy" in ratio else "-",
        ]
        cells += [f"{ratio[h]:.2f}x" for h in hands]
        cells.append(", ".join(f"{k} {v:.1e}" for k, v in r["max_abs_x_diff"].items()))
        cells.append(
            ", ".join(
                f"{k} {v}/{r[k]['datasets']}" if isinstance(v, int) else f"{k} {v}"
                for k, v in r["converged"].items()
            )
        )
        cells.append(", ".join(f"{k} {v}" for k, v in r["steps_max"].items()))
        lines.append("| " + " | ".join(cells) + " |")
    c = result.get("ceiling")
    if c:
        lines += [
            "",
            f"Evaluation ceiling: one value-and-gradient of the model costs {c['alone_us']:.0f} us "
            f"alone and {c['per_dataset_us']:.0f} us per dataset with {c['width']} side by side "
            f"(each timed in a compiled loop). A fit is that evaluation repeated, so on this "
            f"machine batching can speed a compute-bound fit up by about {c['ceiling']:.1f}x; "
            "the rest of the gain over the loop is the per-call and per-step overhead that "
            "the batch shares.",
        ]
    lanes = sorted({w for r in result["rows"] for w in r.get("lanes", {})}, key=int)
    if lanes:
        lines += [
            "",
            "cx.fit(F, lanes=L), fits/s (max |x diff| from the batched fits):",
            "",
            "| N | " + " | ".join(f"lanes={w}" for w in lanes) + " |",
            "|---:|" + "---:|" * len(lanes),
        ]
        for r in result["rows"]:
            got = {str(k): v for k, v in r.get("lanes", {}).items()}
            cells = [
                f"{got[str(w)]['fits_per_s']:.2f} ({got[str(w)]['max_abs_x_diff']:.0e})"
                if str(w) in got
                else "-"
                for w in lanes
            ]
            lines.append(f"| {r['datasets']} | " + " | ".join(cells) + " |")
    if "fits_per_s" in ck:
        cap = f", maxfev {ck['maxfev']}" if ck.get("maxfev") else ""
        lines += [
            "",
            f"caskade+scipy: Nelder-Mead on torch {ck['torch']} ({ck['torch_threads']} threads"
            f"{cap}), {ck['datasets']} datasets, median nfev {np.median(ck['nfev']):.0f}, "
            f"{np.mean(ck['seconds']):.1f} s per fit.",
        ]
    elif ck:
        lines += ["", f"caskade+scipy: not run ({ck.get('skipped') or 'failed'})."]
    if result.get("memory"):
        lines += [
            "",
            "Resident memory (MiB), one fresh process per row: before the fit (imports, "
            "data, model), the peak during one `cx.fit` (VmHWM, reset before the fit) "
            "and the fit's increase over the memory before it:",
            "",
            "| N | batch_size | malloc | before the fit | peak during the fit | fit's increase "
            "| first call (s) |",
            "|---:|---:|---|---:|---:|---:|---:|",
        ]
        for r in result["memory"]:
            if "failed" in r:
                lines.append(f"| {r['datasets']} | {r['batch_size'] or '-'} | | failed | | | |")
                continue
            threshold = r.get("mmap_threshold")
            malloc = "default" if threshold is None else f"mmap threshold {threshold // 1024} KiB"
            lines.append(
                f"| {r['datasets']} | {r['batch_size'] or '-'} | {malloc} | "
                f"{r['rss_before_fit_mib']:.0f} | {r['peak_rss_mib']:.0f} | "
                f"{r['fit_mib']:.0f} | {r['first_call_s']:.1f} |"
            )
    r = result.get("nuts")
    if r:
        lines += [
            "",
            f"NUTS, {r['datasets']} datasets x {r['chains']} chains ({r['num_warmup']} warmup + "
            f"{r['num_samples']} draws):",
            "",
            "| | wall (s) | median of each dataset's min bulk ESS | ESS/s per dataset |",
            "|---|---:|---:|---:|",
            f"| cx.nuts(cx.batch) | {r['batched']['wall_s']:.1f} | "
            f"{r['batched']['ess_min_median']:.0f} | {r['batched']['ess_per_s_per_dataset']:.2f} |",
            f"| loop of cx.nuts | {r['loop']['wall_s']:.1f} | {r['loop']['ess_min_median']:.0f} | "
            f"{r['loop']['ess_per_s_per_dataset']:.2f} |",
            "",
            f"ratio {r['ratio']:.2f}x; first batched call (with compile) "
            f"{r['batched']['first_s']:.1f} s",
        ]
    lines += [
        "",
        f"{m['cpu_count']} CPU cores ({m['cpu']}), jax {m['jax']} ({m['backend']}), "
        f"optax {m['optax']}, python {m['python']}; "
        f"{_load(m['load'])} at the start, {_load(m.get('load_end', ''))} at the end; "
        f"`{m['command']}`",
    ]
    return "\n".join(lines)


def _sizes(text):
    try:
        sizes = tuple(int(s) for s in text.split(",") if s.strip())
    except ValueError:
        sizes = ()
    if not sizes or min(sizes) < 1:
        raise argparse.ArgumentTypeError(f"expected N1,N2,... (each >= 1), got {text!r}")
    return sizes


def main(argv=None):
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--quick",
        action="store_true",
        help="smoke run: N = 1, 4, batch_size 2, one round, hand-opt only, caskade capped at 30 "
        "evaluations, NUTS on 2 datasets with 50 + 50 draws (writes batch-quick.json)",
    )
    parser.add_argument("--sizes", type=_sizes, default=None, help="N values (1,16,256,4096)")
    parser.add_argument("--memory-sizes", type=_sizes, default=None, help="N of the memory rows")
    parser.add_argument("--no-memory", action="store_true", help="skip the memory rows")
    parser.add_argument(
        "--repeats", type=int, default=None, help="timed rounds (3; 1 with --quick)"
    )
    parser.add_argument(
        "--batch-size", type=int, default=None, help=f"chunk of the chunked rows ({CHUNK})"
    )
    parser.add_argument(
        "--lanes", type=_sizes, default=(), help="also time cx.fit(F, lanes=L) for each L"
    )
    parser.add_argument("--hand-max", type=int, default=HAND_MAX, help="datasets of hand fits")
    parser.add_argument("--loop-max", type=int, default=LOOP_MAX, help="datasets of the loop")
    parser.add_argument(
        "--caskade-datasets", type=int, default=None, help="caskade+scipy fits (3; 0 skips)"
    )
    parser.add_argument(
        "--nuts-datasets", type=int, default=None, help="NUTS datasets (64; 0 skips)"
    )
    parser.add_argument("--out", default=str(ROOT / "benchmarks"), help="folder for batch.json")
    parser.add_argument("--caskade-worker", help=argparse.SUPPRESS)
    parser.add_argument("--memory-worker", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.caskade_worker:
        return caskade_worker(args.caskade_worker)
    if args.memory_worker:
        return memory_worker(args.memory_worker, args.batch_size)

    if args.lanes:
        import inspect

        import caskax as cx

        if "lanes" not in inspect.signature(cx.fit).parameters:
            parser.error("--lanes: this caskax's cx.fit takes no lanes argument")
    quick = args.quick
    sizes = args.sizes or ((1, 4) if quick else SIZES)
    repeats = args.repeats or (1 if quick else 3)
    hands = ("hand-opt",) if quick else ("hand-opt", "hand")
    n_ck = args.caskade_datasets if args.caskade_datasets is not None else (1 if quick else 3)
    n_nuts = args.nuts_datasets if args.nuts_datasets is not None else (2 if quick else 64)
    loop_max = min(args.loop_max, 4) if quick else args.loop_max
    chunk = args.batch_size or (2 if quick else CHUNK)
    command = "python benchmarks/batch.py " + " ".join(sys.argv[1:] if argv is None else list(argv))
    result = {"meta": meta(command.strip())}
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    path = out / ("batch-quick.json" if quick else "batch.json")

    def save():
        path.write_text(json.dumps(result, indent=1))

    if n_ck:
        import caskax as cx
        from caskax.examples.stages import stage3_model

        data, clean = clean_images()
        init = np.asarray(cx.compile(stage3_model(data)).init)
        images = datasets(clean, n_ck, data.sigma_read, data.exp_time)
        result["caskade"] = run_caskade(data, images, init, maxfev=30 if quick else 0)
        save()
    result["ceiling"] = run_ceiling(calls=20 if quick else 100)
    c = result["ceiling"]
    print(f"evaluation ceiling {c['ceiling']:.2f}x at {c['width']} side by side", flush=True)
    save()
    result["rows"] = run(
        sizes,
        repeats,
        chunk,
        loop_max,
        args.hand_max,
        hands,
        result.get("caskade", {}),
        args.lanes,
    )
    save()
    if not args.no_memory:
        result["memory"] = run_memory(args.memory_sizes or sizes, chunk)
        save()
    if n_nuts:
        result["nuts"] = run_nuts(n_nuts, *((50, 50) if quick else (200, 200)))
        print(f"NUTS: ratio {result['nuts']['ratio']:.2f}", flush=True)
    result["meta"]["load_end"] = uptime()
    save()
    print(markdown(result))
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
