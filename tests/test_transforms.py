import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from caskax import transforms

RANGES = [(0.0, 1.0), (-2.0, 5.0), (0.0, None), (1.5, None), (None, 0.0), (None, -3.0)]
IDS = ["unit", "interval", "lower0", "lower", "upper0", "upper"]


@pytest.mark.parametrize("valid", RANGES, ids=IDS)
@pytest.mark.parametrize("shape", [(), (3,), (2, 4)], ids=["scalar", "vector", "matrix"])
def test_round_trip_and_range(valid, shape):
    u = jax.random.normal(jax.random.key(0), shape) * 2
    x = transforms.from_valid(u, valid)
    lo, hi = valid
    if lo is not None:
        assert jnp.all(x > lo)
    if hi is not None:
        assert jnp.all(x < hi)
    np.testing.assert_allclose(transforms.to_valid(x, valid), u, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("valid", RANGES, ids=IDS)
def test_log_det_jacobian_is_exact(valid):
    u = jnp.linspace(-2.0, 2.0, 5)
    jac = jax.jacobian(lambda v: transforms.from_valid(v, valid))(u)
    _, logdet = jnp.linalg.slogdet(jac)
    assert float(transforms.log_det_jacobian(u, valid)) == pytest.approx(
        float(logdet), rel=1e-5, abs=1e-5
    )


def test_cyclic_wraps_without_jacobian():
    valid = (0.0, np.pi)
    x = jnp.array([-0.5, 0.5, np.pi + 0.25, 3 * np.pi + 0.1])
    w = transforms.from_valid(x, valid, cyclic=True)
    assert jnp.all((w >= 0) & (w < np.pi))
    np.testing.assert_allclose(w, [np.pi - 0.5, 0.5, 0.25, 0.1], atol=1e-5)
    assert float(transforms.log_det_jacobian(x, valid, cyclic=True)) == 0.0
    np.testing.assert_allclose(transforms.to_valid(w, valid, cyclic=True), w, atol=1e-6)


def test_no_valid_is_identity():
    u = jnp.arange(3.0)
    assert transforms.from_valid(u, None) is u
    assert float(transforms.log_det_jacobian(u, None)) == 0.0


@settings(max_examples=50, deadline=None)
@given(
    lo=st.floats(-100, 100),
    width=st.floats(1e-2, 100),
    frac=st.floats(0.01, 0.99),
)
def test_interval_round_trip_property(lo, width, frac):
    valid = (lo, lo + width)
    x = jnp.asarray(lo + frac * width, dtype=jnp.float32)
    back = transforms.from_valid(transforms.to_valid(x, valid), valid)
    assert abs(float(back) - float(x)) <= 1e-3 * max(1.0, width)
