import jax
import jax.numpy as jnp
import numpy as np
import pytest
from helpers import Bag, Line, Pair, xs

import caskax as cx
from caskax.examples import Gaussian, Gaussian1D


def shared_pair():
    shared = Line("shared", a=1.0, b=2.0).to_dynamic()
    other = Line("other", a=3.0, b=4.0).to_dynamic("a")
    return Pair("pair", shared, Pair("inner", shared, other)), shared


# -- identity -------------------------------------------------------------------------
def test_shared_node_is_one_entry():
    pair, shared = shared_pair()
    assert pair.param_order() == "shared: a, shared: b, other: a"
    f = cx.compile(pair, "__call__", xs())
    assert f.size == 3
    x = jnp.array([2.0, 1.0, 5.0])
    expected = (2 * xs() + 1) + ((2 * xs() + 1) + (5 * xs() + 4))
    np.testing.assert_allclose(f(x), expected, rtol=1e-6)


def test_edit_updates_every_copy():
    pair, shared = shared_pair()
    new = pair.set(shared.a, 10.0)
    assert float(new.left.a.value) == 10.0
    assert float(new.right.left.a.value) == 10.0
    assert new.left is new.right.left  # still one object
    assert float(pair.left.a.value) == 1.0  # original untouched


@pytest.mark.parametrize(
    "target",
    ["left.a", "right.right.a", lambda m: m.right.right.a, "OBJECT"],
    ids=["path", "nested-path", "where", "object"],
)
def test_targets(target):
    pair, _ = shared_pair()
    if target == "OBJECT":
        target = pair.right.right.a
    uid = cx.graph.resolve(pair, target)
    new = pair.to_static(target)
    node = cx.graph.walk(new).nodes[uid]
    assert node.kind == "static"


def test_dict_and_tuple_paths():
    bag = Bag("bag", items={"k": Line("l1", 1.0, 2.0)}, stack=(Line("l2", 3.0, 4.0),))
    new = bag.set("items['k'].a", 5.0).set("stack[0].b", 6.0)
    assert float(new.items["k"].a.value) == 5.0
    assert float(new.stack[0].b.value) == 6.0
    assert isinstance(new.stack, tuple)
    f = cx.compile(new.to_dynamic("items['k'].a"), "__call__", xs())
    assert f.names == ["l1.a"]


def test_stale_reference_targets_current_state():
    pair, shared = shared_pair()
    edited = pair.set("left.b", 7.0)
    again = edited.to_static(shared.b)  # `shared` is from before the edit
    assert float(again.left.b.value) == 7.0
    assert again.left.b.kind == "static"


def test_pointer_inputs_are_children():
    lc = Gaussian1D("lc", t0=-3.0, sigma=2.0, peak_flux=0.25)
    time = cx.Param("time", None, shape=())
    sn = Gaussian("sn", x0=[0.0, 0.0], q=1.0, phi=0.0, sigma=0.1)
    sn = sn.set("flux", cx.Pointer(lambda lc, t: lc.flux(t), lc, time))
    assert [p.name for p in sn.dynamic_params] == ["time"]
    assert "lc" in str(sn)
    f = cx.compile(sn, "brightness", jnp.zeros(1), jnp.zeros(1))
    assert f.size == 1
    assert f.unflatten(jnp.array([3.0])).flux.value == pytest.approx(0.25 * np.exp(0.0))


def test_conflicting_copies_are_an_error():
    line = Line("l", 1.0, 2.0).to_dynamic()
    other = Line("o", 1.0, 2.0).set("a", line.a)  # holds a copy of line.a
    edited = line.set("a", 5.0)  # now the copy in `other` is stale
    pair = Pair("p", edited, other)
    with pytest.raises(cx.GraphError, match="two different states"):
        cx.compile(pair, "__call__", xs())


def test_pointer_cycle_is_named():
    g = Gaussian1D("g", t0=1.0, sigma=2.0, peak_flux=1.0)
    g2 = g.set("t0", cx.Pointer(lambda s: s, g.sigma))
    g3 = g2.set("sigma", cx.Pointer(lambda t: t, g2.t0))
    with pytest.raises(cx.GraphError, match="pointer cycle: .*t0.*sigma"):
        cx.compile(g3, "flux", 1.0)
    with pytest.raises(cx.GraphError, match="itself"):
        g.set("t0", g.t0)


# -- editing ----------------------------------------------------------------------------
def test_to_dynamic_children_only():
    pair, _ = shared_pair()
    static = pair.to_static(children_only=False)
    assert static.dynamic_params == ()
    assert Line("l", 1.0, 2.0).to_dynamic().param_order() == "l: a, l: b"
    # children_only=True on a module without own params changes nothing
    assert pair.to_static().dynamic_params == pair.dynamic_params
    top = static.to_dynamic("right", children_only=False)
    assert top.param_order() == "shared: a, shared: b, other: a, other: b"


def test_module_level_edits_skip_pointers_but_named_pointer_converts():
    lc = Gaussian1D("lc", t0=-3.0, sigma=2.0, peak_flux=0.25)
    sn = Gaussian("sn", x0=[0.0, 0.0], q=1.0, phi=0.0, sigma=0.1)
    sn = sn.set("flux", cx.Pointer(lambda lc: lc.flux(0.0), lc))
    assert sn.to_dynamic().flux.pointer
    direct = sn.to_dynamic("flux")
    assert direct.flux.kind == "dynamic"
    assert float(direct.flux.value) == pytest.approx(0.25 * np.exp(-((3.0 / 2.0) ** 2)))


def test_set_variants():
    line = Line("l", 1.0, 2.0)
    assert float(line.set("a", 3.0).a.value) == 3.0
    assert line.set("a", 3.0).a.kind == "static"
    assert line.to_dynamic("a").set("a", 3.0).a.kind == "dynamic"  # kind kept
    linked = line.set("b", line.a)  # Param -> pointer
    assert linked.b.pointer and float(linked(1.0)) == 2.0
    fn = line.set("b", cx.Pointer(lambda a: 10 * a, line.a))
    assert float(fn(0.0)) == 10.0
    assert fn.set("b", 4.0).b.kind == "static"  # a pointer given an array becomes static
    both = line.set(a=5.0, b=6.0)
    assert float(both(1.0)) == 11.0
    pair = Pair("p", line, line, scale=2.0)
    assert pair.set("scale", 3.0).scale == 3.0  # plain field
    assert pair.set(scale=4.0).scale == 4.0
    swapped = pair.set("left", Line("new", 0.0, 0.0))
    assert swapped.left.name == "new"


def test_set_values_schemes():
    pair, _ = shared_pair()
    x = jnp.array([5.0, 6.0, 7.0])
    by_array = pair.set_values(x)
    by_list = pair.set_values([5.0, 6.0, 7.0])
    by_dict = pair.set_values(pair.set_values(x).get_values("dict"))
    for m in (by_array, by_list, by_dict):
        np.testing.assert_allclose(m.get_values(), x)
    with pytest.raises(cx.FillError, match="no child 'nope'"):
        pair.set_values({"nope": 1.0})
    with pytest.raises(cx.FillError, match=r"expected \(3,\)"):
        pair.set_values(jnp.zeros(4))


# -- reading ---------------------------------------------------------------------------
def test_get_values_and_groups():
    m = Line("l", 1.0, 2.0).to_dynamic()
    assert m.get_values("list")[1] == 2.0
    assert m.get_values("dict") == {"a": m.a.value, "b": m.b.value}

    class G(cx.Module):
        a: cx.Param
        b: cx.Param

        def __init__(self):
            super().__init__("g")
            self.a = cx.Param("a", 1.0, dynamic=True, group=1)
            self.b = cx.Param("b", [2.0, 3.0], dynamic=True)

        @cx.forward
        def __call__(self, a, b):
            return a * jnp.sum(b)

    g = G()
    x0, x1 = g.get_values()
    assert x0.tolist() == [2.0, 3.0] and x1.tolist() == [1.0]
    assert g.get_values(group=1).tolist() == [1.0]
    f = cx.compile(g)
    assert f.size == (2, 1)
    assert float(f(jnp.array([1.0, 1.0]), jnp.array([3.0]))) == 6.0
    assert float(g((jnp.array([1.0, 2.0]), jnp.array([2.0])))) == 6.0


def test_kind_tuples_find_param_find_index(data):
    from caskax.examples.stages import stage3_model

    like = stage3_model(data)
    assert [p.name for p in like.dynamic_params][:2] == ["x0", "t0"]
    assert len(like.pointer_params) == 9  # 5 fluxes + 4 linked positions
    assert all(p.static for p in like.static_params)
    p, idx = like.find_param(1)
    assert p.name == "x0" and idx == (1,)
    assert like.find_param(2)[0].name == "t0"
    assert like.find_index("model.models[0].models[0].x0") == slice(0, 2)
    lc = like.model.models[0].models[0].flux.ptr.inputs[0]
    assert like.find_index(lc.t0) == 2
    with pytest.raises(cx.ParamError, match="not a dynamic param"):
        like.find_index("model.models[0].models[0].q")
    assert "lightcurve" in str(like) and "pointer" in str(like)


def test_unknown_target_path():
    with pytest.raises(cx.GraphError, match="no 'zz'"):
        Line().set("zz", 1.0)
    stranger = cx.Param("s", 1.0)
    with pytest.raises(cx.GraphError, match="not in the tree"):
        Line().to_dynamic(stranger)


# -- forward ---------------------------------------------------------------------------
def test_forward_filling():
    line = Line("l", a=None, b=1.0)
    assert float(line(2.0, [3.0])) == 7.0
    assert float(line(2.0, params=jnp.array([3.0]))) == 7.0
    assert float(line(2.0, {"a": 3.0})) == 7.0
    assert float(line(2.0, a=4.0)) == 9.0  # keyword overrides
    with pytest.raises(cx.FillError, match="no value"):
        line(2.0)
    with pytest.raises(cx.FillError, match="no dynamic params"):
        Line("s", 1.0, 1.0)(2.0, [1.0])


def test_forward_nested_and_live():
    class Outer(cx.Module):
        inner: Line

        def __init__(self):
            super().__init__("outer")
            self.inner = Line("inner", a=None, b=dynamic_free())

        @cx.forward
        def __call__(self, x):
            filled = self.inner.set(b=2.0 * x)  # fill the live param
            return filled(x)

    def dynamic_free():
        return None

    outer = Outer().to_static("inner.b")
    assert outer.inner.b.live
    assert float(outer(3.0, [2.0])) == 2.0 * 3.0 + 6.0

    with pytest.raises(cx.ParamError, match="live param 'inner.b' is unset"):
        Line("inner", a=1.0, b=None).to_static("b")(1.0)


def test_jit_of_module_method_and_filter_jit():
    import equinox as eqx

    line = Line("l", 2.0, 1.0)
    assert float(jax.jit(line.__call__)(3.0)) == 7.0
    assert float(eqx.filter_jit(line.__call__)(3.0)) == 7.0
    assert hash(line) == id(line)


def test_original_never_mutated():
    line = Line("l", 1.0, 2.0)
    before = (line.a.value, line.a.kind, line.b.value)
    line.to_dynamic().set("a", 9.0).set_values([1.0, 2.0]).to_static()
    assert (line.a.value, line.a.kind, line.b.value) == before


def test_pointer_inputs_by_path():
    line = Line("l", 2.0, 0.0).set("b", cx.Pointer(lambda a: 10 * a, "a"))
    assert float(line(1.0)) == 22.0
    with pytest.raises(cx.GraphError, match="no 'nope'"):
        Line("l", 2.0, 0.0).set("b", cx.Pointer(lambda a: a, "nope"))


def test_forgetting_super_init_is_explained():
    class Bad(cx.Module):
        a: cx.Param

        def __init__(self):
            self.a = cx.Param("a", 1.0)

    with pytest.raises(TypeError, match=r"must call super\(\).__init__\(name\)"):
        Bad()
