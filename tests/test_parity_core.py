"""caskade semantics that a caskade user's own code relies on: overrides reach pointers,
stale copies are refused wherever the graph is read, written pointers keep their
inputs, and hierarchical links through `batch_axes` see params outside the batch."""

import os

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import caskax as cx


class ABC(cx.Module):
    a: cx.Param
    b: cx.Param
    c: cx.Param

    def __init__(self):
        super().__init__("abc")
        self.a = cx.Param("a", 3.0)
        self.b = cx.Param("b", self.a)
        self.c = cx.Param("c", cx.Pointer(lambda a: 10 * a, self.a))

    @cx.forward
    def total(self, a, b, c):
        return a + b + c

    @cx.forward
    def nested(self):
        return self.total(a=4.0)

    @cx.forward
    def only_b(self, b):
        return b


def test_override_reaches_link_and_function_pointers():
    m = ABC()
    assert float(m.total()) == 36.0
    # caskade: an override holds for every param that reads it during the call
    assert float(m.total(a=4.0)) == 4.0 + 4.0 + 40.0
    assert float(m.nested()) == 48.0
    # an override of a param the method does not take still reaches its pointers
    assert float(m.only_b(a=7.0)) == 7.0
    assert float(m.a.value) == 3.0  # nothing stored


def test_override_param_as_caskade_tests_it():
    # caskade's test_context::test_override_param (expected 27)
    class TestSim(cx.Module):
        a: cx.Param
        b: cx.Param
        c: cx.Param

        def __init__(self):
            super().__init__()
            self.a = cx.Param("a", 3.0)
            self.b = cx.Param("b", self.a)
            self.c = cx.Param("c")

        @cx.forward
        def sub(self, a, b, c):
            return a + b + c

        @cx.forward
        def __call__(self):
            d = self.sub() + self.sub(a=4.0)
            # caskade's `with OverrideParam(self.a, v): self.b.value` is set inside a
            # forward: the filled pointers that read `a` are computed again
            d = d + self.set("a", 1.0).b.value
            d = d + self.set("a", 2.0).b.value
            return d

    assert float(TestSim()(jnp.array([5.0]))) == 27.0
    f = cx.compile(TestSim())
    assert float(f(jnp.array([5.0]))) == 27.0
    assert float(jax.grad(lambda x: f(x))(jnp.array([5.0]))[0]) == 2.0


class G(cx.Module):
    x0: cx.Param

    def __init__(self, name, x0=None):
        super().__init__(name)
        self.x0 = cx.Param("x0", x0, shape=(2,))

    @cx.forward
    def __call__(self, x0):
        return jnp.sum(x0)


class Pair(cx.Module):
    first: G
    second: G

    def __init__(self, first, second):
        super().__init__("pair")
        self.first, self.second = first, second

    @cx.forward
    def __call__(self):
        return self.first() + 10 * self.second()


def test_stale_copies_are_an_error_everywhere(tmp_path):
    s2 = G("second", [1.0, 2.0]).to_dynamic()
    s3 = G("third").set("x0", s2.x0)
    s2b = s2.set("x0", [5.0, 5.0])  # s3 still points to the old s2.x0
    for m in (Pair(s2b, s3), Pair(s3, s2b)):
        for read in (
            m.get_values,
            m,
            m.param_order,
            lambda: m.dynamic_params,
            lambda: m.set_values([0.0, 0.0]),
            lambda: cx.compile(m),
            lambda: m.save_state(os.fspath(tmp_path / "x.h5")),
        ):
            with pytest.raises(cx.GraphError, match="x0.*two different states"):
                read()
        assert "second" in str(m)  # a stale tree still prints
    # linking after combining is consistent, whatever the order
    good = Pair(s2b, G("third"))
    good = good.set("second.x0", good.first.x0)
    assert float(good()) == 10.0 + 100.0
    assert good.get_values().tolist() == [5.0, 5.0]


def test_writing_a_value_into_a_pointer_keeps_its_inputs(tmp_path):
    class Hold(cx.Module):
        p: cx.Param

        def __init__(self, t):
            super().__init__("hold")
            self.p = cx.Param("p", cx.Pointer(lambda t: 2 * t, t))

    t = cx.Param("t", 1.5, dynamic=True)
    m = Hold(t)
    assert m.param_order() == "p: t"
    static = m.set("p", 4.0)
    assert static.p.kind == "static" and float(static.p.value) == 4.0
    # the former input stays in the tree, so the flat vector and files keep it
    assert static.param_order() == "p: t"
    assert static.get_values().tolist() == [1.5]
    path = os.fspath(tmp_path / "chain.h5")
    m.save_state(path, appendable=True)
    static.append_state(path)
    assert float(static.load_state(path, index=0).p.ptr.inputs[0].value) == 1.5
    dyn = m.to_dynamic("p")
    assert [p.name for p in dyn.dynamic_params] == ["p", "t"]
    assert float(dyn.p.value) == 3.0


class Blob(cx.Module):
    x: cx.Param
    s: cx.Param

    def __init__(self, name, x=None, s=None):
        super().__init__(name)
        self.x = cx.Param("x", x, shape=())
        self.s = cx.Param("s", s, shape=())

    @cx.forward
    def f(self, t, x, s):
        return x * t + s


class Hier(cx.Module):
    blob: Blob
    s: cx.Param

    def __init__(self):
        super().__init__("hier")
        self.blob = Blob("blob", jnp.array([1.0, 2.0, 3.0]), 0.0)
        self.s = cx.Param("s", 0.5)

    @cx.forward
    def __call__(self, t, s):
        return jax.vmap(lambda b: b.f(t), in_axes=(cx.batch_axes(self.blob),))(self.blob)


def test_batch_axes_of_a_batched_module_pointing_outside_it():
    # caskade's HierarchicalModels pattern: the batched blob's s points to the parent's s
    m = Hier()
    m = m.set("blob.s", m.s)
    np.testing.assert_allclose(m(2.0), [2.5, 4.5, 6.5])
    # a function pointer of a batched and an unbatched input is batched itself
    m2 = m.set("blob.s", cx.Pointer(lambda s, x: s * x, m.s, m.blob.x))
    np.testing.assert_allclose(m2(2.0), [2.5, 5.0, 7.5])
    f = cx.compile(m.to_dynamic("s"), "__call__", 2.0)
    np.testing.assert_allclose(f(jnp.array([1.0])), [3.0, 5.0, 7.0])
    assert float(jax.grad(lambda x: f(x).sum())(jnp.array([1.0]))[0]) == 3.0


def test_pointer_errors_keep_their_type_and_shape_is_checked():
    class Picky(Exception):
        def __init__(self, code, detail):
            super().__init__(f"{code}: {detail}")

    def bad(t):
        raise Picky(7, "nope")

    t = cx.Param("t", 1.0)
    holder = Blob("b", 1.0, 0.0).set("s", cx.Pointer(bad, t))
    with pytest.raises(Picky, match="7: nope"):
        holder.f(1.0)
    wrong = G("g").set("x0", cx.Pointer(lambda t: jnp.ones(3) * t, t))
    with pytest.raises(cx.ShapeError, match="pointer 'x0'.*shape \\(3,\\)"):
        wrong()


# -- caskade's inputs that used to crash ------------------------------------------------
from caskax.examples import Gaussian, Gaussian1D  # noqa: E402


class TwoCurves(cx.Module):
    a: Gaussian1D
    b: Gaussian1D

    def __init__(self):
        super().__init__("two")
        self.a = Gaussian1D("a", t0=1.0, sigma=2.0, peak_flux=3.0)
        self.b = Gaussian1D("b", t0=4.0, sigma=5.0, peak_flux=6.0)


def test_array_valued_valid_bounds_and_infinite_bounds():
    class M(cx.Module):
        x: cx.Param
        s: cx.Param

        def __init__(self):
            super().__init__("m")
            self.x = cx.Param(
                "x", [0.5, 5.0], valid=(jnp.array([0.0, 1.0]), np.array([1.0, 10.0])), dynamic=True
            )
            self.s = cx.Param("s", 2.0, valid=(0, np.inf), dynamic=True)

        @cx.forward
        def __call__(self, x, s):
            return jnp.sum(x) * s

    m = M()
    assert m.s.valid == (0.0, None)  # an infinite bound is open: log(s - 0)
    f = cx.compile(m, valid=True)
    u = f.init
    np.testing.assert_allclose(u, [0.0, np.log(4.0 / 5.0), np.log(2.0)], rtol=1e-6)
    np.testing.assert_allclose(f.from_valid(u), [0.5, 5.0, 2.0], rtol=1e-6)
    assert float(f(u)) == pytest.approx(11.0)
    with pytest.warns(cx.CaskaxWarning, match="outside valid"):
        m.set("x", [0.5, 0.5])  # 0.5 is below the second lower bound
    with pytest.raises(cx.ParamError, match="numbers"):
        cx.Param("p", 1.0, valid=("a", 1))


def test_find_param_and_find_index_forms():
    g = Gaussian("g", x0=[0.0, 0.0], q=0.5, phi=0.0, sigma=1.0, flux=1.0).to_dynamic("x0", "q")
    assert g.find_param(-1) == (g.q, ())
    assert g.find_param([0, 2]) == ((g.x0, (0,)), (g.q, ()))
    assert g.find_index((g.q, "x0")) == (2, slice(0, 2))
    assert g.find_index(g) == (slice(0, 2), 2)  # a module: its own dynamic params
    with pytest.raises(cx.ParamIndexError):
        g.find_param(3)
    with pytest.raises(IndexError):  # old `except IndexError` code keeps working
        g.find_param(-4)


def test_set_values_forms():
    m = TwoCurves()
    assert m.set_values([]).get_values().shape == (0,)  # no dynamic params
    md = m.to_dynamic(children_only=False)
    for v in ({"a": jnp.array([0.0, 1.0, 2.0])}, {"a": [0.0, 1.0, 2.0]}):
        assert md.set_values(v).get_values().tolist() == [0.0, 1.0, 2.0, 4.0, 5.0, 6.0]
    assert md.set_values({"b": {"sigma": 9.0}}).b.sigma.value == 9.0
    lc = Gaussian1D("lc", t0=1.0, sigma=2.0, peak_flux=3.0).to_dynamic()
    with pytest.raises(cx.FillError, match="string"):
        lc.set_values({"t0": "1.5"})
    with pytest.raises(cx.FillError, match="shape"):
        lc.set_values({"t0": [1.0, 2.0]})
    with pytest.raises(cx.FillError, match="strings"):
        lc.set_values(["1.5", 2.0, 3.0])
    with pytest.raises(cx.FillError, match="complex"):
        lc.set_values(np.array([1 + 1j, 2.0, 3.0]))
    g = Gaussian("g", x0=[0.0, 0.0], q=0.5, phi=0.0, sigma=1.0, flux=1.0).to_dynamic("x0")
    host = np.array([1.0, 2.0])
    for form in ({"x0": host}, [host], host):
        g2 = g.set_values(form)
        host[0] = 99.0  # the caller's array changes; the module must not
        assert g2.x0.value.tolist() == [1.0, 2.0]
        host[0] = 1.0


def test_to_valid_on_modules_and_programs_with_groups():
    lc = Gaussian1D("lc", t0=-3.0, sigma=1.0, peak_flux=0.25).to_dynamic()
    assert lc.to_valid(lc.get_values()).tolist() == [-3.0, 0.0, 0.25]
    d = lc.to_valid(lc.get_values("dict"))
    assert float(d["sigma"]) == 0.0 and float(lc.from_valid(d)["sigma"]) == 1.0
    grouped = lc.set_attrs("sigma", group=1)
    f = cx.compile(grouped, "flux", 0.0)
    x0, x1 = f.init
    assert f.to_valid(x1, group=1).tolist() == [0.0]
    assert f.from_valid(jnp.array([0.0]), group=1).tolist() == [1.0]
    assert f.to_valid(x0, group=0).tolist() == [-3.0, 0.25]
    with pytest.raises(cx.ShapeError, match="group 1 takes"):
        f.to_valid(x0, group=1)


def test_set_attrs_and_construction_rules():
    lc = Gaussian1D("lc", t0=-3.0, sigma=2.0, peak_flux=0.25)
    lc2 = lc.set_attrs("peak_flux", valid=(0, 1), units="Jy", description="peak")
    assert lc2.peak_flux.valid == (0.0, 1.0) and lc2.peak_flux.units == "Jy"
    assert lc.peak_flux.valid is None  # the original is unchanged
    assert lc.set_attrs("t0", shape=()).t0.shape == ()
    with pytest.raises(cx.ShapeError):
        lc.set_attrs("t0", shape=(2,))
    with pytest.raises(cx.ParamError, match="cannot change name"):
        lc.set_attrs("t0", name="t1")
    with pytest.warns(cx.CaskaxWarning):
        lc.set_attrs("peak_flux", valid=(1, 2))
    for bad in (dict(group=1.5), dict(name="a b"), dict(name="a|b"), dict(name="class")):
        with pytest.raises(cx.ParamError):
            cx.Param(**{"name": "p", **bad})
    for bad in (dict(shape=7), dict(shape=(-1,))):
        with pytest.raises(cx.ShapeError):
            cx.Param("p", **bad)
    with pytest.raises(cx.ParamError, match="batch_shape"):
        cx.Param("p", cx.Pointer(lambda t: t, lc.t0), batch_shape=(3,))
    with pytest.raises(cx.ParamError, match="array value"):
        lc.t0.to_static(lc.sigma)
    with pytest.raises(cx.ModuleError, match="not a valid Python identifier"):
        Gaussian1D("my curve")


def test_modules_and_params_refuse_mutation_with_a_caskax_error():
    class NoAnnotation(cx.Module):
        def __init__(self):
            super().__init__("bad")
            self.a = cx.Param("a", 1.0)

    with pytest.raises(cx.ModuleError, match="annotation `a: cx.Param`"):
        NoAnnotation()
    lc = Gaussian1D("lc", t0=-3.0, sigma=2.0, peak_flux=0.25)
    with pytest.raises(cx.ModuleError, match="m.set\\('t0', value\\)"):
        lc.t0 = cx.Param("t0", 1.0)
    with pytest.raises(cx.ModuleError, match="cannot be deleted"):
        del lc.t0
    with pytest.raises(AttributeError):  # what dataclasses raised before
        lc.t0.value = 3.0
    assert "t0" in str(lc)


def test_pointer_value_outside_a_forward():
    lc = Gaussian1D("lc", t0=-3.0, sigma=2.0, peak_flux=0.25)
    m = lc.set("sigma", cx.Pointer(lambda t0: -t0, lc.t0))
    assert float(m.sigma.value) == 3.0  # computed from the inputs' current values
    assert float(m.set("t0", -5.0).sigma.value) == 5.0
    linked = m.set("peak_flux", m.sigma)  # a chain: link -> function pointer
    assert float(linked.peak_flux.value) == 3.0
    assert m.sigma.kind == "pointer"  # reading the value stores nothing


def test_forward_maps_over_leading_axes_of_a_params_array():
    lc = Gaussian1D("lc", t0=-3.0, sigma=1.0, peak_flux=0.25).to_dynamic()
    x = lc.get_values()
    batch = jnp.stack([x, x.at[2].set(0.5), x.at[2].set(1.0)])
    t = jnp.linspace(0.0, 6.0, 4)
    out = lc.flux(t, batch)
    assert out.shape == (3, 4)
    for row, xi in zip(out, batch):
        np.testing.assert_allclose(row, lc.flux(t, xi), rtol=1e-6)
    assert lc.flux(3.0, jnp.ones((2, 5, 3))).shape == (2, 5)


def test_unknown_target_is_a_value_error_as_in_caskade():
    g = Gaussian1D("lc", t0=-3.0, sigma=1.0, peak_flux=0.25).to_dynamic()
    with pytest.raises(ValueError):
        g.find_index(cx.Param("elsewhere", 1.0))
    assert cx.Param().name == "Param"  # caskade's default name


def test_siblings_with_one_name_are_refused_by_the_dict_scheme():
    class Many(cx.Module):
        curves: list

        def __init__(self, curves):
            super().__init__("many")
            self.curves = curves

    twins = Many(
        [
            Gaussian1D("lc", t0=1.0, sigma=1.0, peak_flux=1.0).to_dynamic("t0"),
            Gaussian1D("lc", t0=2.0, sigma=1.0, peak_flux=1.0).to_dynamic("t0"),
        ]
    )
    assert twins.get_values().tolist() == [1.0, 2.0]  # the array scheme has no keys
    with pytest.raises(cx.GraphError, match="curves\\[0\\].*curves\\[1\\].*same name"):
        twins.get_values("dict")
    with pytest.raises(cx.GraphError, match="same name"):
        twins.set_values({"curves": {"lc": {"t0": 0.0}}})


def test_replace_node_live_params_and_range_warnings():
    lc = Gaussian1D("lc", t0=-3.0, sigma=2.0, peak_flux=0.25)
    new = cx.Param("t0", 1.0, dynamic=True)
    swapped = lc.replace_node("t0", new)
    assert swapped.t0.uid == new.uid and swapped.param_order() == "lc: t0"
    assert lc.set("t0", new).t0.kind == "pointer"  # set links instead
    with pytest.raises(cx.GraphError, match="is a Param"):
        lc.replace_node("t0", Gaussian1D("other"))
    assert lc.t0.to_static(None).kind == "live" and lc.t0.to_static().kind == "static"
    assert lc.t0.to_dynamic(None).stored is None
    with pytest.warns(cx.CaskaxWarning, match="outside valid"):
        lc.to_dynamic().set_values([0.0, -1.0, 0.25])  # sigma has valid=(0, None)


class Chain(cx.Module):
    ps: list

    def __init__(self, n):
        super().__init__("chain")
        ps = [cx.Param("p0", 1.0, dynamic=True)]
        for i in range(1, n):
            ps.append(cx.Param(f"p{i}", cx.Pointer(lambda a: a + 1.0, ps[-1])))
        self.ps = ps

    @cx.forward
    def __call__(self):
        return self.ps[-1].value


def test_deep_graphs_walk_iteratively_and_name_the_stack_limit():
    m = Chain(1000)  # pointers chained 1000 deep
    assert m.get_values().tolist() == [1.0]
    assert m.param_order() == "ps: p0"  # held in a list field: labelled by it, as caskade does
    assert float(m.set("ps[0]", 2.0).ps[0].value) == 2.0
    with pytest.raises(cx.DepthError, match="sys.setrecursionlimit"):
        cx.compile(m)  # JAX flattens pytrees recursively: past its stack, a caskax error
    shallow = Chain(60)
    f = cx.compile(shallow)
    assert float(f(f.init)) == 60.0


def test_float32_param_keeps_its_dtype_in_an_x64_model():
    from helpers import run_python

    out = run_python(
        "import jax, jax.numpy as jnp, numpy as np, caskax as cx\n"
        "class M(cx.Module):\n"
        "    a: cx.Param\n"
        "    b: cx.Param\n"
        "    def __init__(self):\n"
        "        super().__init__('m')\n"
        "        self.a = cx.Param('a', np.float32(1.5), dynamic=True)\n"
        "        self.b = cx.Param('b', 2.0, dynamic=True)\n"
        "    @cx.forward\n"
        "    def __call__(self, a, b):\n"
        "        return a * b\n"
        "f = cx.compile(M())\n"
        "u = f.unflatten(f.init)\n"
        "print(f.init.dtype, u.a.value.dtype, u.b.value.dtype, float(jax.grad(f)(f.init)[0]))\n",
        JAX_ENABLE_X64="1",
    )
    assert out.split() == ["float64", "float32", "float64", "2.0"]


def test_caskade_rules_for_batch_shape_boundaries_and_list_fields():
    with pytest.raises(cx.ShapeError, match="batch_shape=\\(4,\\)"):
        cx.Param("p", np.ones((3, 2)), shape=(2,), batch_shape=(4,))
    assert cx.Param("p", np.ones((4, 2)), shape=(2,), batch_shape=(4,)).batch_shape == (4,)
    with pytest.warns(cx.CaskaxWarning):  # log(0) at a one-sided bound, as caskade warns
        cx.Param("s", 0.0, valid=(0, None))

    class Group(cx.Module):
        position: list

        def __init__(self):
            super().__init__("group")
            self.position = [cx.Param("x", 1.0), cx.Param("y", 2.0)]

    g = Group().to_dynamic("position")  # caskade: gc.position.to_dynamic()
    assert g.get_values().tolist() == [1.0, 2.0]
    with pytest.raises(cx.ModuleError, match="immutable"):
        g.position[0].value = 3.0


def test_every_purposeful_error_is_a_caskax_error(tmp_path):
    with pytest.raises(cx.ParamError, match="text"):
        cx.Param("p", "1.5")
    with pytest.raises(cx.ParamError, match="text"):
        cx.Param("p", np.array(["1.5"]))
    lc = Gaussian1D("lc", t0=-3.0, sigma=2.0, peak_flux=0.25).to_dynamic()
    f = cx.compile(lc, "flux", 0.0)
    with pytest.raises(cx.ShapeError, match="real"):
        f(jnp.ones(3, dtype=jnp.complex64))
    with pytest.raises(cx.FillError):
        lc.get_values("bad")
    with pytest.raises(cx.CaskaxError):
        lc.set("t0")
    with pytest.raises(cx.ShapeError):
        cx.plot.corner(np.zeros((2, 10, 3)), truth=[1.0, 2.0])
    with pytest.raises(cx.ParamError):
        cx.Param("p", group="x")
    path = tmp_path / "lc.h5"
    lc.save_state(path)
    import h5py

    with h5py.File(path, "r+") as fh:
        fh["lc/sigma/value"][()] = -1.0
    with pytest.warns(cx.CaskaxWarning, match="outside valid"):
        lc.load_state(path)


def test_saveattrs_are_written_as_hdf5_attrs(tmp_path):
    import h5py

    class Noted(cx.Module):
        saveattrs = ("extra_info", "meta.kind", "nothing", "unsaveable")
        p: cx.Param
        extra_info: str = eqx.field(static=True)
        meta: dict = eqx.field(static=True)
        nothing: object = eqx.field(static=True)
        unsaveable: object = eqx.field(static=True)

        def __init__(self):
            super().__init__("noted")
            self.p = cx.Param("p", 1.0)
            self.extra_info = "This is some extra info"
            self.meta = _Meta("galaxy")
            self.nothing = None
            self.unsaveable = lambda x: x + 1

    path = tmp_path / "noted.h5"
    with pytest.warns(cx.CaskaxWarning, match="unsaveable"):
        Noted().save_state(path)
    with h5py.File(path) as fh:
        attrs = dict(fh["noted"].attrs)
    assert attrs["extra_info"] == "This is some extra info"
    assert attrs["meta.kind"] == "galaxy" and attrs["nothing"] == "NONE"
    assert "unsaveable" not in attrs


class _Meta:
    def __init__(self, kind):
        self.kind = kind
