"""Maximum-likelihood (or MAP) fits of a Program with optax, the whole loop jitted."""

import equinox as eqx
import jax
import jax.numpy as jnp
import optax
import optax.tree_utils as otu

from ..errors import InferenceError
from ..program import Program
from ._target import (
    Target,
    check_finite_start,
    check_program,
    constrained_init,
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
    return lambda z: -target.logdensity(z)


def _threshold(tol, value):
    return tol * jnp.maximum(1.0, jnp.abs(value))


def _run_lbfgs(loss, z0, maxiter, tol, learning_rate):
    opt = optax.lbfgs(learning_rate=learning_rate)
    value_and_grad = optax.value_and_grad_from_state(loss)

    def step(carry):
        z, state, _, start_ok = carry
        value, grad = value_and_grad(z, state=state)
        # The first step evaluates the start: note whether it is finite there.
        first = otu.tree_get(state, "count") == 0
        start_ok = jnp.where(first, _finite(value, grad), start_ok)
        updates, state = opt.update(grad, state, z, value=value, grad=grad, value_fn=loss)
        new = optax.apply_updates(z, updates)
        return new, state, jnp.all(new == z), start_ok

    def keep_going(carry):
        _, state, stalled, _ = carry
        count = otu.tree_get(state, "count")
        value = otu.tree_get(state, "value")
        gnorm = otu.tree_norm(otu.tree_get(state, "grad"))
        small = gnorm <= _threshold(tol, value)
        return (count == 0) | ((count < maxiter) & ~small & ~stalled & jnp.isfinite(value))

    carry = (z0, opt.init(z0), jnp.array(False), jnp.array(True))
    z, state, _, start_ok = jax.lax.while_loop(keep_going, step, carry)
    value = otu.tree_get(state, "value")
    grad = otu.tree_get(state, "grad")
    return z, value, otu.tree_norm(grad), otu.tree_get(state, "count"), start_ok


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


# XLA's defaults here: this loop's compile is mostly the model's gradient (three
# copies, one per place L-BFGS evaluates f), which inference_jit's CPU options do not
# make faster (benchmarks/compile_options.py).
_fit = eqx.filter_jit(_fit_impl)


def fit(f, x0=None, method: str = "lbfgs", maxiter: int = 1000, tol: float = 1e-6,
        valid: bool = False, learning_rate: float | None = None) -> FitResult:
    """Maximise ``f`` (a log-likelihood or log-posterior) with optax.

    The whole loop runs in one ``jax.lax.while_loop`` inside ``jit``: no Python per
    step. ``"lbfgs"`` is ``optax.lbfgs`` with its zoom line search; ``"adam"`` is
    ``optax.adam(learning_rate)`` (default ``1e-2``).

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

    **Returns:** a `FitResult`. It is a pytree, so many starts fit in one compile:
    ``jax.vmap(lambda x0: cx.fit(f, x0).x)(starts)``.

    Example:
        >>> import caskax as cx, jax.numpy as jnp
        >>> res = cx.fit(lambda x: -jnp.sum((x - 2.0) ** 2), jnp.zeros(3))
        >>> [round(float(v), 4) for v in res.x], bool(res.converged)
        ([2.0, 2.0, 2.0], True)
    """
    res, start_ok, target, z0 = _fit_unchecked(f, x0, method, maxiter, tol, valid, learning_rate)
    if not isinstance(start_ok, jax.core.Tracer) and not bool(start_ok):
        check_finite_start(target, z0, "fit")  # compiled only now, to name the params
    return res


def _fit_unchecked(f, x0=None, method="lbfgs", maxiter=1000, tol=1e-6, valid=False,
                  learning_rate=None):
    """`fit` without raising on a non-finite start: returns ``(result, start_ok,
    target, z0)`` so a caller can name its own params in the error."""
    if method not in _METHODS:
        raise InferenceError(f"fit: method must be one of {_METHODS}, got {method!r}.")
    check_program(f, "fit")
    if x0 is None:
        x0 = init_vector(f) if isinstance(f, Program) else constrained_init(f)
    x0 = start_vector(f, x0, "fit")
    if learning_rate is None and method == "adam":
        learning_rate = 1e-2
    target = Target(f, unconstrained=valid, density=False)
    # A valid=True Program takes u: x0 is already in its space.
    z0 = target.to_z(x0) if (isinstance(f, Program) and valid and not f.valid) else x0
    layout = layout_of(f, int(x0.shape[-1]))
    res, start_ok = _fit(target, z0, method, int(maxiter), float(tol), learning_rate, layout)
    return res, start_ok, target, z0
