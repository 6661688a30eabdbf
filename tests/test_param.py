import jax
import jax.numpy as jnp
import numpy as np
import pytest

import caskax as cx


@pytest.mark.parametrize(
    "kwargs, kind",
    [
        (dict(value=1.0), "static"),
        (dict(value=None), "dynamic"),
        (dict(value=1.0, dynamic=True), "dynamic"),
        (dict(value=None, dynamic=False), "live"),
        (dict(value=1.0, dynamic=False), "static"),
    ],
    ids=["value", "none", "dynamic-true", "live", "dynamic-false"],
)
def test_kinds_and_booleans(kwargs, kind):
    p = cx.Param("p", **kwargs)
    assert p.kind == kind
    assert p.dynamic == (kind == "dynamic")
    assert p.static == (kind in ("static", "live"))
    assert p.live == (kind == "live")
    assert not p.pointer


def test_pointer_kinds():
    a = cx.Param("a", 1.0)
    assert cx.Param("b", a).kind == "pointer"
    assert cx.Param("c", cx.Pointer(lambda a: 2 * a, a)).pointer
    assert cx.Param("b", a).ptr.is_link
    assert cx.Param("d", a, dynamic=True).kind == "pointer"  # as caskade: still a pointer
    with pytest.raises(cx.ParamError, match="cx.Pointer"):
        cx.Param("e", lambda p: 1.0)


def test_every_keyword_is_kept():
    p = cx.Param(
        "flux",
        2.0,
        (),
        dynamic=True,
        valid=(0, None),
        cyclic=False,
        units="Jy",
        description="total flux",
        group=1,
        batch_shape=None,
        dtype=jnp.float32,
        prior=None,
    )
    assert (p.name, p.units, p.description, p.group, p.valid) == (
        "flux",
        "Jy",
        "total flux",
        1,
        (0.0, None),
    )
    assert p.shape == () and p.dtype == jnp.float32


@pytest.mark.parametrize("value", [1, [1, 2], np.arange(3)], ids=["int", "int-list", "np-int"])
def test_integers_become_inexact(value):
    p = cx.Param("p", value)
    assert jnp.issubdtype(p.value.dtype, jnp.floating)
    assert not p.value.weak_type
    assert p.kind == "static"


def test_int_dynamic_param_differentiates():
    class M(cx.Module):
        k: cx.Param

        def __init__(self):
            super().__init__("m")
            self.k = cx.Param("k", 3, dynamic=True)

        @cx.forward
        def __call__(self, k):
            return k**2

    f = cx.compile(M())
    assert f.init.dtype == jnp.zeros(()).dtype  # the default float (float64 under x64)
    assert float(jax.grad(f)(f.init)[0]) == pytest.approx(6.0)


def test_wildcard_shape_and_batch_axes():
    p = cx.Param("img", jnp.zeros((3, 4, 5)), shape=(None, 5))
    assert p.batch_shape == (3,)
    assert p.batched
    assert cx.Param("img", jnp.zeros((4, 5)), shape=(None, None)).batch_shape == ()
    with pytest.raises(cx.ShapeError, match="does not match shape"):
        cx.Param("x0", [1.0, 2.0, 3.0], shape=(2,))
    q = cx.Param("x0", None, shape=(2,), batch_shape=(5,))
    assert q.full_shape() == (5, 2) and q.size() == 10
    with pytest.raises(cx.ShapeError, match="wildcard"):
        cx.Param("w", None, shape=(None,)).full_shape()


def test_valid_checks_and_warning():
    with pytest.warns(cx.CaskaxWarning, match="outside valid"):
        cx.Param("q", 2.0, valid=(0, 1))
    with pytest.raises(cx.ParamError, match="lo < hi"):
        cx.Param("q", 0.5, valid=(1, 0))
    with pytest.raises(cx.ParamError, match="cyclic"):
        cx.Param("phi", 0.5, cyclic=True)


def test_edits_return_new_params_with_same_uid():
    p = cx.Param("p", 1.0)
    q = p.to_dynamic()
    assert q.uid == p.uid and q is not p
    assert p.kind == "static" and q.kind == "dynamic"
    assert q.to_static().kind == "static"
    assert cx.Param("l", dynamic=False).to_dynamic().kind == "dynamic"


def test_float64(tmp_path):
    """Params keep float64 when x64 is on (run in a subprocess: x64 is process-wide)."""
    from helpers import run_python

    code = (
        "import jax, jax.numpy as jnp, caskax as cx\n"
        "from caskax.examples.stages import mock_data, stage3_model\n"
        "p = cx.Param('p', 1)\n"
        "assert p.value.dtype == jnp.float64, p.value.dtype\n"
        "f = cx.compile(stage3_model(mock_data()))\n"
        "assert f.init.dtype == jnp.float64\n"
        "assert f(f.init).dtype == jnp.float64\n"
        "assert jax.hessian(f)(f.init).dtype == jnp.float64\n"
        "print('ok')\n"
    )
    assert "ok" in run_python(code, JAX_ENABLE_X64="1")
