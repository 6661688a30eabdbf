"""The Laplace approximation: a Gaussian from the curvature of ``f`` at its maximum."""

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np

from ..batch import BatchedProgram, _on_devices as on_devices, _run_in_chunks as run_in_chunks
from ..errors import InferenceError, ShapeError
from ..program import Program
from ._target import (
    Target,
    check_program,
    group_sizes,
    joined_rows,
    layout_of,
    names_of,
    start_vector,
)
from ._jit import inference_jit, run_once_jit
from ._lanes import CPU_LAPLACE_LANES, lanes_for, map_datasets, resolve_lanes

__all__ = ["laplace", "Laplace"]


class Laplace(eqx.Module):
    """A Gaussian approximation ``N(mean, cov)``; ``sigma = sqrt(diag(cov))``.

    ``names`` (static) labels the entries. Unpacks like a tuple:
    ``mean, cov, sigma = cx.laplace(f, x)``.

    Example:
        >>> import caskax as cx, jax, jax.numpy as jnp
        >>> mean, cov, sigma = lap = cx.laplace(lambda x: -0.5 * jnp.sum((x / 2.0) ** 2), jnp.zeros(2))
        >>> [round(float(s), 3) for s in sigma], lap.sample(jax.random.key(0), (5,)).shape
        ([2.0, 2.0], (5, 2))
    """

    mean: jax.Array
    cov: jax.Array
    sigma: jax.Array
    names: tuple = eqx.field(static=True, default=())

    def __iter__(self):
        return iter((self.mean, self.cov, self.sigma))

    def sample(self, key, shape=()):
        """Draws from ``N(mean, cov)``, shaped ``shape + mean.shape`` (for a batched
        Laplace, ``shape + (N, n)``: each dataset's own Gaussian). ``shape`` is a tuple,
        or an int for that many draws.

        Example:
            >>> import caskax as cx, jax, jax.numpy as jnp
            >>> lap = cx.laplace(lambda x: -0.5 * jnp.sum(x**2), jnp.zeros(2))
            >>> lap.sample(jax.random.key(0), (5,)).shape
            (5, 2)
        """
        shape = (shape,) if isinstance(shape, (int, np.integer)) else tuple(shape)
        shape = shape + tuple(self.mean.shape[:-1])  # a batched Laplace: one per dataset
        return jax.random.multivariate_normal(key, self.mean, self.cov, shape, method="eigh")


def _hessian_of(target, x):
    # Forward-over-reverse, one Hessian-vector product per basis vector, batched: the
    # arithmetic of jax.hessian, but XLA compiled it in 0.7x the time (1.7 s vs 2.4 s
    # for the worked example's stage-3 model on 2 CPU cores).
    grad = jax.grad(target.logdensity)
    return jax.vmap(lambda v: jax.jvp(grad, (x,), (v,))[1])(jnp.eye(x.shape[0], dtype=x.dtype))


_hessian = run_once_jit(_hessian_of)


def _resolve_subset(f, subset, names) -> list:
    """Targets (names, param labels, indices or Param objects) -> entry indices."""
    spans = joined_rows(f) if isinstance(f, Program) else ()
    out = []
    for item in subset:
        if isinstance(item, (int, np.integer)):
            if not -len(names) <= int(item) < len(names):
                raise InferenceError(
                    f"laplace: subset index {item} out of range for {len(names)} entries."
                )
            out.append(int(item) % len(names))
            continue
        if isinstance(item, str) and item in names:
            out.append(names.index(item))
            continue
        uid = getattr(item, "uid", None)
        match = [
            (start, stop)
            for r, start, stop in spans
            if (isinstance(item, str) and item in (r.name, r.path))
            or (uid is not None and r.uid == uid)
        ]
        if not match:
            raise InferenceError(
                f"laplace: subset entry {item!r} is neither an index, an entry name nor a "
                f"dynamic param of f. Entries: {names}."
            )
        out.extend(range(*match[0]))
    return out


def _not_definite(a: np.ndarray, names: list) -> InferenceError:
    """Explain why ``a = -hessian`` has no Cholesky factor, naming entries."""
    bad_rows = [i for i in range(len(a)) if not np.all(np.isfinite(a[i]))]
    if bad_rows:
        which = [names[i] for i in bad_rows]
        reason = f"the Hessian is not finite in the rows of {which}"
    else:
        diag = np.diag(a)
        which = [names[i] for i in np.flatnonzero(diag <= 0)]
        if which:
            reason = f"f is flat or curves upward along {which} (d2f/dx2 >= 0)"
        else:
            d = 1 / np.sqrt(diag)
            vals, vecs = np.linalg.eigh(a * d[:, None] * d[None, :])
            bad = vecs[:, vals <= 0]
            weight = np.max(np.abs(bad), axis=1) if bad.size else np.zeros(len(a))
            which = [names[i] for i in np.flatnonzero(weight >= 0.3 * weight.max())]
            reason = (
                f"f curves upward along a combination of {which} (a saddle point or a degeneracy)"
            )
    return InferenceError(
        f"laplace: -hessian(f) is not positive definite at x: {reason}. "
        "Laplace needs a maximum: fit first (cx.fit), or fix or reparametrise those params."
    )


def laplace(
    f,
    x,
    subset=None,
    *,
    batch_size: int | None = None,
    progress: bool = False,
    out=None,
    resume: bool = False,
    lanes: int | None = None,
) -> Laplace:
    """The Laplace approximation of ``f`` at ``x``: ``cov = inv(-hessian(f)(x))``.

    ``x`` should be a maximum of ``f`` (a `fit` result). The Hessian is symmetrised,
    scaled to unit diagonal (float32 Hessians span many decades) and inverted through
    its Cholesky factor. If ``-hessian`` is not positive definite at ``x`` an
    `InferenceError` names the offending entries.

    **Arguments:**

    - ``f``: a caskax `Program` or a function of a flat vector.
    - ``x``: the point, in ``f``'s input space.
    - ``subset``: optional list of entry names (``"SN.x0[1]"``), param names or paths
      (``"SN.x0"``, all its entries), Param objects or indices; the result is then the
      marginal Gaussian of those entries.

    **Batched Programs** (`cx.batch`): ``x`` is ``(N, n)`` and each dataset's Hessian
    is taken at its row (one vmapped program) and inverted on its own: ``cov`` is
    ``(N, n, n)``; a dataset where ``-hessian`` is not positive definite is an error
    naming it. ``batch_size``, ``progress``, ``out``, ``resume`` and ``lanes`` work as
    in `fit` (``lanes`` defaults to 1 on the CPU: each dataset's Hessian is already
    one vectorised program).

    **Returns:** `Laplace` ``(mean, cov, sigma)``.

    Example:
        >>> import caskax as cx, jax.numpy as jnp
        >>> f = lambda x: -0.5 * jnp.sum((x / jnp.array([1.0, 3.0])) ** 2)
        >>> [round(s, 4) for s in cx.laplace(f, jnp.zeros(2)).sigma.tolist()]
        [1.0, 3.0]
    """
    if isinstance(f, BatchedProgram):
        lanes = resolve_lanes(lanes, "laplace", cpu=CPU_LAPLACE_LANES)
        return _laplace_batched(f, x, subset, batch_size, progress, out, resume, lanes)
    if batch_size is not None or progress or out is not None or resume or lanes is not None:
        raise InferenceError(
            "laplace: batch_size, progress, out, resume and lanes apply to batched Programs "
            f"(cx.batch), not to {type(f).__name__}."
        )
    check_program(f, "laplace")
    x = start_vector(f, x, "laplace")
    names = names_of(layout_of(f, int(x.shape[0])))
    # f itself, no prior; a Program's param groups as one vector
    hess = np.asarray(_hessian(Target(f, unconstrained=False, density=False), x), dtype=np.float64)
    cov = _cov(hess, names)
    mean = np.asarray(x)
    if subset is not None:
        idx = _resolve_subset(f, list(subset), names)
        mean, cov, names = mean[idx], cov[np.ix_(idx, idx)], [names[i] for i in idx]
    return _result(mean, cov, names, x.dtype)


def _cov(hess: np.ndarray, names: list) -> np.ndarray:
    """``inv(-hess)`` (float64) through the Cholesky factor of ``-hess`` scaled to unit
    diagonal; an `InferenceError` naming entries if ``-hess`` is not positive definite."""
    a = -0.5 * (hess + hess.T)
    diag = np.diag(a)
    if not (np.all(np.isfinite(a)) and np.all(diag > 0)):
        raise _not_definite(a, names)
    d = 1 / np.sqrt(diag)
    try:
        chol = np.linalg.cholesky(a * d[:, None] * d[None, :])
    except np.linalg.LinAlgError:
        raise _not_definite(a, names) from None
    inv_chol = np.linalg.solve(chol, np.eye(len(a)))
    return (inv_chol.T @ inv_chol) * d[:, None] * d[None, :]


# Optimised, unlike one Program's Hessian (run_once_jit): a batch runs the compiled
# Hessian many times. 256 stage-3 datasets, first call / again: 2.0 s / 0.42 s at one
# lane, against 5.3 s / 3.8 s at LLVM's -O0 with every dataset side by side.
@inference_jit
def _hessians(F, x, lanes):
    return map_datasets(
        lambda a, x: _hessian_of(Target(F.member_of(a), unconstrained=False, density=False), x),
        F.arrays,
        F.in_axes,
        (x,),
        lanes,
    )


def _laplace_batched(F, x, subset, batch_size, progress, out, resume, lanes):
    """`laplace` of every dataset of a `BatchedProgram` at its row of ``x``: the
    Hessians in one vmapped program, each inverted on its own."""
    member = F[0]
    check_program(member, "laplace")
    n = int(sum(group_sizes(member)))
    x = jnp.asarray(x)
    if x.shape != (len(F), n) or not jnp.issubdtype(x.dtype, jnp.inexact):
        raise ShapeError(
            f"laplace: x has shape {tuple(x.shape)} ({x.dtype}), expected floats of shape "
            f"({len(F)}, {n}): one point per dataset, e.g. cx.fit(F).x."
        )
    names = names_of(layout_of(member, n))

    def solve(G, idx):
        G, xs = on_devices(G, x[idx])
        hess = np.asarray(_hessians(G, xs, lanes_for(lanes, G, xs)), dtype=np.float64)
        covs = []
        for j, k in enumerate(idx):
            try:
                covs.append(_cov(hess[j], names))
            except InferenceError as err:
                raise InferenceError(f"laplace, dataset {int(k)} of {len(F)}: {err}") from None
        cov = np.stack(covs)
        return {
            "mean": np.asarray(x)[idx],
            "cov": cov,
            "sigma": np.sqrt(np.diagonal(cov, axis1=-2, axis2=-1)),
        }

    done = run_in_chunks(
        F,
        solve,
        batch_size=batch_size,
        progress=progress,
        out=out,
        resume=resume,
        what="laplace",
        meta={"names": names},
        inputs=(x,),
    )
    cov, mean = done["cov"], np.asarray(x)
    if subset is not None:
        idx = _resolve_subset(member, list(subset), names)
        mean, cov, names = mean[:, idx], cov[:, idx][:, :, idx], [names[i] for i in idx]
    return _result(mean, cov, names, x.dtype)


def _result(mean, cov, names, dtype) -> "Laplace":
    sigma = np.sqrt(np.diagonal(cov, axis1=-2, axis2=-1))  # numpy: no compile for a few small ops
    # cast in numpy and device_put: jnp.asarray compiles a cast or copy per shape
    put = jax.device_put
    return Laplace(
        put(mean.astype(dtype)), put(cov.astype(dtype)), put(sigma.astype(dtype)), tuple(names)
    )
