"""Collections of nodes as modules of their own: caskade's NodeList, NodeTuple, NodeDict.

A list, tuple or dict of Params and Modules can be a field of any module; these classes
are for using such a collection on its own, as caskade users do: ``get_values``,
``to_dynamic``, forward filling and state files work on it like on any module, and its
members are keyed by their own names (in dicts of values and in HDF5 files, as caskade
keys them), with no extra level for the container.
"""

from .errors import ModuleError
from .graph import is_node
from .module import Module

__all__ = ["NodeList", "NodeTuple", "NodeDict"]


def _check_nodes(cls_name, items):
    for i, item in enumerate(items):
        if not is_node(item):
            raise ModuleError(
                f"{cls_name} holds Params and Modules only; item {i} is a {type(item).__name__}."
            )


class _Sequence(Module):
    _caskax_flat_fields = ("items",)

    def __len__(self):
        return len(self.items)

    def __bool__(self):
        return True  # a module, even when empty

    def __iter__(self):
        return iter(self.items)

    def __getitem__(self, key):
        if isinstance(key, str):
            for item in self.items:
                if item.name == key:
                    return item
            raise KeyError(f"{type(self).__name__} '{self.name}' has no member named {key!r}.")
        if isinstance(key, slice):
            return type(self)(self.items[key])
        return self.items[key]

    def __getattr__(self, name):
        # called only when normal lookup fails: members by name (caskade's n.ptest1)
        if not name.startswith("_"):
            for item in object.__getattribute__(self, "items"):
                if item.name == name:
                    return item
        raise AttributeError(f"{type(self).__name__} has no attribute or member {name!r}.")

    def __add__(self, other):
        if not isinstance(other, _Sequence):
            return NotImplemented
        return type(self)(list(self.items) + list(other.items))


class NodeList(_Sequence):
    """A list of Params and Modules as a module (caskade's ``NodeList``).

    Example:
        >>> import caskax as cx
        >>> nodes = cx.NodeList([cx.Param("a", 1.0, dynamic=True), cx.Param("b", 2.0)])
        >>> len(nodes), nodes.b.name, nodes["a"].kind, nodes.get_values().tolist()
        (2, 'b', 'dynamic', [1.0])
    """

    items: list

    def __init__(self, items=(), name=None):
        super().__init__("NodeList" if name is None else name)
        items = list(items)
        _check_nodes(type(self).__name__, items)
        self.items = items

    def __repr__(self):
        return f"NodeList('{self.name}')[{len(self.items)}]"


class NodeTuple(_Sequence):
    """A tuple of Params and Modules as a module (caskade's ``NodeTuple``).

    Example:
        >>> import caskax as cx
        >>> pair = cx.NodeTuple((cx.Param("a", 1.0), cx.Param("b", 2.0)))
        >>> len(pair), [p.name for p in pair]
        (2, ['a', 'b'])
    """

    items: tuple

    def __init__(self, items=(), name=None):
        super().__init__("NodeTuple" if name is None else name)
        items = tuple(items)
        _check_nodes(type(self).__name__, items)
        self.items = items

    def __repr__(self):
        return f"NodeTuple('{self.name}')[{len(self.items)}]"


class NodeDict(Module):
    """A dict of Params and Modules as a module (caskade's ``NodeDict``), keyed by the
    dict's keys.

    Example:
        >>> import caskax as cx
        >>> d = cx.NodeDict({"x": cx.Param("x", 1.0, dynamic=True)})
        >>> d["x"].name, d.get_values("dict")["x"].item()
        ('x', 1.0)
    """

    _caskax_flat_fields = ("items",)
    items: dict

    def __init__(self, items=None, name=None):
        super().__init__("NodeDict" if name is None else name)
        items = dict(items or {})
        _check_nodes(type(self).__name__, list(items.values()))
        self.items = items

    def __len__(self):
        return len(self.items)

    def __bool__(self):
        return True

    def __iter__(self):
        return iter(self.items)

    def __getitem__(self, key):
        return self.items[key]

    def keys(self):
        return self.items.keys()

    def values(self):
        return self.items.values()

    def __getattr__(self, name):
        if not name.startswith("_"):
            items = object.__getattribute__(self, "items")
            if name in items:
                return items[name]
        raise AttributeError(f"NodeDict has no attribute or key {name!r}.")

    def __repr__(self):
        return f"NodeDict('{self.name}')[{len(self.items)}]"
