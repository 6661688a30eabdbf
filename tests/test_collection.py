"""cx.NodeList / NodeTuple / NodeDict: caskade's standalone collections of nodes."""

import h5py
import jax.numpy as jnp
import pytest

import caskax as cx


@pytest.mark.parametrize("kind", [cx.NodeList, cx.NodeTuple])
def test_sequences_behave_as_caskade_collections(kind, tmp_path):
    params = [cx.Param("ptest1", 1.0), cx.Param("ptest2", [1.0, 2.0])]
    empty = kind()
    assert empty.name.startswith(kind.__name__) and len(empty) == 0
    nodes = kind(params)
    assert nodes[0] is params[0] and nodes.ptest1 is params[0] and nodes["ptest2"] is params[1]
    both = empty + nodes + kind([cx.Module("m1")])
    assert len(both) == 3 and "[3]" in repr(both)
    dyn = both.to_dynamic(children_only=False)
    assert len(dyn.static_params) == 0 and dyn.get_values().tolist() == [1.0, 1.0, 2.0]
    assert set(dyn.get_values("dict")) == {"ptest1", "ptest2"}  # keyed by member names
    assert dyn.set_values({"ptest1": 5.0}).ptest1.value == 5.0
    assert len(dyn.to_static(children_only=False).static_params) == 2
    path = tmp_path / "nodes.h5"
    dyn.save_state(path)
    with h5py.File(path) as f:  # caskade's layout: no level for the container
        assert f"{both.name}/ptest2/value" in f
    assert dyn.set_values([0.0, 0.0, 0.0]).load_state(path).get_values().tolist() == [1.0, 1.0, 2.0]
    with pytest.raises(TypeError):
        kind(params + [1])
    with pytest.raises(KeyError):
        nodes["missing"]


def test_node_dict_and_forward_use():
    class Sum(cx.Module):
        terms: cx.NodeDict

        def __init__(self, terms):
            super().__init__("sum")
            self.terms = terms

        @cx.forward
        def __call__(self):
            return sum(p.value for p in self.terms.values())

    terms = cx.NodeDict({"a": cx.Param("a", 1.0, dynamic=True), "b": cx.Param("b", 2.0)})
    assert terms["a"].name == "a" and terms.b.name == "b" and len(terms) == 2
    model = Sum(terms)
    assert float(model()) == 3.0 and float(model(jnp.array([5.0]))) == 7.0
    assert model.get_values("dict") == {"terms": {"a": model.terms.a.value}}
