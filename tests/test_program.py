import jax
import jax.numpy as jnp
import numpy as np
import pytest
from helpers import CompileLog, Line, Pair, xs

import caskax as cx
from caskax.examples import Gaussian
from caskax.examples.stages import hierarchical_model, stage2_model, stage3_model


def test_program_basics(data):
    like = stage3_model(data)
    f = cx.compile(like)
    assert f.size == 11 and f.init.shape == (11,)
    assert f.names[:5] == [
        "SN0.x0[0]",
        "SN0.x0[1]",
        "lightcurve.t0",
        "lightcurve.sigma",
        "lightcurve.peak_flux",
    ]
    rows = f.layout
    assert rows[0].path == "model.models[0].models[0].x0" and rows[0].shape == (2,)
    assert rows[0].slice == slice(0, 2) and rows[2].valid == (0.0, None)
    direct = f(f.init)
    assert jnp.allclose(jax.jit(f)(f.init), direct)
    assert jnp.allclose(like(f.init), direct)  # the module itself takes params too
    assert jax.grad(f)(f.init).shape == (11,)
    h = jax.hessian(f)(f.init)
    np.testing.assert_allclose(h, h.T, rtol=1e-3, atol=1e-2)
    batch = f.init + 0.01 * jax.random.normal(jax.random.key(1), (3, 11))
    np.testing.assert_allclose(jax.vmap(f)(batch), [f(b) for b in batch], rtol=1e-5)


def test_unflatten_gives_filled_module(data):
    f = cx.compile(stage3_model(data))
    filled = f.unflatten(f.init)
    fluxes = [float(m.models[0].flux.value) for m in filled.model.models]
    expected = 0.25 * np.exp(-(((np.linspace(0, 6, 5) - 3.0) / 2.5) ** 2))
    np.testing.assert_allclose(fluxes, expected, rtol=1e-5)


def test_stage2_and_stage3_agree_with_hand_written(data):
    """Stage 3's likelihood equals stage 2's with fluxes from the light curve."""
    f3 = cx.compile(stage3_model(data))
    f2 = cx.compile(stage2_model(data))
    x3 = f3.init
    fluxes = x3[4] * jnp.exp(-(((data.times + x3[2]) / x3[3]) ** 2))
    # stage-2 order: SN0..SN3 flux, SN0 x0, SN4 flux, galaxy (caskade's order)
    x2 = jnp.concatenate([fluxes[:4], x3[:2], fluxes[4:], x3[5:]])
    assert float(f2(x2)) == pytest.approx(float(f3(x3)), rel=1e-6)


def test_pointers_computed_once_per_call():
    calls = []

    def double(a):
        calls.append(1)
        return 2 * a

    base = Line("l", 1.0, 0.0).to_dynamic("a")
    line = base.set("b", cx.Pointer(double, base.a))
    pair = Pair("p", line, line)  # the pointer is reachable twice
    f = cx.compile(pair, "__call__", xs())
    calls.clear()
    f._pure(jnp.array([3.0]))
    assert len(calls) == 1


def test_chained_pointers_dependency_order():
    base = Line("l", 2.0, 0.0).to_dynamic("a")

    class Three(cx.Module):
        a: cx.Param
        b: cx.Param
        c: cx.Param

        def __init__(self):
            super().__init__("three")
            self.a = cx.Param("a", 2.0, dynamic=True)
            self.b = cx.Param("b", 0.0)
            self.c = cx.Param("c", 0.0)

        @cx.forward
        def __call__(self, a, b, c):
            return jnp.stack([a, b, c])

    m = Three()
    m = m.set("c", cx.Pointer(lambda b: b + 1, m.b))
    m = m.set("b", cx.Pointer(lambda a: a * 10, m.a))
    f = cx.compile(m)
    assert f(jnp.array([3.0])).tolist() == [3.0, 30.0, 31.0]
    del base


def test_no_retrace_across_data_swaps(data):
    like = stage3_model(data)
    traces = []

    @jax.jit
    def run(f, x):
        traces.append(1)
        return f(x)

    for i in range(100):
        f = cx.compile(like.set("data", data.images * (1.0 + 0.001 * i)))
        run(f, f.init)
    assert len(traces) == 1


def test_direct_call_traces_once(data):
    f = cx.compile(stage2_model(data))
    f(f.init)
    n = f._direct._cache_size()
    for i in range(5):
        f(f.init + i)
    assert f._direct._cache_size() == n == 1


def test_valid_programs(data):
    like = stage3_model(data)
    f = cx.compile(like)
    fv = cx.compile(like, valid=True)
    u = fv.init
    np.testing.assert_allclose(f.from_valid(f.to_valid(f.init)), f.init, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(u, f.to_valid(f.init), rtol=1e-6)
    assert float(fv(u)) == pytest.approx(float(f(f.init)), rel=1e-6)
    jac = jax.jacobian(f.from_valid)(u)
    _, logdet = jnp.linalg.slogdet(jac)
    assert float(f.log_det_jacobian(u)) == pytest.approx(float(logdet), rel=1e-4, abs=1e-4)


def test_log_prior():
    import numpyro.distributions as dist

    class M(cx.Module):
        a: cx.Param
        b: cx.Param

        def __init__(self):
            super().__init__("m")
            self.a = cx.Param("a", 0.5, dynamic=True, prior=dist.Normal(0.0, 2.0))
            self.b = cx.Param("b", [1.0, 2.0], dynamic=True)

        @cx.forward
        def __call__(self, a, b):
            return a + b.sum()

    f = cx.compile(M())
    expected = dist.Normal(0.0, 2.0).log_prob(0.5)
    assert float(f.log_prior(f.init)) == pytest.approx(float(expected))


def test_batch_axes_vmap_matches_loop(data):
    """The hierarchical stage: one image model vmapped over 5 epochs with a batched
    param (the SN flux per epoch) equals a Python loop over epochs."""
    fluxes = data.true_flux
    sn = Gaussian("sn", x0=[-0.35, -0.2], q=1.0, phi=0.0, sigma=0.05, flux=fluxes)
    assert sn.flux.batch_shape == (5,)
    axes = cx.batch_axes(sn)
    images = jax.vmap(lambda m: m.brightness(data.x, data.y), in_axes=(axes,))(sn)
    loop = jnp.stack([sn.set("flux", f).brightness(data.x, data.y) for f in fluxes])
    np.testing.assert_allclose(images, loop, rtol=1e-6)
    # a batched *dynamic* param takes prod(batch + shape) entries
    f = cx.compile(sn.to_dynamic("flux"), "brightness", data.x, data.y)
    assert f.size == 5


def test_hierarchical_equals_joint(data):
    f3 = cx.compile(stage3_model(data))
    fh = cx.compile(hierarchical_model(data))
    # hierarchical order: SN x0, galaxy (5 entries + x0), light curve
    x3 = f3.init
    xh = jnp.concatenate([x3[:2], x3[5:], x3[2:5]])
    assert float(fh(xh)) == pytest.approx(float(f3(x3)), rel=1e-5)
    assert fh.names[-3:] == ["lightcurve.t0", "lightcurve.sigma", "lightcurve.peak_flux"]


# -- bad input -------------------------------------------------------------------------------
def test_wrong_vector_length_and_dtype(data):
    f = cx.compile(stage3_model(data))
    with pytest.raises(
        cx.ShapeError, match=r"shape \(11,\).*model.models\[0\].models\[0\].x0\[2\]"
    ):
        f(jnp.zeros(10))
    with pytest.raises(cx.ShapeError, match="floating-point"):
        f(jnp.zeros(11, dtype=jnp.int32))
    with pytest.raises(cx.ShapeError, match="takes 1 flat vector"):
        f(f.init, f.init)


def test_nan_in_dynamic_value_and_missing_value():
    with pytest.raises(cx.ParamError, match="'a' holds a non-finite"):
        cx.compile(Line("l", float("nan"), 1.0).to_dynamic("a"), "__call__", 1.0).init
    with pytest.raises(cx.ParamError, match="'a' has no value"):
        Line("l", None, 1.0).get_values()
    f = cx.compile(Line("l", None, 1.0), "__call__", 2.0)  # compiles; user supplies x
    assert float(f(jnp.array([3.0]))) == 7.0


def test_not_a_module():
    with pytest.raises(cx.GraphError, match="needs a caskax Module"):
        cx.compile(lambda x: x)
    with pytest.raises(cx.GraphError, match="no method 'nope'"):
        cx.compile(Line(), "nope")


def test_pointer_input_not_in_tree_is_held_as_child():
    outside = cx.Param("outside", 2.0, dynamic=True)
    line = Line("l", 1.0, 0.0).set("b", cx.Pointer(lambda o: o * 3, outside))
    assert [p.name for p in line.dynamic_params] == ["outside"]
    with pytest.raises(cx.GraphError, match="not in the tree"):
        line.to_static(cx.Param("stranger", 1.0))


def test_rebuilt_model_reuses_compiled_code(data):
    """Two builds of one model (new uids, new lambdas) share one trace; a different
    pointer function or closure value does not."""
    traces = []

    @jax.jit
    def run(f, x):
        traces.append(1)
        return f(x)

    f1, f2 = cx.compile(stage3_model(data)), cx.compile(stage3_model(data))
    assert f1.module.uid != f2.module.uid
    run(f1, f1.init)
    run(f2, f2.init)
    assert len(traces) == 1

    def with_scale(k):
        base = Line("l", 1.0, 0.0).to_dynamic("a")
        return cx.compile(base.set("b", cx.Pointer(lambda a: k * a, base.a)), "__call__", 1.0)

    x = jnp.array([2.0])
    assert float(run(with_scale(3.0), x)) == 8.0
    assert float(run(with_scale(3.0), x)) == 8.0
    assert float(run(with_scale(5.0), x)) == 12.0  # closure value differs: new trace
    base = Line("l", 1.0, 0.0).to_dynamic("a")
    other = cx.compile(base.set("b", cx.Pointer(lambda a: a - 1, base.a)), "__call__", 1.0)
    assert float(run(other, x)) == 3.0
    assert len(traces) == 4


def test_numpy_constants_become_device_arrays():
    """A numpy constant in the tree (a pointer input here) is a jax array in the
    Program: passed to jit as an argument, a numpy leaf would be copied to the device on
    every call."""
    base = Line("l", 1.0, 0.0).to_dynamic("a")
    t = np.float32(4.0)
    line = base.set("b", cx.Pointer(lambda a, t: a * t, base.a, t))
    f = cx.compile(line, "__call__", np.arange(3, dtype=np.float32))
    assert any(isinstance(leaf, np.generic) for leaf in jax.tree.leaves(line))
    assert all(isinstance(leaf, jax.Array) for leaf in jax.tree.leaves(f))
    x = jnp.array([2.0])
    np.testing.assert_allclose(jax.jit(lambda p, v: p(v))(f, x), f(x))
    np.testing.assert_allclose(f(x), 2.0 * np.arange(3) + 8.0)


CALLS = []  # a trace-time counter, for this test only


class Counted(cx.Module):
    a: cx.Param

    def __init__(self):
        super().__init__("counted")
        self.a = cx.Param("a", 2.0, dynamic=True)

    @cx.forward
    def __call__(self, x, a):
        CALLS.append(1)
        return a * x


class Twice(cx.Module):
    left: cx.Module
    right: cx.Module

    def __init__(self, shared):
        super().__init__("twice")
        self.left = self.right = shared

    @cx.forward
    def __call__(self, x, y):
        same = self.left(x) + self.right(x)  # one node, same argument: evaluated once
        other = self.left(y)  # another argument: evaluated again
        inside = jax.vmap(lambda v: self.left(x) * v)(jnp.ones(2))  # another trace: again
        return same + other + inside.sum()


def test_shared_forward_evaluated_once_per_call():
    calls = CALLS
    calls.clear()
    x, y = jnp.array(1.0), jnp.array(3.0)
    f = cx.compile(Twice(Counted()), "__call__", x, y)
    out = f._pure(jnp.array([2.0]))
    assert float(out) == (2 + 2) + 6 + 2 * 2
    assert len(calls) == 3
    calls.clear()
    grads = jax.grad(lambda v: f(v))(jnp.array([2.0]))
    assert float(grads[0]) == 1 + 1 + 3 + 2
    calls.clear()
    Twice(Counted())(x, y, [2.0])  # a call that fills opens its own scope
    assert len(calls) == 3


class Bounded(cx.Module):
    a: cx.Param

    def __init__(self):
        super().__init__("bounded")
        self.a = cx.Param("a", 2.0, valid=(0, 5), dynamic=True)

    @cx.forward
    def __call__(self, x, a):
        return a * x


def test_eager_transforms_of_a_program_compile_as_one():
    # Outside jit, vmap and grad of a Program run its compiled function as a whole, and
    # the transform methods run compiled: op by op, each operation would compile alone.
    # Odd sizes keep other tests' compiled ops out of the count.
    f = cx.compile(Line(a=2.0, b=1.0).to_dynamic("a"), "__call__", jnp.arange(13.0))
    xs = jnp.linspace(0.5, 1.5, 7)[:, None]
    with CompileLog() as log:
        out = jax.vmap(f)(xs)
        g = jax.grad(lambda a: f(a).sum())(jnp.array([3.0]))
    assert out.shape == (7, 13) and float(g[0]) == pytest.approx(float(jnp.arange(13.0).sum()))
    # the model's own operations (a * x + b) never compile alone
    assert not {"jit(multiply)", "jit(add)", "jit(mul)"} & set(log.names), log.names
    bounded = cx.compile(Bounded(), "__call__", jnp.arange(11.0))
    with CompileLog() as log:
        u = bounded.to_valid(jnp.array([1.0]))
        bounded.from_valid(u), bounded.log_det_jacobian(u)
    assert len(log.names) <= 3 and all("_compiled_method" in n for n in log.names), log.names
