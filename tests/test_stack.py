"""cx.stack / cx.unstack / cx.stack_map / cx.stack_permutation.

The reference is always the unrolled model built from the same member modules: the
stacked model must give its values and gradients at the permuted vector.
"""

import jax
import jax.numpy as jnp
import numpy as np
import numpyro.distributions as dist
import pytest

import caskax as cx
from caskax import graph
from caskax.examples.models import Combined, Gaussian, Gaussian1D, Likelihood

N_PIX = 8
_axis = np.linspace(-1.0, 1.0, N_PIX, dtype=np.float32)
X, Y = np.meshgrid(_axis, _axis, indexing="ij")


class Sky(cx.Module):
    """The stacked counterpart of `Combined`: one stacked source module, mapped."""

    x: jax.Array
    y: jax.Array
    sources: Gaussian

    def __init__(self, name, x, y, sources):
        super().__init__(name)
        self.x, self.y = jnp.asarray(x), jnp.asarray(y)
        self.sources = sources

    @cx.forward
    def __call__(self):
        return cx.stack_map(self.sources, lambda s: s.brightness(self.x, self.y)).sum(0)


class Timed(cx.Module):
    """A source whose own epoch time is a param (dynamic, so it is in the flat vector)."""

    t: cx.Param
    src: Gaussian

    def __init__(self, name, t, src):
        super().__init__(name)
        self.t = cx.Param("t", t, dynamic=True)
        self.src = src

    @cx.forward
    def brightness(self, x, y):
        return self.src.brightness(x, y)


def _sources(k, time_param=False, seed=0):
    """k sources sharing one dynamic width and one light curve (the figure-5b model),
    each with its own dynamic position."""
    rng = np.random.default_rng(seed)
    pos = rng.uniform(-0.7, 0.7, size=(k, 2)).astype(np.float32)
    times = np.linspace(0.0, 6.0, k, dtype=np.float32)
    lc = Gaussian1D("lightcurve", t0=-3.0, sigma=2.5, peak_flux=0.25).to_dynamic()
    width = cx.Param("width", 0.3, dynamic=True, valid=(0, None))
    out = []
    for i in range(k):
        g = Gaussian(f"src{i}", x0=pos[i].tolist(), q=1.0, phi=0.0, sigma=width, flux=0.0)
        g = g.to_dynamic("x0")
        if time_param:
            m = Timed(f"timed{i}", float(times[i]), g)
            m = m.set("src.flux", cx.Pointer(lambda lc, t: lc.flux(t), lc, m.t))
        else:
            m = g.set("flux", cx.Pointer(lambda lc, t: lc.flux(t), lc, np.float32(times[i])))
        out.append(m)
    return out


def _image(k, seed=0):
    rng = np.random.default_rng(seed + 1)
    return (0.2 + 0.05 * rng.standard_normal((N_PIX, N_PIX))).astype(np.float32)


def _models(k, time_param=False):
    members = _sources(k, time_param)
    data = _image(k)
    unrolled = Likelihood("like", Combined("image", X, Y, members), data, 0.1, 25.0)
    stacked = Likelihood(
        "like", Sky("image", X, Y, cx.stack(members, name="sources")), data, 0.1, 25.0
    )
    return members, unrolled, stacked


CASES = [(1, False), (2, False), (10, False), (1, True), (3, True)]


@pytest.mark.parametrize(
    "k, time_param", CASES, ids=[f"k{k}-{'param' if t else 'array'}-time" for k, t in CASES]
)
def test_stacked_matches_unrolled_values_and_gradients(k, time_param):
    _, unrolled, stacked = _models(k, time_param)
    fu, fs = cx.compile(unrolled), cx.compile(stacked)
    assert fs.size == fu.size == 4 + 2 * k + (k if time_param else 0)
    perm = cx.stack_permutation(fu, fs)
    assert sorted(perm.tolist()) == list(range(fu.size))
    xu = fu.init + 0.01 * jnp.arange(fu.size, dtype=jnp.float32)  # distinct from the init
    np.testing.assert_array_equal(np.asarray(fs.init), np.asarray(fu.init)[perm])
    vu, gu = jax.jit(jax.value_and_grad(fu))(xu)
    vs, gs = jax.jit(jax.value_and_grad(fs))(xu[perm])
    np.testing.assert_allclose(float(vs), float(vu), rtol=1e-5)
    np.testing.assert_allclose(np.asarray(gs), np.asarray(gu)[perm], rtol=2e-4, atol=2e-3)


def test_stacked_hessian_matches_unrolled():
    _, unrolled, stacked = _models(2)
    fu, fs = cx.compile(unrolled), cx.compile(stacked)
    perm = cx.stack_permutation(fu, fs)
    hu = np.asarray(jax.jit(jax.hessian(fu))(fu.init))
    hs = np.asarray(jax.jit(jax.hessian(fs))(fu.init[perm]))
    np.testing.assert_allclose(hs, hu[np.ix_(perm, perm)], rtol=1e-3, atol=1e-2)


def test_shared_nodes_stay_shared_and_member_params_get_the_axis():
    members = _sources(4)
    S = cx.stack(members, name="sources")
    assert S.x0.value.shape == (4, 2) and S.x0.batch_shape == (4,)
    # the width every source links to and the light curve every flux reads: kept once
    assert S.sigma.ptr.inputs[0].uid == members[0].sigma.ptr.inputs[0].uid
    assert S.flux.ptr.inputs[0].uid == members[0].flux.ptr.inputs[0].uid
    assert S.flux.ptr.inputs[0].t0.batch_shape == ()
    # a plain per-member pointer input becomes a static param named after the argument
    t = S.flux.ptr.inputs[1]
    assert (t.name, t.kind, t.value.shape) == ("t", "static", (4,))
    # a static value equal in every member stays one value (folded by XLA)
    assert S.q.value.shape == () and float(S.q.value) == 1.0
    assert S.get_values().shape == (4 + 8,)


def test_vmap_with_batch_axes_and_stack_map_see_one_member_each():
    members = _sources(3)
    S = cx.stack(members)
    want = np.stack([np.asarray(jax.jit(lambda m: m.brightness(X, Y))(m)) for m in members])
    got = jax.vmap(lambda s: s.brightness(X, Y), in_axes=(cx.batch_axes(S),))(S)
    np.testing.assert_allclose(np.asarray(got), want, rtol=1e-5, atol=1e-9)
    np.testing.assert_allclose(
        np.asarray(cx.stack_map(S, lambda s: s.brightness(X, Y))), want, rtol=1e-5, atol=1e-9
    )
    assert cx.stack_size(S) == 3
    # the axes tree prints like a module, its axes where the values were (a notebook
    # shows it when it is the cell's last line)
    axes = cx.batch_axes(S)
    text = str(axes)
    assert "x0: dynamic 0" in text and "t: static 0" in text
    assert not any(
        p.batched for p in jax.tree.leaves(axes, is_leaf=lambda n: isinstance(n, cx.Param))
    )


def test_pointer_function_is_applied_member_by_member():
    # x0[0] of the stacked (k, 2) value would be member 0's position for every member:
    # the stacked pointer must apply the function to each member's own x0.
    members = []
    for i in range(3):
        g = Gaussian(f"g{i}", x0=[0.1 * i, -0.2 * i], q=1.0, phi=0.0, sigma=0.5, flux=0.0)
        members.append(g.set("flux", cx.Pointer(lambda x0: 1.0 + x0[0] - x0[1], g.x0)))
    S = cx.stack(members)
    filled = cx.compile(S, "brightness", X, Y).unflatten(jnp.zeros((0,)))
    np.testing.assert_allclose(np.asarray(filled.flux.value), [1.0, 1.3, 1.6], rtol=1e-6)
    got = cx.stack_map(S, lambda s: s.brightness(X, Y))
    want = np.stack([np.asarray(m.brightness(X, Y)) for m in members])
    np.testing.assert_allclose(np.asarray(got), want, rtol=1e-5, atol=1e-9)
    # the short method is the same map
    np.testing.assert_array_equal(np.asarray(S.map(lambda s: s.brightness(X, Y))), got)


def test_map_of_a_module_that_is_not_stacked_names_cx_stack():
    g = Gaussian("g", x0=[0.0, 0.0], q=1.0, phi=0.0, sigma=0.5, flux=1.0)
    with pytest.raises(cx.GraphError, match="build the module with cx.stack"):
        g.map(lambda s: s.brightness(X, Y))


def test_compiled_graph_does_not_grow_with_k():
    sizes = []
    for k in (2, 10):
        _, _, stacked = _models(k)
        f = cx.compile(stacked)
        sizes.append(len(jax.make_jaxpr(f._pure)(f.init).eqns))
    assert sizes[0] == sizes[1]


# -- structure checks ----------------------------------------------------------------------
def _g(name, **kw):
    args = dict(x0=[0.0, 0.0], q=1.0, phi=0.0, sigma=0.5, flux=1.0)
    args.update(kw)
    return Gaussian(name, **args)


def test_mismatch_in_static_dynamic_status_names_param_and_members():
    a, b = _g("a"), _g("b").to_dynamic("flux")
    with pytest.raises(
        cx.GraphError,
        match=r"param 'flux' is static in member 0 \('a'\) but "
        r"dynamic in member 1 \('b'\).*static/dynamic status",
    ):
        cx.stack([a, b])


def test_linking_to_member_zeros_param_is_a_structure_difference():
    # the unrolled figure-5b model links every width to source 0's: not one structure
    s0 = _g("s0").to_dynamic("sigma")
    s1 = _g("s1").set("sigma", s0.sigma)
    with pytest.raises(cx.GraphError, match="'sigma' is dynamic in member 0.*pointer in member 1"):
        cx.stack([s0, s1])


def test_other_structure_differences():
    with pytest.raises(cx.GraphError, match="member 1 .* a Gaussian1D|Gaussian1D"):
        cx.stack([_g("a"), Gaussian1D("b", t0=0.0, sigma=1.0, peak_flux=1.0)])
    with pytest.raises(cx.ShapeError, match="'x0' has shape"):
        cx.stack([_g("a"), _g("b", x0=[[0.0, 0.0]])])
    with pytest.raises(cx.GraphError, match="same module"):
        a = _g("a")
        cx.stack([a, a])
    with pytest.raises(cx.GraphError, match="at least one"):
        cx.stack([])
    c1 = Combined("c1", X, Y, [_g("a")])
    c2 = Combined("c2", X + 1, Y, [_g("b")])
    with pytest.raises(cx.GraphError, match="field 'x' differs .*static cx.Param"):
        cx.stack([c1, c2])
    c3 = Combined("c3", X, Y, [_g("a"), _g("b")])
    with pytest.raises(cx.GraphError, match="'models'.*length 1.*length 2"):
        cx.stack([c1, c3])
    p1 = _g("p1").set("flux", cx.Pointer(lambda q: 2 * q, "q"))
    p2 = _g("p2").set("flux", cx.Pointer(lambda q: 3 * q, "q"))
    with pytest.raises(cx.GraphError, match="pointer 'flux' computes"):
        cx.stack([p1, p2])


def test_node_shared_by_some_members_only():
    shared = cx.Param("w", 0.5)
    a, b = _g("a", sigma=shared), _g("b", sigma=shared)
    c = _g("c", sigma=cx.Param("w", 0.5))  # an equal but separate node
    with pytest.raises(cx.GraphError, match="one node 'w' in members 0 and 1 but not in every"):
        cx.stack([a, b, c])


# -- unstack -------------------------------------------------------------------------------------
@pytest.mark.parametrize("time_param", [False, True], ids=["array-time", "param-time"])
def test_unstack_round_trip(time_param):
    members = _sources(5, time_param)
    S = cx.stack(members, name="sources")
    back = cx.unstack(S)
    assert len(back) == 5
    for m, b in zip(members, back):
        wm, wb = graph.walk(m), graph.walk(b)
        assert list(wm.nodes) == list(wb.nodes)  # same ids, same order
        for uid, node in wm.nodes.items():
            other = wb.nodes[uid]
            assert (type(other), other.name) == (type(node), node.name)
            if isinstance(node, cx.Param):
                assert other.kind == node.kind and other.shape == node.shape
                if node.value is not None:
                    np.testing.assert_array_equal(np.asarray(other.value), np.asarray(node.value))
        np.testing.assert_allclose(np.asarray(b.brightness(X, Y)), np.asarray(m.brightness(X, Y)))


def test_unstack_carries_edits_back_into_the_unrolled_model():
    members, unrolled, stacked = _models(4)
    fu, fs = cx.compile(unrolled), cx.compile(stacked)
    perm = cx.stack_permutation(fu, fs)
    xs = fs.init + 0.02
    edited = stacked.set_values(xs).model.sources
    back = cx.unstack(edited)
    rebuilt = Likelihood("like", Combined("image", X, Y, back), unrolled.data, 0.1, 25.0)
    np.testing.assert_allclose(
        np.asarray(rebuilt.get_values()), np.asarray(xs)[np.argsort(perm)], rtol=1e-6
    )
    np.testing.assert_allclose(
        float(cx.compile(rebuilt)(xs[np.argsort(perm)])), float(fs(xs)), rtol=1e-5
    )


def test_unstack_of_a_module_not_made_by_stack():
    with pytest.raises(cx.GraphError, match="not made by cx.stack"):
        cx.unstack(_g("a"))


# -- values, files, display, names ------------------------------------------------------------
def test_get_set_values_and_names_per_member():
    members = [_g(f"s{i}", flux=float(i)).to_dynamic("flux") for i in range(3)]
    S = cx.stack(members, name="S")
    assert S.get_values().tolist() == [0.0, 1.0, 2.0]
    S2 = S.set_values([5.0, 6.0, 7.0])
    assert S2.flux.value.tolist() == [5.0, 6.0, 7.0] and S2.flux.kind == "dynamic"
    assert np.asarray(S2.get_values("dict")["flux"]).tolist() == [5.0, 6.0, 7.0]
    f = cx.compile(S2, "brightness", X, Y)
    assert f.names == ["S.flux[0]", "S.flux[1]", "S.flux[2]"]  # entry j is member j's


def test_save_and_load_state_of_a_stacked_model(tmp_path):
    _, _, stacked = _models(3)
    path = tmp_path / "stacked.h5"
    stacked.save_state(path)
    moved = stacked.set_values(stacked.get_values() + 1.0)
    loaded = moved.load_state(path)
    np.testing.assert_array_equal(np.asarray(loaded.get_values()), np.asarray(stacked.get_values()))
    assert loaded.model.sources.x0.value.shape == (3, 2)
    np.testing.assert_allclose(float(loaded()), float(stacked()), rtol=1e-6)


def test_state_file_of_the_unrolled_model_loads_through_the_permutation(tmp_path):
    members, unrolled, stacked = _models(4)
    path = tmp_path / "unrolled.h5"
    x_saved = unrolled.get_values() * 1.01
    unrolled.set_values(x_saved).save_state(path)
    fu, fs = cx.compile(unrolled), cx.compile(stacked)
    x_file = unrolled.load_state(path).get_values()  # the unrolled model reads the file
    restored = stacked.set_values(x_file[cx.stack_permutation(fu, fs)])
    np.testing.assert_allclose(float(restored()), float(unrolled.set_values(x_saved)()), rtol=1e-5)


def test_display_shows_the_member_axis():
    S = cx.stack(_sources(3), name="sources")
    text = str(S)
    assert "sources (Gaussian)" in text and "batch (3,)" in text
    assert "lightcurve" in S._repr_html_()


def test_permutation_labels_and_errors():
    members, unrolled, stacked = _models(3, time_param=True)
    fu, fs = cx.compile(unrolled), cx.compile(stacked)
    # unrolled: member by member (a node read by a pointer after every parent of it)
    assert fu.names[:6] == [
        "src0.x0[0]",
        "src0.x0[1]",
        "timed0.t",
        "src1.x0[0]",
        "src1.x0[1]",
        "timed1.t",
    ]
    # stacked: one block per param, member 0's entries first, then member 1's, ...;
    # a stacked (k, 2) param is labelled [member, entry]
    assert fs.names[:3] == ["src.x0[0, 0]", "src.x0[0, 1]", "src.x0[1, 0]"]
    assert fs.names[-3:] == ["sources.t[0]", "sources.t[1]", "sources.t[2]"]
    perm = cx.stack_permutation(fu, fs)
    labels = np.asarray(fu.names)[perm].tolist()
    assert labels[:3] == ["src0.x0[0]", "src0.x0[1]", "src1.x0[0]"]
    assert labels[-3:] == ["timed0.t", "timed1.t", "timed2.t"]
    assert labels[6:10] == [
        "sigma.width",
        "lightcurve.t0",
        "lightcurve.sigma",
        "lightcurve.peak_flux",
    ]  # the shared width and light curve
    x = np.arange(fu.size, dtype=np.float32)
    np.testing.assert_array_equal(x[perm][np.argsort(perm)], x)
    # from modules as well as Programs
    assert cx.stack_permutation(unrolled, stacked).tolist() == perm.tolist()
    other = Likelihood("like", Sky("image", X, Y, cx.stack(_sources(3))), unrolled.data)
    with pytest.raises(cx.GraphError, match="no counterpart"):
        cx.stack_permutation(unrolled, other)


def test_priors_are_stacked_per_member():
    members = [_g(f"s{i}", flux=1.0 + i).to_dynamic("x0", "flux") for i in range(3)]

    def with_prior(m, i):
        p = graph.copy_with(m.flux, prior=dist.Normal(float(i), 1.0 + i))
        q = graph.copy_with(m.x0, prior=dist.Normal(0.0, 2.0))
        return graph.replace(m, {p.uid: p, q.uid: q})

    members = [with_prior(m, i) for i, m in enumerate(members)]
    fu = cx.compile(Combined("c", X, Y, members))
    fs = cx.compile(Sky("c", X, Y, cx.stack(members)))
    perm = cx.stack_permutation(fu, fs)
    x = fu.init + 0.3
    np.testing.assert_allclose(float(fs.log_prior(x[perm])), float(fu.log_prior(x)), rtol=1e-6)


def test_pointer_closing_over_member_values_is_refused_with_a_hint():
    lc = Gaussian1D("lc", t0=-3.0, sigma=2.5, peak_flux=0.25)

    def at(t):
        return lambda lc: lc.flux(t)

    members = [_g(f"s{i}").set("flux", cx.Pointer(at(float(i)), lc)) for i in range(2)]
    with pytest.raises(
        cx.GraphError, match="closes over differ: pass per-member values as pointer inputs"
    ):
        cx.stack(members)


def test_member_module_as_pointer_input():
    # each member's flux reads its own light-curve module (a member-specific module input)
    members = []
    for i in range(3):
        lc = Gaussian1D(f"lc{i}", t0=-float(i), sigma=1.0 + i, peak_flux=1.0)
        members.append(_g(f"s{i}").set("flux", cx.Pointer(lambda lc: lc.flux(0.5), lc)))
    S = cx.stack(members)
    assert S.flux.ptr.inputs[0].t0.value.shape == (3,)
    want = np.stack([np.asarray(jax.jit(lambda m: m.brightness(X, Y))(m)) for m in members])
    got = jax.jit(lambda S: cx.stack_map(S, lambda s: s.brightness(X, Y)))(S)
    np.testing.assert_allclose(np.asarray(got), want, rtol=1e-5, atol=1e-9)
    f = cx.compile(Sky("sky", X, Y, S))
    np.testing.assert_allclose(np.asarray(f(f.init)), want.sum(0), rtol=1e-5, atol=1e-9)


class Line(cx.Module):
    a: cx.Param
    b: cx.Param

    def __init__(self, name, a=None, b=None, group=0):
        super().__init__(name)
        self.a = cx.Param("a", a, dynamic=True)
        self.b = cx.Param("b", b, shape=(2,), dynamic=True, group=group)

    @cx.forward
    def __call__(self, x, a, b):
        return a * x + b[0] - b[1]


def test_dynamic_params_without_values_get_the_member_axis():
    S = cx.stack([Line(f"l{i}") for i in range(3)], name="lines")
    assert S.a.full_shape() == (3,) and S.b.full_shape() == (3, 2)
    f = cx.compile(S, "__call__", 2.0)
    assert f.size == 9
    # what the Program computes is what each member computes with its own slice
    x = jnp.arange(9.0)
    got = jax.vmap(lambda s: s(2.0), in_axes=(cx.batch_axes(f.unflatten(x)),))(f.unflatten(x))
    want = [
        float(a) * 2.0 + float(b0) - float(b1) for a, (b0, b1) in zip(x[:3], x[3:].reshape(3, 2))
    ]
    np.testing.assert_allclose(np.asarray(got), want)


def test_param_groups_give_one_permutation_per_group():
    lines = [Line(f"l{i}", a=float(i), b=[1.0 * i, 2.0 * i], group=1) for i in range(3)]

    class Holder(cx.Module):
        items: object

        def __init__(self, items):
            super().__init__("holder")
            self.items = items

    unrolled, stacked = Holder(lines), Holder(cx.stack(lines, name="lines"))
    p0, p1 = cx.stack_permutation(unrolled, stacked)
    xu0, xu1 = unrolled.get_values()
    xs0, xs1 = stacked.get_values()
    np.testing.assert_array_equal(np.asarray(xu0)[p0], np.asarray(xs0))
    np.testing.assert_array_equal(np.asarray(xu1)[p1], np.asarray(xs1))
    assert np.asarray(xs1).tolist() == [0.0, 0.0, 1.0, 2.0, 2.0, 4.0]


def test_unstack_after_setting_one_value_for_every_member():
    lines = [Line(f"l{i}", a=float(i), b=[0.0, 0.0]) for i in range(3)]
    S = cx.stack(lines).set("b", [5.0, 6.0])  # one (2,) value: every member's
    back = cx.unstack(S)
    assert [np.asarray(m.b.value).tolist() for m in back] == [[5.0, 6.0]] * 3
    assert [float(m.a.value) for m in back] == [0.0, 1.0, 2.0]
    assert len({m.b.uid for m in back}) == 3


class Lit(cx.Module):
    """A source whose flux is live: set inside the forward method from its own param."""

    t: cx.Param
    src: Gaussian

    def __init__(self, name, t):
        super().__init__(name)
        self.t = cx.Param("t", t)
        self.src = Gaussian("src", x0=[0.1 * t, 0.0], q=1.0, phi=0.0, sigma=0.5).to_static("flux")

    @cx.forward
    def brightness(self, x, y):
        return self.src.set(flux=2.0 * self.t.value).brightness(x, y)


def test_live_params_are_set_member_by_member():
    members = [Lit(f"lit{i}", float(i + 1)) for i in range(3)]
    S = cx.stack(members)
    assert S.src.flux.kind == "live"
    got = jax.jit(lambda S: cx.stack_map(S, lambda s: s.brightness(X, Y)))(S)
    want = np.stack([np.asarray(jax.jit(lambda m: m.brightness(X, Y))(m)) for m in members])
    np.testing.assert_allclose(np.asarray(got), want, rtol=1e-5, atol=1e-9)


def test_rebuilt_stacked_model_reuses_compiled_code():
    # the stacked pointers wrap the members' function: the wrapper must key the cache by
    # what it computes, so a rebuilt model with new data compiles nothing new
    run = jax.jit(lambda f, x: f(x))
    _, _, first = _models(3)
    f1 = cx.compile(first)
    run(f1, f1.init)
    n = run._cache_size()
    _, _, again = _models(3)
    f2 = cx.compile(again)
    run(f2, f2.init)
    assert run._cache_size() == n


def test_compile_suggests_stack_for_many_members():
    class Dot(cx.Module):
        a: cx.Param

        def __init__(self, name):
            super().__init__(name)
            self.a = cx.Param("a", 1.0)

    class Many(cx.Module):
        dots: list

        def __init__(self, n):
            super().__init__("many")
            self.dots = [Dot(f"d{i}") for i in range(n)]

    with pytest.warns(cx.CaskaxWarning, match="cx.stack"):
        cx.compile(Many(300), "param_order")
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error", cx.CaskaxWarning)
        cx.compile(Many(20), "param_order")


# -- the member record travels in the stacked nodes -------------------------------------------
def _assert_members_back(back, members):
    assert [(b.uid, b.name) for b in back] == [(m.uid, m.name) for m in members]
    for b, m in zip(back, members):
        np.testing.assert_allclose(np.asarray(b.brightness(X, Y)), np.asarray(m.brightness(X, Y)))


def test_unstack_reads_the_record_on_the_node_not_a_table():
    members = _sources(3)
    S = cx.stack(members, name="sources")
    # a jax.tree_util round trip rebuilds every node from its treedef
    leaves, treedef = jax.tree_util.tree_flatten(S)
    _assert_members_back(cx.unstack(jax.tree_util.tree_unflatten(treedef, leaves)), members)
    # fresh ids for the stacked nodes (as cx.compile's structure key renumbers them): no
    # lookup by id can find the members, the nodes' own records do
    fresh = graph.copy_with(S, uid=S.uid + 10**9)
    _assert_members_back(cx.unstack(fresh), members)
    assert cx.stack_size(fresh) == 3
    # edits return new trees that keep the record
    edited = S.to_static("x0").to_dynamic("x0").set_values(S.get_values())
    _assert_members_back(cx.unstack(edited), members)


def test_unstack_after_load_state_into_a_rebuilt_stacked_model(tmp_path):
    members, _, stacked = _models(3)
    path = tmp_path / "stacked.h5"
    moved = stacked.set_values(stacked.get_values() + 0.05)
    moved.save_state(path)
    members2, _, rebuilt = _models(3)  # the same model built again: new ids everywhere
    loaded = rebuilt.load_state(path)
    back = cx.unstack(loaded.model.sources)
    assert [b.uid for b in back] == [m.uid for m in members2]
    want = cx.unstack(moved.model.sources)
    for b, w in zip(back, want):
        np.testing.assert_allclose(np.asarray(b.x0.value), np.asarray(w.x0.value), rtol=1e-6)


_OTHER_PROCESS = """
import json, sys
import numpy as np
import caskax as cx
from caskax.examples import Gaussian

members = [Gaussian(f"s{i}", x0=[0.1 * i, 0.0], q=1.0, phi=0.0, sigma=0.3, flux=1.0)
           .to_dynamic("x0") for i in range(3)]
S = cx.stack(members, name="sources").load_state(sys.argv[1])
back = cx.unstack(S)
print(json.dumps({
    "uids": [b.uid == m.uid for b, m in zip(back, members)],
    "x0": [np.asarray(b.x0.value).tolist() for b in back],
}))
"""


def test_unstack_in_another_process_after_load_state(tmp_path):
    import json
    import subprocess
    import sys

    from caskax.examples import Gaussian

    members = [
        Gaussian(f"s{i}", x0=[0.1 * i, 0.0], q=1.0, phi=0.0, sigma=0.3, flux=1.0).to_dynamic("x0")
        for i in range(3)
    ]
    S = cx.stack(members, name="sources")
    S = S.set_values(np.arange(6, dtype=np.float32))
    S.save_state(tmp_path / "s.h5")
    run = subprocess.run(
        [sys.executable, "-c", _OTHER_PROCESS, str(tmp_path / "s.h5")],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert run.returncode == 0, run.stderr[-2000:]
    got = json.loads(run.stdout.strip().splitlines()[-1])
    assert got["uids"] == [True, True, True]
    assert got["x0"] == [[0.0, 1.0], [2.0, 3.0], [4.0, 5.0]]


def test_stack_module_holds_no_mutable_state():
    import caskax.stack as st

    containers = {
        name: type(v).__name__
        for name, v in vars(st).items()
        if not name.startswith("__") and isinstance(v, (dict, list, set, bytearray))
    }
    assert containers == {}


def test_records_compare_by_what_tracing_needs_not_by_member_ids():
    a = cx.stack([_g(f"a{i}", flux=float(i)) for i in range(3)])
    b = cx.stack([_g(f"b{i}", flux=float(i)) for i in range(3)])
    assert a._stack.uids != b._stack.uids and a.x0._stack.uids != b.x0._stack.uids
    assert a._stack == b._stack and hash(a._stack) == hash(b._stack)
    assert a.x0._stack == b.x0._stack and hash(a.x0._stack) == hash(b.x0._stack)
    # the member count and the rank of one member's value do count
    c = cx.stack([_g(f"c{i}", flux=float(i)) for i in range(4)])
    assert a.x0._stack != c.x0._stack
    assert a.x0._stack != a.flux._stack  # rank 1 against rank 0


def test_stack_of_stacks_unstacks_level_by_level():
    rows = [
        cx.stack([_g(f"g{j}{i}", x0=[0.1 * i, 0.1 * j]) for i in range(2)], name=f"row{j}")
        for j in range(3)
    ]
    grid = cx.stack(rows, name="grid")
    assert grid.x0.value.shape == (3, 2, 2)
    back = cx.unstack(grid)
    assert [(r.uid, r.name) for r in back] == [(r.uid, r.name) for r in rows]
    for r, row in zip(back, rows):
        assert [m.uid for m in cx.unstack(r)] == [m.uid for m in cx.unstack(row)]
    got = cx.stack_map(grid, lambda r: cx.stack_map(r, lambda g: g.brightness(X, Y)))
    assert got.shape == (3, 2, N_PIX, N_PIX)


def test_unstack_keeps_a_shared_node_that_an_earlier_stack_made():
    class Holder(cx.Module):
        lcs: Gaussian1D
        a: cx.Param

        def __init__(self, name, lcs, a):
            super().__init__(name)
            self.lcs, self.a = lcs, cx.Param("a", a)

    lcs = cx.stack([Gaussian1D(f"lc{i}", t0=float(i)) for i in range(4)], name="lcs")
    back = cx.unstack(cx.stack([Holder(f"h{i}", lcs, float(i)) for i in range(2)]))
    assert [b.lcs is lcs for b in back] == [True, True]
    assert [float(b.a.value) for b in back] == [0.0, 1.0]


# -- a stacked module's forward method sees one member ---------------------------------------
class Wrapped(cx.Module):
    """No param of its own: its child holds the member-specific params."""

    src: Gaussian

    def __init__(self, name, src):
        super().__init__(name)
        self.src = src

    @cx.forward
    def brightness(self, x, y):
        return self.src.brightness(x, y)


@pytest.mark.parametrize("k", [1, 3])
def test_calling_a_stacked_forward_method_directly_is_an_error(k):
    S = cx.stack(_sources(k), name="sources")
    msg = (
        rf"'sources' is a stack of {k} members.*'x0'.*shape \({k}, 2\).*"
        r"cx.stack_map\(sources, lambda s: s.brightness\(...\)\).*cx.batch_axes\(sources\)"
    )
    with pytest.raises(cx.ModuleError, match=msg):
        S.brightness(X, Y)
    with pytest.raises(cx.ModuleError, match=msg):
        jax.jit(lambda S: S.brightness(X, Y))(S)
    # a dynamic param filled from a flat vector carries the member axis too
    with pytest.raises(cx.ModuleError, match="stack of"):
        S.brightness(X, Y, S.get_values())
    # no own stacked param: the one below it is checked, and the stack is named
    W = cx.stack([Wrapped(f"w{i}", s) for i, s in enumerate(_sources(k))], name="wrapped")
    with pytest.raises(cx.ModuleError, match=rf"'wrapped' is a stack of {k} members"):
        W.brightness(X, Y)
    # a stack of stacks mapped over its outer axis only still holds one row's members
    rows = [cx.stack([_g(f"g{j}{i}", x0=[0.1 * i, 0.1 * j]) for i in range(2)]) for j in range(3)]
    grid = cx.stack(rows, name="grid")
    with pytest.raises(cx.ModuleError, match="'grid' is a stack of 2 members"):
        cx.stack_map(grid, lambda r: r.brightness(X, Y))


def test_mapped_calls_of_a_stacked_forward_method_still_work():
    members = _sources(3)
    S = cx.stack(members, name="sources")
    want = np.stack([np.asarray(m.brightness(X, Y)) for m in members])
    for got in (
        cx.stack_map(S, lambda s: s.brightness(X, Y)),
        jax.vmap(lambda s: s.brightness(X, Y), in_axes=(cx.batch_axes(S),))(S),
        jax.jit(lambda S: cx.stack_map(S, lambda s: s.brightness(X, Y)))(S),
    ):
        np.testing.assert_allclose(np.asarray(got), want, rtol=1e-5, atol=1e-9)
    W = cx.stack([Wrapped(f"w{i}", m) for i, m in enumerate(members)])
    np.testing.assert_allclose(
        np.asarray(cx.stack_map(W, lambda w: w.brightness(X, Y))), want, rtol=1e-5, atol=1e-9
    )
    # a model holding the stack maps inside its own forward: plain, jit, grad, compile
    # (the compiled model against the unrolled one: test_stacked_matches_unrolled_...)
    _, _, stacked = _models(3)
    fs = cx.compile(stacked)
    xs = fs.init + 0.01
    np.testing.assert_allclose(float(stacked(xs)), float(fs(xs)), rtol=1e-5)
    g = jax.jit(jax.grad(lambda x: stacked(x)))(xs)
    np.testing.assert_allclose(np.asarray(g), np.asarray(jax.grad(fs)(xs)), rtol=1e-4, atol=1e-6)
    assert np.all(np.isfinite(np.asarray(g))) and np.any(np.asarray(g) != 0)
