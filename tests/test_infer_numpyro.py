"""cx.numpyro_model: sites, supports and priors, and agreement of numpyro's NUTS with
cx.nuts (that test lives in test_infer_nuts.py, reusing its compiled chains)."""

import jax.numpy as jnp
import numpy as np
import numpyro.distributions as dist
import pytest
from numpyro import handlers

import caskax as cx

Y = jnp.array([0.8, 1.3, 0.2, 1.9, 1.1, 0.6])


class Normal(cx.Module):
    """y ~ N(mu, scale): mu (prior N(0, 2)), scale > 0 (flat), and a free shift (2,)."""

    mu: cx.Param
    scale: cx.Param
    shift: cx.Param

    def __init__(self):
        super().__init__("normal")
        self.mu = cx.Param("mu", 0.5, dynamic=True, prior=dist.Normal(0.0, 2.0))
        self.scale = cx.Param("scale", 1.0, valid=(0, None), dynamic=True)
        self.shift = cx.Param("shift", [0.0, 0.0], shape=(2,), dynamic=True)

    @cx.forward
    def loglike(self, mu, scale, shift):
        data = jnp.sum(dist.Normal(mu, scale).log_prob(Y))
        return data + jnp.sum(dist.Normal(jnp.array([1.0, -1.0]), 0.5).log_prob(shift))


@pytest.fixture(scope="module")
def program():
    return cx.compile(Normal(), "loglike")


def test_sites_named_and_shaped_like_params(program):
    model = cx.numpyro_model(program)
    values = {
        "normal.mu": jnp.array(0.3),
        "normal.scale": jnp.array(0.9),
        "normal.shift": jnp.array([1.0, -1.0]),
    }
    trace = handlers.trace(handlers.substitute(model, values)).get_trace()
    assert list(trace) == ["normal.mu", "normal.scale", "normal.shift", "loglike"]
    assert trace["normal.shift"]["value"].shape == (2,)
    assert isinstance(trace["normal.mu"]["fn"], dist.Normal)
    assert isinstance(trace["normal.scale"]["fn"], dist.ImproperUniform)
    assert "GreaterThan(lower_bound=0.0)" in repr(trace["normal.scale"]["fn"].support)
    x = jnp.array([0.3, 0.9, 1.0, -1.0])
    np.testing.assert_allclose(trace["loglike"]["fn"].log_factor, program(x), rtol=1e-6)


def test_numpyro_model_needs_program():
    with pytest.raises(cx.InferenceError, match="Program"):
        cx.numpyro_model(lambda x: -jnp.sum(x**2))


def test_numpyro_model_for_valid_program():
    f = cx.compile(Normal(), "loglike", valid=True)
    model = cx.numpyro_model(f)
    values = {
        "normal.mu": jnp.array(0.3),
        "normal.scale": jnp.array(0.9),
        "normal.shift": jnp.array([1.0, -1.0]),
    }
    trace = handlers.trace(handlers.substitute(model, values)).get_trace()
    x = jnp.array([0.3, 0.9, 1.0, -1.0])
    np.testing.assert_allclose(trace["loglike"]["fn"].log_factor, f(f.to_valid(x)), rtol=1e-5)
