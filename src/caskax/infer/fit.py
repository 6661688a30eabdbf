"""Maximum-likelihood (or MAP) fits of a Program with optax, the whole loop jitted."""

import math
from typing import NamedTuple

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import optax

from ..batch import BatchedProgram, _on_devices as on_devices, _run_in_chunks as run_in_chunks
from ..errors import InferenceError, ShapeError
from ..program import Program
from ._jit import inference_jit, run_once_jit
from ._lanes import lanes_for, map_datasets, resolve_lanes
from ._target import (
    Target,
    check_finite_start,
    check_program,
    constrained_init,
    group_sizes,
    init_vector,
    layout_of,
    names_of,
    split_by_name,
    start_vector,
)

__all__ = ["fit", "FitResult"]

_METHODS = ("lbfgs", "adam")


class FitResult(eqx.Module):
    """The outcome of `fit`: a pytree of arrays (so it batches under ``jax.vmap``).

    **Fields:** ``x`` (the maximiser, in ``f``'s input space: constrained unless ``f``
    was compiled with ``valid=True``), ``value`` (``f(x)``), ``grad_norm`` (``|grad f|``
    at ``x``, in the space optimised), ``steps`` (iterations run), ``converged`` (the
    ``tol`` test passed). ``layout`` (static) holds ``(name, shape)`` per param.

    Unpacks like a tuple: ``x, value, grad_norm, steps, converged = result``.

    Example:
        >>> import caskax as cx, jax.numpy as jnp
        >>> x, value, grad_norm, steps, converged = cx.fit(lambda x: -jnp.sum((x - 1.0) ** 2), jnp.zeros(2))
        >>> [round(float(v), 3) for v in x], bool(converged)
        ([1.0, 1.0], True)
    """

    x: jax.Array
    value: jax.Array
    grad_norm: jax.Array
    steps: jax.Array
    converged: jax.Array
    layout: tuple = eqx.field(static=True, default=())

    def __iter__(self):
        return iter((self.x, self.value, self.grad_norm, self.steps, self.converged))

    @property
    def names(self) -> list:
        """One label per entry of ``x``."""
        return names_of(self.layout)

    def by_name(self) -> dict:
        """``{param name: value}``, each shaped like its param (with any vmap axes
        leading).

        Example:
            >>> import caskax as cx
            >>> from caskax.examples import Gaussian1D
            >>> import jax.numpy as jnp
            >>> f = cx.compile(Gaussian1D("lc", t0=0.0, sigma=1.0, peak_flux=1.0).to_dynamic("t0"),
            ...                "flux", jnp.array(0.0))
            >>> res = cx.fit(f, jnp.array([0.5]))   # the peak is at t0 = 0
            >>> abs(float(res.by_name()["lc.t0"])) < 1e-3
            True
        """
        return split_by_name(self.layout, self.x, self.x.shape[:-1])


def _loss(target):
    # in x0's dtype: the loop's carry needs one, and a float32 start on a model that
    # computes in float64 (x64 on) would otherwise bring two
    return lambda z: (-target.logdensity(z)).astype(z.dtype)


def _threshold(tol, value):
    return tol * jnp.maximum(1.0, jnp.abs(value))


class _LBFGS(NamedTuple):
    """The carry of `_run_lbfgs`'s loop."""

    z: jax.Array  # the last accepted point, its loss and gradient
    value: jax.Array
    grad: jax.Array
    direction: jax.Array
    step: jax.Array  # the step length tried next along `direction`
    lo: jax.Array  # the line search's bracket on the step, and the slopes there
    hi: jax.Array
    slope_lo: jax.Array
    slope_hi: jax.Array
    tries: jax.Array  # trial points of the current line search
    memory: optax.ScaleByLBFGSState
    steps: jax.Array  # accepted steps
    fresh: jax.Array  # the start is not evaluated yet
    start_ok: jax.Array
    stalled: jax.Array


_C1, _C2 = 1e-4, 0.9  # sufficient decrease and curvature (strong Wolfe) constants
_MAX_TRIES = 30


def _run_lbfgs(loss, z0, maxiter, tol, learning_rate):
    # optax's L-BFGS direction (optax.scale_by_lbfgs) with a strong-Wolfe line search:
    # double the step while the slope along the line is still steep, and once a step
    # has gone past the line's minimum (or failed to decrease the loss) put the next one
    # where the secant of the slopes at the bracket's ends crosses zero. The search is
    # written into the loop so that each iteration evaluates the loss once: optax.lbfgs's
    # zoom line search and value_and_grad_from_state evaluate it in three places, and
    # XLA compiles each copy of the model's gradient (about 2x the compile of this loop,
    # measured in benchmarks/compile_options.py). On the worked example's fits this
    # loop also takes about 8% fewer evaluations than optax.lbfgs. Near the optimum
    # float32 cannot resolve the sufficient decrease, so Hager & Zhang's approximate
    # Wolfe test also passes.
    del learning_rate  # the line search sets the step
    lbfgs = optax.scale_by_lbfgs()
    value_and_grad = jax.value_and_grad(loss)
    zero, inf = jnp.zeros((), z0.dtype), jnp.array(jnp.inf, z0.dtype)

    def step(c):
        trial = c.z + c.step * c.direction
        value, grad = value_and_grad(trial)
        slope0, slope = jnp.vdot(c.grad, c.direction), jnp.vdot(grad, c.direction)
        decrease = _finite(value, grad) & (
            (value <= c.value + _C1 * c.step * slope0)
            | ((value <= c.value + 1e-6 * jnp.abs(c.value)) & (slope <= (2 * _C1 - 1) * slope0))
        )
        last_try = c.tries + 1 >= _MAX_TRIES
        flat = jnp.abs(slope) <= -_C2 * slope0  # strong Wolfe curvature
        accept = c.fresh | (decrease & (flat | last_try))

        def accepted():
            update, memory = lbfgs.update(grad, c.memory, trial)
            # A curvature pair accepted on the last try can spoil the memory: fall back
            # to steepest descent rather than leave along an ascent direction.
            direction = jnp.where(jnp.vdot(grad, update) > 0, -update, -grad)
            slope_next = jnp.vdot(grad, direction)
            return c._replace(
                z=trial,
                value=value,
                grad=grad,
                direction=direction,
                step=jnp.ones_like(zero),
                lo=zero,
                hi=inf,
                slope_lo=slope_next,
                slope_hi=zero,
                tries=jnp.int32(0),
                memory=memory,
                steps=c.steps + (~c.fresh),
                start_ok=jnp.where(c.fresh, _finite(value, grad), c.start_ok),
            )

        def rejected():
            # past the minimum along the line (or no decrease): the step is an upper end
            upper = ~decrease | (slope > 0)
            lo = jnp.where(upper, c.lo, c.step)
            hi = jnp.where(upper, c.step, c.hi)
            s_lo = jnp.where(upper, c.slope_lo, slope)
            s_hi = jnp.where(upper, jnp.where(decrease | (slope > 0), slope, zero), c.slope_hi)
            # the zero of the slope between lo and hi by the secant, kept inside the
            # bracket's middle 80 %; bisection where the slopes do not bracket a zero
            width = hi - lo
            secant = lo - s_lo * width / (s_hi - s_lo)
            inside = (s_lo < 0) & (s_hi > 0)
            guess = jnp.where(
                inside, jnp.clip(secant, lo + 0.1 * width, hi - 0.1 * width), lo + 0.5 * width
            )
            new = jnp.where(jnp.isinf(hi), 2 * c.step, guess)
            return c._replace(
                step=new,
                lo=lo,
                hi=hi,
                slope_lo=s_lo,
                slope_hi=s_hi,
                tries=c.tries + 1,
                stalled=last_try & ~decrease,
            )

        # both outcomes, then a select: cheap next to the model, and it ran in 0.8x-0.9x
        # the time of a lax.cond here
        c = jax.tree.map(lambda a, r: jnp.where(accept, a, r), accepted(), rejected())
        # A step below float resolution cannot move z any more.
        return c._replace(
            fresh=jnp.array(False), stalled=c.stalled | jnp.all(c.z + c.step * c.direction == c.z)
        )

    def keep_going(c):
        small = jnp.linalg.norm(c.grad) <= _threshold(tol, c.value)
        return c.fresh | ((c.steps < maxiter) & ~small & ~c.stalled & jnp.isfinite(c.value))

    start = _LBFGS(
        z0,
        inf,
        jnp.zeros_like(z0),
        jnp.zeros_like(z0),
        zero,
        zero,
        inf,
        zero,
        zero,
        jnp.int32(0),
        lbfgs.init(z0),
        jnp.int32(0),
        jnp.array(True),
        jnp.array(True),
        jnp.array(False),
    )
    c = jax.lax.while_loop(keep_going, step, start)
    return c.z, c.value, jnp.linalg.norm(c.grad), c.steps, c.start_ok


def _run_adam(loss, z0, maxiter, tol, learning_rate):
    opt = optax.adam(learning_rate)
    vg = jax.value_and_grad(loss)

    def step(carry):
        z, state, _, grad, k = carry
        updates, state = opt.update(grad, state, z)
        z = optax.apply_updates(z, updates)
        value, grad = vg(z)
        return z, state, value, grad, k + 1

    def keep_going(carry):
        _, _, value, grad, k = carry
        small = jnp.linalg.norm(grad) <= _threshold(tol, value)
        return (k < maxiter) & ~small & jnp.isfinite(value)

    value0, grad0 = vg(z0)
    carry = (z0, opt.init(z0), value0, grad0, jnp.array(0, dtype=jnp.int32))
    z, _, value, grad, k = jax.lax.while_loop(keep_going, step, carry)
    return z, value, jnp.linalg.norm(grad), k, _finite(value0, grad0)


def _finite(value, grad):
    return jnp.isfinite(value) & jnp.all(jnp.isfinite(grad))


def _fit_impl(target, z0, method, maxiter, tol, learning_rate, layout):
    loss = _loss(target)
    run = _run_lbfgs if method == "lbfgs" else _run_adam
    z, loss_value, gnorm, steps, start_ok = run(loss, z0, maxiter, tol, learning_rate)
    value = -loss_value
    converged = (gnorm <= _threshold(tol, value)) & jnp.isfinite(value)
    # A valid=True Program takes u: report x in its own input space, like x0.
    x = z if (target.is_program and target.f.valid) else target.to_x(z)
    return FitResult(x, value, gnorm, jnp.asarray(steps, jnp.int32), converged, layout), start_ok


# One copy of the model's gradient in the loop: on the CPU, inference_jit's options
# compile it in about 0.7x the time, and the loop runs about as fast
# (benchmarks/compile_options.py).
_fit = inference_jit(_fit_impl)


def fit(
    f,
    x0=None,
    method: str = "lbfgs",
    maxiter: int = 1000,
    tol: float = 1e-6,
    valid: bool = False,
    learning_rate: float | None = None,
    *,
    batch_size: int | None = None,
    progress: bool = False,
    out=None,
    resume: bool = False,
    lanes: int | None = None,
) -> FitResult:
    """Maximise ``f`` (a log-likelihood or log-posterior) with optax.

    The whole loop runs in one ``jax.lax.while_loop`` inside ``jit``: no Python per
    step. ``"lbfgs"`` steps along optax's L-BFGS direction (``optax.scale_by_lbfgs``)
    with a strong-Wolfe line search that evaluates ``f`` once per loop iteration, so the
    model's gradient is compiled once (``optax.lbfgs`` evaluates it in three places);
    ``maxiter`` counts accepted steps. ``"adam"`` is ``optax.adam(learning_rate)``
    (default ``1e-2``).

    **Stopping rule.** ``tol`` is relative: the fit stops (``converged=True``) once
    ``|grad f| <= tol * max(1, |f|)``. Float32 cannot resolve gradients much below
    ``1e-7 * |f|`` times the curvature scale, so a log-likelihood near ``2e4`` has a
    gradient floor near ``1e-2``: the default ``1e-6`` asks for about that. L-BFGS
    also stops when its line search can no longer move ``x`` (then ``converged``
    reports whether the gradient test holds there); both stop at ``maxiter`` or on a
    non-finite value.

    **Arguments:**

    - ``f``: a caskax `Program` (priors are not added: ``fit`` maximises ``f`` itself)
      or any function of a flat vector returning a scalar. A Program with several
      param groups is fitted as one vector, its groups joined in order (``x`` and
      ``names`` follow that order).
    - ``x0``: start, ``f.init`` when ``None`` (required for a plain function).
    - ``valid``: optimise ``u = f.to_valid(x)`` in unconstrained space, so bounded
      params never leave their valid range; ``x0`` and the result stay constrained. A
      Program compiled with ``valid=True`` already takes ``u``: then ``x0`` and ``x``
      are ``u`` and ``valid`` changes nothing.
    - ``learning_rate``: Adam's step size (default ``1e-2``); an error with L-BFGS,
      whose line search sets the step.

    **Batched Programs** (`cx.batch`): every dataset is fitted on its own (its own
    optimizer state and stopping test) in one vmapped loop; ``x0`` is ``(N, n)`` and
    the result's fields lead with the dataset axis (``x`` ``(N, n)``). Each dataset's
    result equals a separate ``fit(F[k])`` up to floating-point rounding. For many
    datasets: ``batch_size`` fits them in chunks of that many (one compile, the last
    chunk padded), spread over the local devices when there are several;
    ``progress`` shows one bar over datasets; ``out=path.h5`` writes each finished
    chunk (with its dataset numbers) and at the end all results (read back with
    ``cx.batch_results``); ``resume=True`` with the same ``out`` and ``batch_size``
    keeps the chunks an interrupted call finished. Under ``jax.distributed`` each
    process takes every ``P``-th chunk and all return every result (``out`` required,
    on a shared file system). ``lanes`` is how many datasets of a chunk run side by
    side in one vmapped loop, the groups one after another in the same compiled call:
    ``None`` means 16 on the CPU, where wider groups spill the caches and wait on their
    slowest fit, and the whole chunk elsewhere. These five apply to batched Programs
    only.

    **Returns:** a `FitResult`. It is a pytree, so many starts fit in one compile:
    ``jax.vmap(lambda x0: cx.fit(f, x0).x)(starts)``.

    Example:
        >>> import caskax as cx, jax.numpy as jnp
        >>> res = cx.fit(lambda x: -jnp.sum((x - 2.0) ** 2), jnp.zeros(3))
        >>> [round(float(v), 4) for v in res.x], bool(res.converged)
        ([2.0, 2.0, 2.0], True)
    """
    if isinstance(f, BatchedProgram):
        return _fit_batched(
            f,
            x0,
            method,
            maxiter,
            tol,
            valid,
            learning_rate,
            batch_size,
            progress,
            out,
            resume,
            resolve_lanes(lanes, "fit"),
        )
    if batch_size is not None or progress or out is not None or resume or lanes is not None:
        raise InferenceError(
            "fit: batch_size, progress, out, resume and lanes apply to batched Programs "
            f"(cx.batch), not to {type(f).__name__}."
        )
    res, start_ok, target, z0 = _fit_unchecked(f, x0, method, maxiter, tol, valid, learning_rate)
    if not isinstance(start_ok, jax.core.Tracer) and not bool(start_ok):
        check_finite_start(target, z0, "fit")  # compiled only now, to name the params
    return res


def _fit_batched_impl(F, z0, method, maxiter, tol, learning_rate, layout, valid, lanes):
    def one(arrays, z0):
        target = Target(F.member_of(arrays), unconstrained=valid, density=False)
        return _fit_impl(target, z0, method, maxiter, tol, learning_rate, layout)

    return map_datasets(one, F.arrays, F.in_axes, (z0,), lanes)


_fit_batched_jit = inference_jit(_fit_batched_impl)


@run_once_jit
def _to_z_batched(F, x0):
    return jax.vmap(
        lambda a, x: Target(F.member_of(a), unconstrained=True).to_z(x), in_axes=(F.in_axes, 0)
    )(F.arrays, x0)


def _fit_batched(
    F, x0, method, maxiter, tol, valid, learning_rate, batch_size, progress, out, resume, lanes
):
    """`fit` of every dataset of a `BatchedProgram` at once: ``jax.vmap`` of the same
    loop, each dataset with its own optimizer state and stopping test (a finished
    dataset's state stops changing while the others run on)."""
    if method not in _METHODS:
        raise InferenceError(f"fit: method must be one of {_METHODS}, got {method!r}.")
    _check_options(maxiter, tol)
    if learning_rate is not None and method == "lbfgs":
        raise InferenceError(
            f"fit: learning_rate={learning_rate!r} is Adam's step size; L-BFGS sets its own "
            "step by its line search. Leave learning_rate out, or use method='adam'."
        )
    if learning_rate is None and method == "adam":
        learning_rate = 1e-2
    member = F[0]
    check_program(member, "fit")
    n = int(sum(group_sizes(member)))
    x0 = _join_groups(F.init) if x0 is None else x0
    x0 = jnp.asarray(x0)
    x0 = jnp.asarray(x0, x0.dtype if jnp.issubdtype(x0.dtype, jnp.inexact) else jnp.zeros(()).dtype)
    if x0.shape != (len(F), n):
        raise ShapeError(
            f"fit: x0 has shape {tuple(x0.shape)}, expected ({len(F)}, {n}): one start per "
            f"dataset, laid out as {names_of(layout_of(member, n))}."
        )
    z0 = _to_z_batched(F, x0) if (valid and not F.valid) else x0
    layout = layout_of(member, n)

    def solve(G, idx):
        G, z = on_devices(G, z0[idx])
        res, start_ok = _fit_batched_jit(
            G,
            z,
            method,
            int(maxiter),
            float(tol),
            learning_rate,
            layout,
            bool(valid),
            lanes_for(lanes, G, z),
        )
        bad = np.flatnonzero(~np.asarray(start_ok))
        if bad.size:
            k = int(idx[bad[0]])
            check_finite_start(
                Target(F[k], unconstrained=valid, density=False),
                z0[k],
                f"fit (dataset {k} of {len(F)})",
            )
        return {name: getattr(res, name) for name in _FIELDS}

    done = run_in_chunks(
        F,
        solve,
        batch_size=batch_size,
        progress=progress,
        out=out,
        resume=resume,
        what="fit",
        meta={
            "layout": [[k, list(v)] for k, v in layout],
            "method": method,
            "maxiter": int(maxiter),
            "tol": float(tol),
            "valid": bool(valid),
        },
        inputs=(x0,),
    )
    return FitResult(*(jax.device_put(done[name]) for name in _FIELDS), layout)


_FIELDS = ("x", "value", "grad_norm", "steps", "converged")


def _join_groups(parts):
    return parts if not isinstance(parts, tuple) else jnp.concatenate(parts, axis=-1)


def _check_options(maxiter, tol):
    """Refuse a loop that cannot run (``maxiter < 1``) or a stopping rule that cannot
    be tested (``tol`` not a finite number >= 0): both used to return a start as if fitted."""
    try:
        whole = not isinstance(maxiter, bool) and int(maxiter) == maxiter and maxiter >= 1
    except (TypeError, ValueError, OverflowError):
        whole = False
    if not whole:
        raise InferenceError(f"fit: maxiter must be an integer >= 1, got {maxiter!r}.")
    try:
        ok = math.isfinite(float(tol)) and float(tol) >= 0
    except (TypeError, ValueError):
        ok = False
    if not ok:
        raise InferenceError(
            f"fit: tol must be a finite number >= 0 (relative: stop once |grad f| <= "
            f"tol * max(1, |f|)), got {tol!r}."
        )


def _fit_unchecked(
    f, x0=None, method="lbfgs", maxiter=1000, tol=1e-6, valid=False, learning_rate=None
):
    """`fit` without raising on a non-finite start: returns ``(result, start_ok,
    target, z0)`` so a caller can name its own params in the error."""
    if method not in _METHODS:
        raise InferenceError(f"fit: method must be one of {_METHODS}, got {method!r}.")
    _check_options(maxiter, tol)
    check_program(f, "fit")
    if x0 is None:
        x0 = init_vector(f) if isinstance(f, Program) else constrained_init(f)
    x0 = start_vector(f, x0, "fit")
    if learning_rate is not None and method == "lbfgs":
        raise InferenceError(
            f"fit: learning_rate={learning_rate!r} is Adam's step size; L-BFGS sets its own "
            "step by its line search. Leave learning_rate out, or use method='adam'."
        )
    if learning_rate is None and method == "adam":
        learning_rate = 1e-2
    target = Target(f, unconstrained=valid, density=False)
    # A valid=True Program takes u: x0 is already in its space.
    z0 = target.to_z(x0) if (isinstance(f, Program) and valid and not f.valid) else x0
    layout = layout_of(f, int(x0.shape[-1]))
    res, start_ok = _fit(target, z0, method, int(maxiter), float(tol), learning_rate, layout)
    return res, start_ok, target, z0
