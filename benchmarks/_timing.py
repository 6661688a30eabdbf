"""Timing helpers shared by the benchmark scripts (no jax or torch import here).

Every timing: warm-up calls, then at least ``repeats`` timed calls, each ending with
``block_until_ready`` (jax) so that asynchronous dispatch is counted; the summary is
min / median / max in seconds. `compare` interleaves several candidates in rounds so
that slow drifts of the machine (frequency, other processes) hit them alike, which a
ratio near 1.0 needs.
"""

from __future__ import annotations

import gc
import statistics
import time

__all__ = ["block", "summary", "timeit", "compare", "once", "fmt_time"]


def block(out):
    """Wait for ``out`` (any pytree of jax arrays; torch and numpy need no wait)."""
    if hasattr(out, "block_until_ready"):
        out.block_until_ready()
        return out
    if isinstance(out, (tuple, list)):
        for o in out:
            block(o)
    elif isinstance(out, dict):
        for o in out.values():
            block(o)
    return out


def summary(samples: list[float]) -> dict:
    return {
        "min": min(samples),
        "median": statistics.median(samples),
        "max": max(samples),
        "n": len(samples),
    }


def _samples(fn, n):
    out = []
    for _ in range(n):
        t0 = time.perf_counter()
        block(fn())
        out.append(time.perf_counter() - t0)
    return out


def timeit(fn, repeats: int = 20, warmup: int = 2, budget_s: float = 2.0) -> dict:
    """Median-of-repeats timing of ``fn()``. Fast functions get more repeats (up to what
    fits in ``budget_s``), never fewer than ``repeats``."""
    block(fn())  # the first call may trace and compile: not part of the estimate
    t0 = time.perf_counter()
    for _ in range(max(warmup, 1)):
        block(fn())
    per = (time.perf_counter() - t0) / max(warmup, 1)
    n = max(repeats, min(5000, int(budget_s / max(per, 1e-7))))
    gc.collect()
    gc.disable()
    try:
        return summary(_samples(fn, n))
    finally:
        gc.enable()


def compare(
    fns: dict, repeats: int = 20, warmup: int = 3, rounds: int = 5, budget_s: float = 3.0
) -> dict:
    """Time several zero-argument callables in interleaved rounds; returns
    ``{name: summary}`` over all rounds' samples."""
    per = {}
    for name, fn in fns.items():
        block(fn())  # the first call may trace and compile: not part of the estimate
        t0 = time.perf_counter()
        for _ in range(max(warmup, 1)):
            block(fn())
        per[name] = (time.perf_counter() - t0) / max(warmup, 1)
    slowest = max(per.values())
    total = max(repeats, min(5000, int(budget_s / max(len(fns) * slowest, 1e-7))))
    rounds = max(1, min(rounds, total // 4 or 1))
    n = -(-total // rounds)
    samples = {name: [] for name in fns}
    gc.collect()
    gc.disable()
    try:
        for _ in range(rounds):
            for name, fn in fns.items():
                samples[name].extend(_samples(fn, n))
    finally:
        gc.enable()
    return {name: summary(s) for name, s in samples.items()}


def once(fn) -> float:
    """Wall time of one call of ``fn()`` (for compile + first call)."""
    gc.collect()
    t0 = time.perf_counter()
    block(fn())
    return time.perf_counter() - t0


def fmt_time(s: float) -> str:
    if s < 1e-3:
        return f"{s * 1e6:.1f} µs"
    if s < 1:
        return f"{s * 1e3:.2f} ms"
    return f"{s:.2f} s"


def uptime() -> str:
    """`uptime`'s line (or the load averages): the load a run was measured under."""
    import os
    import subprocess

    try:
        return subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip()
    except OSError:
        load = os.getloadavg()
        return f"load average: {load[0]:.2f}, {load[1]:.2f}, {load[2]:.2f}"


def write_outputs(out, stem: str, mode: str, result: dict, markdown, t_start: float) -> None:
    """Write ``<stem>[-mode].json`` and ``.md`` into ``out`` and print the table."""
    import json
    from pathlib import Path

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    name = stem if mode == "full" else f"{stem}-{mode}"
    (out / f"{name}.json").write_text(json.dumps(result, indent=1, default=float))
    md = markdown(result)
    (out / f"{name}.md").write_text(md)
    print(md)
    print(f"wrote {out / f'{name}.json'} and .md in {time.perf_counter() - t_start:.0f} s")
