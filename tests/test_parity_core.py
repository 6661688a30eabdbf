"""caskade semantics that a caskade user's own code relies on: overrides reach pointers,
stale copies are refused wherever the graph is read, written pointers keep their
inputs, and hierarchical links through `batch_axes` see params outside the batch."""

import os

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
    assert float(static.load_state(path, index=0).p.link.inputs[0].value) == 1.5
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
