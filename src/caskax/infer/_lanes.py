"""How a batched Program's datasets share one compiled call: side by side (``vmap``)
or in groups of ``lanes`` run one group after another (``lax.map``).

On a GPU every dataset of a chunk runs side by side. On the CPU a wide ``vmap`` loses
twice: the arrays of many datasets no longer fit in the caches, so each evaluation costs
more per dataset, and every dataset waits for the slowest of its group in a loop (a
fit's line search, a NUTS trajectory). For the tutorial's five-epoch model, one value
and gradient timed inside a compiled loop (``benchmarks/batch.py``'s ``run_ceiling``)
took 139-169 us alone, and per dataset 118 us at 4 side by side, 104 us at 16, 127 us
at 64 and 153 us at 256. A few lanes keep the per-step overhead shared without either
cost; ``benchmarks/batch.py --lanes`` measures the fits.
"""

import jax
import numpy as np

__all__ = [
    "CPU_LANES",
    "CPU_NUTS_LANES",
    "CPU_LAPLACE_LANES",
    "resolve_lanes",
    "lanes_for",
    "map_datasets",
]

# The fastest width for the tutorial's models on a 2-core CPU, from
# ``python benchmarks/batch.py --lanes 1,2,4,8,16,32`` (see its table).
CPU_LANES = 16
# NUTS: a dataset's chains already run side by side, and every trajectory of a group
# waits for the longest. 8 single-image datasets x 4 chains (200 + 200 draws) took
# 7.6 s at 1 lane, 8.8 s at 2 and 12.5 s at 8 on a 2-core CPU.
CPU_NUTS_LANES = 1
# Laplace: each dataset's Hessian is already vmapped over the basis vectors; 256
# stage-3 datasets took 0.42 s at 1 lane, 0.55 s at 4, 0.77 s at 16 and 1.3 s at 256.
CPU_LAPLACE_LANES = 1


def resolve_lanes(lanes, what: str, cpu: int = CPU_LANES) -> int | None:
    """``lanes`` checked: ``None`` picks ``cpu`` on the CPU and every dataset at once
    elsewhere (returned as ``None``); otherwise an integer >= 1."""
    from ..errors import InferenceError

    if lanes is None:
        return cpu if jax.default_backend() == "cpu" else None
    ok = not isinstance(lanes, bool) and isinstance(lanes, (int, np.integer)) and lanes >= 1
    if not ok:
        raise InferenceError(
            f"{what}: lanes must be an integer >= 1 (datasets run side by side in one "
            f"vmapped program), or None for the backend's default; got {lanes!r}."
        )
    return int(lanes)


def map_datasets(one, arrays, in_axes, xs, lanes):
    """``jax.vmap(one, in_axes=(in_axes, 0, ...))(arrays, *xs)``, run ``lanes`` datasets
    at a time with ``jax.lax.map`` when ``lanes`` is smaller than the count.

    ``arrays`` are a batched Program's leaves (``in_axes`` 0 for those with a dataset
    axis, ``None`` for shared ones) and ``xs`` per-dataset arrays (leading axis).
    Each dataset's result is the same either way, up to floating-point rounding.

    Example:
        >>> import jax.numpy as jnp
        >>> out = map_datasets(lambda a, x: a[0] * x, [jnp.arange(4.0)], (0,), (jnp.ones(4),), 2)
        >>> out.tolist()
        [0.0, 1.0, 2.0, 3.0]
    """
    n = next(int(np.shape(x)[0]) for x in xs)
    if lanes is None or lanes >= n:
        return jax.vmap(one, in_axes=(tuple(in_axes), *(0 for _ in xs)))(tuple(arrays), *xs)
    own = [a for a, ax in zip(arrays, in_axes) if ax == 0]

    def body(args):
        mine, row = args
        it = iter(mine)
        full = tuple(next(it) if ax == 0 else a for a, ax in zip(arrays, in_axes))
        return one(full, *row)

    # one lane: a plain scan, since a vmap of one still batches the loops inside
    return jax.lax.map(body, (own, tuple(xs)), batch_size=None if lanes == 1 else lanes)


def lanes_for(lanes, *trees) -> int | None:
    """``lanes``, or ``None`` (all side by side) when any array of ``trees`` is spread
    over several devices: a ``lax.map`` would walk the sharded axis one group at a time
    and gather it onto one device. Called outside ``jit``, on concrete arrays."""
    for a in jax.tree.leaves(trees):
        sharding = getattr(a, "sharding", None)
        if sharding is not None and len(sharding.device_set) > 1:
            return None
    return lanes
