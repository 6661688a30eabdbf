"""A Program as a numpyro model, for numpyro's own samplers (NUTS, SVI, ...)."""

import jax.numpy as jnp

from .. import graph, transforms
from ..errors import InferenceError
from ..program import Program
from ._target import check_program

__all__ = ["numpyro_model"]


def _support(row):
    from numpyro.distributions import constraints

    if row.valid is None:
        return constraints.real
    lo, hi = transforms.bounds(row.valid)
    if lo is not None and hi is not None:
        return constraints.interval(lo, hi)
    if lo is not None:
        return constraints.greater_than(lo)
    return constraints.less_than(hi)


def _site_distribution(row, prior):
    import numpyro.distributions as dist

    shape = tuple(row.shape)
    if prior is None:
        return dist.ImproperUniform(_support(row), batch_shape=(), event_shape=shape)
    if tuple(prior.batch_shape) + tuple(prior.event_shape) != shape:
        if prior.event_shape:
            raise InferenceError(
                f"numpyro_model: the prior of '{row.path}' has shape "
                f"{tuple(prior.batch_shape) + tuple(prior.event_shape)}, the param {shape}."
            )
        prior = prior.expand(shape)
    return prior


def numpyro_model(f: Program):
    """A numpyro model of ``f``: one ``numpyro.sample`` site per dynamic param and a
    ``numpyro.factor("loglike", f(x))``.

    Each site is named like the param (``f.layout`` names, e.g. ``"Galaxy.q"``) and
    shaped like it. Its distribution is the param's ``prior`` if it has one, else an
    improper flat prior (``ImproperUniform``) with the support of its ``valid`` range
    (real, interval, greater_than or less_than), so numpyro's samplers transform it
    exactly as caskax's ``valid=True`` does. A Program compiled with ``valid=True`` is
    handled too (it is called with ``f.to_valid(x)``).

    Example:
        >>> import caskax as cx, jax, jax.numpy as jnp
        >>> from numpyro import handlers
        >>> class Mean(cx.Module):
        ...     mu: cx.Param
        ...     def __init__(self):
        ...         super().__init__("m"); self.mu = cx.Param("mu", 0.0, dynamic=True)
        ...     @cx.forward
        ...     def loglike(self, mu):
        ...         return -0.5 * (mu - 1.0) ** 2
        >>> model = cx.numpyro_model(cx.compile(Mean(), "loglike"))
        >>> trace = handlers.trace(handlers.substitute(model, {"m.mu": jnp.array(0.5)})).get_trace()
        >>> list(trace)
        ['m.mu', 'loglike']
    """
    import numpyro

    if not isinstance(f, Program):
        raise InferenceError(
            f"numpyro_model needs a caskax Program (it reads names, shapes, valid ranges "
            f"and priors), got {type(f).__name__}."
        )
    check_program(f, "numpyro_model")
    if len(f.groups) > 1:
        raise InferenceError(
            f"numpyro_model needs a Program of one param group (its sites are the "
            f"params of one vector), but {f!r} has groups {f.groups}."
        )
    nodes = graph.walk(f.module).nodes
    sites = [(row, _site_distribution(row, nodes[row.uid].prior)) for row in f.layout]

    def model():
        parts = [jnp.reshape(numpyro.sample(row.name, d), (-1,)) for row, d in sites]
        x = jnp.concatenate(parts)
        numpyro.factor("loglike", f(f.to_valid(x)) if f.valid else f(x))

    return model
