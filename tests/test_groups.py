"""Param groups (caskade's test_param_groups, in caskax's functional form)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import caskax as cx


class Three(cx.Module):
    a: cx.Param
    b: cx.Param
    c: cx.Param

    def __init__(self, groups=(0, 2, 0)):
        super().__init__("three")
        self.a = cx.Param("a", 1.0, dynamic=True, group=groups[0], valid=(0, None))
        self.b = cx.Param("b", [2.0, 3.0], dynamic=True, group=groups[1], valid=(0, 10))
        self.c = cx.Param("c", 4.0, dynamic=True, group=groups[2])

    @cx.forward
    def __call__(self, a, b, c):
        return a * jnp.sum(b) + c


def test_non_contiguous_groups_order_and_size():
    m = Three()
    assert m.param_order() == "three: a, three: c\nthree: b"
    f = cx.compile(m)
    assert f.groups == (0, 2) and f.size == (2, 2)
    assert f.names == (["three.a", "three.c"], ["three.b[0]", "three.b[1]"])
    x0, x2 = f.init
    assert float(f(x0, x2)) == 1.0 * 5.0 + 4.0


@pytest.mark.parametrize("scheme", ["array", "list", "dict"])
def test_set_values_multi_group_round_trip(scheme):
    m = Three()
    vals = m.set_values((jnp.array([5.0, 6.0]), jnp.array([7.0, 8.0]))).get_values(scheme)
    back = m.set_values(vals)
    g0, g2 = back.get_values()
    assert g0.tolist() == [5.0, 6.0] and g2.tolist() == [7.0, 8.0]


def test_find_param_and_index_with_groups():
    m = Three()
    assert m.find_param(1, group=2) == (m.b, (1,))
    assert m.find_index("c") == (0, 1)  # (group, index), as caskade gives it
    assert m.find_index("b") == (2, slice(0, 2))
    assert m.find_param((2, 1)) == (m.b, (1,))
    with pytest.raises(cx.ParamError, match="several param groups"):
        m.find_param(0)
    with pytest.raises(IndexError):
        m.find_param(5, group=0)


def test_valid_multi_group():
    f = cx.compile(Three())
    u0, u2 = f.to_valid(*f.init)
    np.testing.assert_allclose(u0, [0.0, 4.0], atol=1e-6)  # log(1-0) and c unbounded
    x0, x2 = f.from_valid(u0, u2)
    np.testing.assert_allclose(x2, [2.0, 3.0], rtol=1e-5)
    fv = cx.compile(Three(), valid=True)
    assert float(fv(*fv.init)) == pytest.approx(float(f(*f.init)), rel=1e-5)
    ldj = fv.log_det_jacobian(*fv.init)
    assert np.isfinite(float(ldj))


def test_static_params_not_in_groups_and_to_static_all():
    m = Three().to_static("b")
    assert m.param_order() == "three: a, three: c"
    assert cx.compile(m).size == 2
    none = Three().to_static()
    assert none.get_values().shape == (0,)
    assert none.to_dynamic().param_order() == "three: a, three: c\nthree: b"  # groups kept


def test_forward_with_multi_group_params():
    m = Three()
    out = m((jnp.array([1.0, 0.0]), jnp.array([1.0, 1.0])))
    assert float(out) == 2.0
    with pytest.raises(cx.FillError, match="one entry per group"):
        m(jnp.zeros(4))


def test_vmap_over_one_group():
    f = cx.compile(Three())
    x0, x2 = f.init
    xs = jnp.stack([x0, x0 + 1.0])
    out = jax.vmap(lambda x: f(x, x2))(xs)
    assert out.tolist() == [9.0, 15.0]


class GroupedGauss(cx.Module):
    """A Gaussian log-likelihood whose params sit in two groups: ``m`` (2,) in group 1,
    ``s`` > 0 in group 0, so the joined vector is ``[s, m0, m1]``."""

    m: cx.Param
    s: cx.Param

    def __init__(self):
        super().__init__("gg")
        self.m = cx.Param("m", [0.0, 0.0], dynamic=True, group=1)
        self.s = cx.Param("s", 2.0, dynamic=True, group=0, valid=(0, None))

    @cx.forward
    def loglike(self, m, s):
        # maximum at m = (1, -2) with sigmas (1, 0.5), and at s = 1 with sigma 0.5
        return -0.5 * ((m[0] - 1.0) ** 2 + ((m[1] + 2.0) / 0.5) ** 2) - 2.0 * (s - 1.0) ** 2


def test_inference_joins_param_groups():
    # fit, laplace and nuts see a grouped Program as one vector, groups in order
    f = cx.compile(GroupedGauss(), "loglike")
    assert f.groups == (0, 1)
    fit = cx.fit(f, valid=True)
    assert fit.names == ["gg.s", "gg.m[0]", "gg.m[1]"]
    np.testing.assert_allclose(fit.x, [1.0, 1.0, -2.0], atol=1e-3)
    np.testing.assert_allclose(fit.by_name()["gg.m"], [1.0, -2.0], atol=1e-3)
    lap = cx.laplace(f, fit.x)
    np.testing.assert_allclose(lap.sigma, [0.5, 1.0, 0.5], rtol=1e-3)
    np.testing.assert_allclose(cx.laplace(f, fit.x, subset=["gg.m"]).sigma, [1.0, 0.5], rtol=1e-3)
    chains = cx.nuts(
        f, jax.random.key(0), num_warmup=100, num_samples=300, num_chains=2, progress=False
    )
    post = chains.by_name()
    assert post["gg.m"].shape == (2, 300, 2) and np.all(post["gg.s"] > 0)
    np.testing.assert_allclose(post["gg.m"].mean(axis=(0, 1)), [1.0, -2.0], atol=0.2)
    # a valid=True Program takes u = (log s, m): fit and laplace work in u
    fv = cx.compile(GroupedGauss(), "loglike", valid=True)
    np.testing.assert_allclose(cx.fit(fv).x, [0.0, 1.0, -2.0], atol=1e-3)
    with pytest.raises(cx.InferenceError, match="one param group"):
        cx.numpyro_model(f)
