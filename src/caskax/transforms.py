"""Maps between a param's valid range and unconstrained space.

| valid | to unconstrained | from unconstrained |
|---|---|---|
| ``(lo, hi)`` | ``logit((x-lo)/(hi-lo))`` | ``lo + (hi-lo)*sigmoid(u)`` |
| ``(lo, None)`` | ``log(x-lo)`` | ``lo + exp(u)`` |
| ``(None, hi)`` | ``log(hi-x)`` | ``hi - exp(u)`` |
| cyclic ``(lo, hi)`` | wrap into ``[lo, hi)`` | wrap into ``[lo, hi)`` |

``log_det_jacobian`` is the exact log-absolute derivative of ``from_valid`` (summed over
entries), so a sampler in unconstrained space targets the right density. The cyclic
wrap is piecewise the identity and has no Jacobian term.

Example:
    >>> import jax.numpy as jnp
    >>> from caskax import transforms
    >>> u = transforms.to_valid(jnp.array(0.25), (0.0, 1.0))
    >>> float(transforms.from_valid(u, (0.0, 1.0)))
    0.25
"""

import jax
import jax.numpy as jnp
import numpy as np

__all__ = ["to_valid", "from_valid", "log_det_jacobian", "wrap", "bounds"]


def bounds(valid, shape=None):
    """``(lo, hi)`` of a param's ``valid`` as floats or numpy arrays (array bounds are
    stored as nested tuples); with ``shape``, array bounds are broadcast to ``shape``
    and flattened, to match a slice of the flat vector.

    Example:
        >>> from caskax import transforms
        >>> transforms.bounds(((0.0, 1.0), None), shape=(2, 2))[0].tolist()
        [0.0, 1.0, 0.0, 1.0]
    """
    out = []
    for b in valid:
        if isinstance(b, tuple):
            b = np.asarray(b)
            if shape is not None:
                b = np.broadcast_to(b, shape).ravel()
        out.append(b)
    return tuple(out)


def wrap(x, valid):
    """Wrap ``x`` into ``[lo, hi)``; used for cyclic params.

    Example:
        >>> from caskax import transforms
        >>> float(transforms.wrap(7.0, (0.0, 5.0)))
        2.0
    """
    lo, hi = bounds(valid)
    return lo + jnp.mod(x - lo, hi - lo)


def to_valid(x, valid, cyclic=False):
    """Map a value inside ``valid`` to unconstrained space.

    Example:
        >>> from caskax import transforms
        >>> float(transforms.to_valid(0.5, (0.0, 1.0))), float(transforms.to_valid(1.0, (0.0, None)))
        (0.0, 0.0)
    """
    if valid is None:
        return x
    lo, hi = bounds(valid)
    if cyclic:
        return wrap(x, valid)
    if lo is not None and hi is not None:
        # log(x-lo) - log(hi-x) keeps precision near both ends, unlike logit of a ratio.
        return jnp.log(x - lo) - jnp.log(hi - x)
    if lo is not None:
        return jnp.log(x - lo)
    return jnp.log(hi - x)


def from_valid(u, valid, cyclic=False):
    """Map an unconstrained value back inside ``valid``.

    Example:
        >>> from caskax import transforms
        >>> float(transforms.from_valid(0.0, (0.0, 4.0))), float(transforms.from_valid(0.0, (None, 2.0)))
        (2.0, 1.0)
    """
    if valid is None:
        return u
    lo, hi = bounds(valid)
    if cyclic:
        return wrap(u, valid)
    if lo is not None and hi is not None:
        return lo + (hi - lo) * jax.nn.sigmoid(u)
    if lo is not None:
        return lo + jnp.exp(u)
    return hi - jnp.exp(u)


def log_det_jacobian(u, valid, cyclic=False):
    """``sum(log|d from_valid / du|)`` over the entries of ``u``.

    Example:
        >>> import jax.numpy as jnp
        >>> from caskax import transforms
        >>> float(transforms.log_det_jacobian(jnp.array([0.0, 1.0]), (0.0, None)))  # sum of u
        1.0
    """
    if valid is None or cyclic:
        return jnp.zeros((), dtype=jnp.result_type(u))
    lo, hi = bounds(valid)
    if lo is not None and hi is not None:
        terms = jnp.log(hi - lo) + jax.nn.log_sigmoid(u) + jax.nn.log_sigmoid(-u)
    else:
        terms = u
    return jnp.sum(terms)
