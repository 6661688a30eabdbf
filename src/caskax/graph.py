"""The graph pass: identity, order, targets, rebuilding and filling of module trees.

A caskax model is a nested immutable tree, but its *graph* is keyed by node id (uid):
a Param or Module placed in several parents is one node. Everything here runs in
Python at trace time only; nothing of it survives into compiled code.

Order of the flat vector (caskade's rule, so both libraries give the same vector):
a depth-first search that visits children in reverse and records nodes after their
children; the reversed record puts every parent before all of its children. On a tree
this is plain pre-order; a shared node comes after every parent that holds it.
"""

import dataclasses
import re
from typing import Any, Callable, NamedTuple

import jax
import numpy as np

from .errors import FillError, GraphError, ShapeError
from .param import Param
from .param import Pointer as _Pointer

__all__ = [
    "is_node",
    "children",
    "walk",
    "topological_order",
    "dynamic_order",
    "resolve",
    "replace",
    "fill",
    "copy_with",
    "values_to_dict",
]


def is_node(x) -> bool:
    """True for a caskax `Param` or `Module`."""
    return isinstance(x, Param) or getattr(type(x), "_caskax_module", False)


def copy_with(obj, **changes):
    """A new instance of the (frozen) dataclass ``obj`` with some fields changed.

    This builds a new object, as equinox's own unflatten does; ``obj`` is untouched.
    """
    if isinstance(obj, Param):
        if "value" in changes:
            changes["stored"] = changes.pop("value")  # `value` is read through a property
        if "link" in changes:
            changes["ptr"] = changes.pop("link")
    unknown = set(changes) - {f.name for f in dataclasses.fields(obj)}
    if unknown:
        raise TypeError(f"{type(obj).__name__} has no field(s) {sorted(unknown)}")
    new = object.__new__(type(obj))
    for field in dataclasses.fields(obj):  # not __dataclass_fields__: that lists ClassVars
        name = field.name
        object.__setattr__(new, name, changes[name] if name in changes else getattr(obj, name))
    return new


def node_fields(node) -> list[str]:
    """Names of the non-static dataclass fields of a module, in declaration order."""
    return [f.name for f in dataclasses.fields(node) if not f.metadata.get("static", False)]


class Child(NamedTuple):
    key: tuple  # keys as caskade (and its HDF5 files) name this child
    path: str  # attribute/index path from the parent, e.g. ".models[0]"
    node: Any


def _collect(value, key, path, out):
    if is_node(value):
        out.append(Child(key, path, value))
    elif isinstance(value, (list, tuple)):
        for i, v in enumerate(value):
            sub = key + (v.name,) if is_node(v) else key + (str(i),)
            _collect(v, sub, f"{path}[{i}]", out)
    elif isinstance(value, dict):
        for k, v in value.items():
            _collect(v, key + (str(k),), f"{path}[{k!r}]", out)


def children(node) -> list[Child]:
    """The direct child nodes of ``node`` in order: a module's fields in declaration
    order (list/tuple members in order, dict values in insertion order), or a pointer
    param's inputs."""
    out: list[Child] = []
    if isinstance(node, Param):
        if node.ptr is not None:
            for i, inp in enumerate(node.ptr.inputs):
                if is_node(inp):
                    out.append(Child((inp.name,), f".ptr.inputs[{i}]", inp))
        return out
    # a collection module (cx.NodeList...) keys its members by their own names, as
    # caskade does, with no level for the container field
    flat = getattr(type(node), "_caskax_flat_fields", ())
    for name in node_fields(node):
        _collect(getattr(node, name), () if name in flat else (name,), "." + name, out)
    return out


class Walk(NamedTuple):
    nodes: dict  # uid -> canonical node (first visit, pre-order)
    paths: dict  # uid -> path of the first visit ("" for the root)
    copies: dict  # uid -> list of distinct objects carrying that uid
    owner: dict  # uid -> uid of the parent at the first visit (None for the root)
    keys: dict  # uid -> key (caskade's naming) under that parent at the first visit


def walk(root, check: bool = True) -> Walk:
    """Visit every node below ``root`` (pre-order), grouping copies by uid.

    With ``check`` (the default), two copies of one uid in different states raise a
    `GraphError` naming the node: every reader of the graph (eager calls, values,
    files, compile) would otherwise pick whichever copy it met first.
    """
    nodes, paths, copies, owner, keys, seen, stale = {}, {}, {}, {}, {}, set(), None
    # Iterative (an explicit stack) so that deep trees do not hit Python's recursion limit.
    stack = [(root, "", None, ())]
    while stack:
        node, path, parent, key = stack.pop()
        if id(node) in seen:
            continue
        seen.add(id(node))
        uid = node.uid
        if uid not in nodes:
            nodes[uid], paths[uid], copies[uid] = node, path, [node]
            owner[uid], keys[uid] = parent, key
        else:
            if (
                check
                and stale is None
                and not _same_state(_own_state(copies[uid][0]), _own_state(node))
            ):
                stale = (nodes[uid], paths[uid], path)
            copies[uid].append(node)
        for child in reversed(children(node)):
            stack.append((child.node, (path + child.path).lstrip("."), uid, child.key))
    w = Walk(nodes, paths, copies, owner, keys)
    if stale is not None:
        check_cycles(w)  # a cycle (only possible through stale copies) is the better error
        raise _stale_error(*stale)
    return w


def _stale_error(node, first_path, other_path) -> GraphError:
    where = f"'{first_path or node.name}' and '{other_path or node.name}'"
    return GraphError(
        f"node '{node.name}' appears in two different states, at {where} (two copies of "
        "one node were edited separately, e.g. linked between trees before one side "
        "changed). Link after combining the trees, or edit the combined tree so every "
        "copy changes at once."
    )


def _label(w: Walk, uid) -> str:
    name, path = w.nodes[uid].name, w.paths[uid]
    return name if not path or path == name else f"{name} (at {path})"


def _cycle_error(w: Walk, cycle: list) -> GraphError:
    return GraphError(
        "pointer cycle: " + " -> ".join(_label(w, u) for u in cycle) + ". A param cannot "
        "depend on itself; make one of them static or dynamic."
    )


def topological_order(root, w: Walk | None = None) -> list:
    """Uids below ``root`` with every parent before its children (caskade's order).

    Raises `GraphError` naming the cycle if pointers form one.
    """
    w = walk(root) if w is None else w
    return _post_order(w, root.uid)[::-1]


def _post_order(w: Walk, start) -> list:
    """Children before parents: a depth-first search that visits children in reverse
    (caskade's rule), kept on an explicit stack so deep graphs need no recursion."""
    visited, on_stack, order = set(), [], []
    in_stack = set()
    stack = [(start, None)]
    while stack:
        uid, kids = stack[-1]
        if kids is None:
            if uid in in_stack:
                raise _cycle_error(w, on_stack[on_stack.index(uid) :] + [uid])
            if uid in visited:
                stack.pop()
                continue
            visited.add(uid)
            in_stack.add(uid)
            on_stack.append(uid)
            kids = iter([c.node.uid for c in reversed(children(w.nodes[uid]))])
            stack[-1] = (uid, kids)
        nxt = next(kids, None)
        if nxt is None:
            stack.pop()
            on_stack.pop()
            in_stack.discard(uid)
            order.append(uid)
        elif nxt in in_stack:
            raise _cycle_error(w, on_stack[on_stack.index(nxt) :] + [nxt])
        elif nxt not in visited:
            stack.append((nxt, None))
    return order


def dynamic_order(root, w: Walk | None = None) -> list[Param]:
    """The dynamic params below ``root`` in flat-vector order (groups ascending)."""
    w = walk(root) if w is None else w
    params = [w.nodes[u] for u in topological_order(root, w)]
    params = [p for p in params if isinstance(p, Param) and p.dynamic]
    return sorted(params, key=lambda p: p.group)  # stable: order kept within a group


def check_cycles(w: Walk) -> None:
    """Raise `GraphError` naming a pointer cycle, following the edges of every copy
    of every node (a cycle can only appear through stale copies in a nested tree)."""
    edges = {uid: [] for uid in w.nodes}
    for uid, objs in w.copies.items():
        for obj in objs:
            edges[uid].extend(c.node.uid for c in children(obj) if c.node.uid in edges)
    done, on_stack = set(), []

    def visit(uid):
        if uid in on_stack:
            raise _cycle_error(w, on_stack[on_stack.index(uid) :] + [uid])
        if uid in done:
            return
        on_stack.append(uid)
        for nxt in edges[uid]:
            visit(nxt)
        on_stack.pop()
        done.add(uid)

    for uid in w.nodes:
        visit(uid)


def check_copies(w: Walk) -> None:
    """Raise `GraphError` if two objects with one uid differ (for a walk made with
    ``check=False``)."""
    for uid, objs in w.copies.items():
        if len(objs) > 1:
            first = _own_state(objs[0])
            for other in objs[1:]:
                if not _same_state(first, _own_state(other)):
                    raise _stale_error(w.nodes[uid], w.paths[uid], "")


def _own_state(node):
    leaves, treedef = jax.tree_util.tree_flatten(
        node, is_leaf=lambda x: x is not node and is_node(x)
    )
    leaves = [("node", x.uid) if is_node(x) else x for x in leaves]
    return treedef, leaves


def _same_state(a, b) -> bool:
    if a[0] != b[0] or len(a[1]) != len(b[1]):
        return False
    for x, y in zip(a[1], b[1]):
        if x is y:
            continue
        if isinstance(x, jax.core.Tracer) or isinstance(y, jax.core.Tracer):
            continue  # values under a transform are checked when compiled, not here
        try:
            if hasattr(x, "shape") or hasattr(y, "shape"):
                if np.shape(x) != np.shape(y) or not np.array_equal(x, y, equal_nan=True):
                    return False
            elif x != y:
                return False
        except (TypeError, ValueError):
            return False
    return True


def nesting_depth(root) -> int:
    """How deeply ``root``'s pytree nests (modules, params, pointers and containers each
    count one level), found on an explicit stack. JAX flattens pytrees recursively, one
    stack frame or more per level."""
    deepest, seen = 0, set()
    stack = [(root, 1)]
    while stack:
        obj, d = stack.pop()
        if isinstance(obj, (list, tuple)):
            items = obj
        elif isinstance(obj, dict):
            items = obj.values()
        elif is_node(obj) or isinstance(obj, _Pointer):
            if id(obj) in seen:
                continue
            seen.add(id(obj))
            items = [
                getattr(obj, f.name)
                for f in dataclasses.fields(obj)
                if not f.metadata.get("static", False)
            ]
        else:
            continue
        deepest = max(deepest, d)
        stack.extend((x, d + 1) for x in items)
    return deepest


# -- targets ---------------------------------------------------------------------------
_TOKEN = re.compile(r"\.?([A-Za-z_]\w*)|\[(-?\d+)\]|\[\s*(['\"])(.*?)\3\s*\]")


def parse_path(path: str) -> list:
    """``"models[0].x0"`` -> ``["models", 0, "x0"]``."""
    tokens, pos = [], 0
    while pos < len(path):
        m = _TOKEN.match(path, pos)
        if m is None or m.end() == pos:
            raise GraphError(f"cannot parse target path {path!r} at position {pos}.")
        if m.group(1) is not None:
            tokens.append(m.group(1))
        elif m.group(2) is not None:
            tokens.append(int(m.group(2)))
        else:
            tokens.append(m.group(4))
        pos = m.end()
    return tokens


def _step(obj, token, path):
    try:
        if isinstance(token, str) and not isinstance(obj, dict):
            return getattr(obj, token)
        return obj[token]
    except (AttributeError, KeyError, IndexError, TypeError):
        avail = ""
        if is_node(obj) and not isinstance(obj, Param):
            avail = " Fields here: " + ", ".join(node_fields(obj)) + "."
        raise GraphError(f"target path {path!r}: no {token!r} in {_name(obj)}.{avail}") from None


def _name(obj):
    return getattr(obj, "name", type(obj).__name__)


def lookup(root, path: str):
    """The object at ``path`` below ``root``."""
    obj = root
    for token in parse_path(path):
        obj = _step(obj, token, path)
    return obj


def resolve(root, target, w: Walk | None = None) -> int:
    """The uid of ``target`` in ``root``: a node object, a path string or a
    where-function. A node object stands for the tree's current state of it."""
    w = walk(root) if w is None else w
    if isinstance(target, str):
        node = lookup(root, target) if target else root
    elif is_node(target):
        node = target
    elif callable(target):
        node = target(root)
    else:
        raise GraphError(
            f"cannot use {type(target).__name__} as a target: give a Param or Module, a "
            "path string like 'models[0].x0', or a function like lambda m: m.models[0].x0."
        )
    if not is_node(node):
        raise GraphError(f"target {target!r} is a {type(node).__name__}, not a Param or Module.")
    if node.uid not in w.nodes:
        raise GraphError(
            f"{type(node).__name__} '{node.name}' is not in the tree of '{root.name}'. "
            "Targets must be nodes of the receiver (or paths relative to it)."
        )
    return node.uid


# -- rebuilding --------------------------------------------------------------------------
def map_nodes(value, fn: Callable):
    """Rebuild lists/tuples/dicts in ``value``, replacing each node ``n`` by ``fn(n)``."""
    if is_node(value):
        return fn(value)
    if isinstance(value, list):
        return [map_nodes(v, fn) for v in value]
    if isinstance(value, tuple):
        items = [map_nodes(v, fn) for v in value]
        return type(value)(*items) if hasattr(value, "_fields") else tuple(items)
    if isinstance(value, dict):
        return type(value)((k, map_nodes(v, fn)) for k, v in value.items())
    return value


def _same(a, b) -> bool:
    if a is b:
        return True
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)) and len(a) == len(b):
        return all(_same(x, y) for x, y in zip(a, b))
    if isinstance(a, dict) and isinstance(b, dict) and a.keys() == b.keys():
        return all(_same(a[k], b[k]) for k in a)
    return False


def rebuild_children(node, fn: Callable, **extra):
    """A copy of ``node`` whose child nodes are replaced by ``fn(child)`` (``node``
    itself when nothing changed and no ``extra`` field changes are given)."""
    if isinstance(node, Param):
        if node.ptr is None:
            return copy_with(node, **extra) if extra else node
        inputs = map_nodes(node.ptr.inputs, fn)
        if _same(inputs, node.ptr.inputs) and not extra:
            return node
        return copy_with(node, ptr=copy_with(node.ptr, inputs=inputs), **extra)
    changes = {}
    for name in node_fields(node):
        old = getattr(node, name)
        new = map_nodes(old, fn)
        if not _same(old, new):
            changes[name] = new
    changes.update(extra)
    return copy_with(node, **changes) if changes else node


def replace(root, new_nodes: dict):
    """Rebuild ``root`` with every copy of each uid in ``new_nodes`` replaced."""
    memo = {}

    def result(node):
        return new_nodes[node.uid] if node.uid in new_nodes else memo[id(node)]

    def rebuild(node):
        new = rebuild_children(node, result)
        if new is not node and isinstance(node, Param) and node.pointer and node.stored is not None:
            # A filled pointer (inside a forward call) whose inputs changed holds
            # a stale value: compute it again, as an override would.
            new = copy_with(new, value=compute_pointer(new))
        return new

    _bottom_up(root, lambda n: n.uid in new_nodes, rebuild, memo)
    return result(root)


def _bottom_up(root, stop, build, memo) -> None:
    """``memo[id(node)] = build(node)`` for every object below ``root``, children
    first, on an explicit stack (deep trees need no recursion); nodes where ``stop``
    is true are neither built nor descended into."""
    stack = [(root, False)]
    while stack:
        node, expanded = stack.pop()
        if id(node) in memo or stop(node):
            continue
        if expanded:
            memo[id(node)] = build(node)
            continue
        stack.append((node, True))
        for child in children(node):
            if id(child.node) not in memo and not stop(child.node):
                stack.append((child.node, False))


# -- filling -----------------------------------------------------------------------------
def fill(root, values: dict, w: Walk | None = None):
    """The filled tree: each dynamic param takes ``values[uid]`` (or keeps its stored
    value), each pointer is computed once from its filled inputs, children first, and
    every module is marked filled so its forward methods use these values as they are.
    """
    w = walk(root) if w is None else w
    done = {}

    def filled(node):
        return done[node.uid]

    # children before parents, so every node is built from filled children
    for uid in _post_order(w, root.uid):
        node = w.nodes[uid]
        if isinstance(node, Param):
            done[uid] = _fill_param(node, values, filled, w)
        else:
            done[uid] = rebuild_children(node, filled, _filled=True)
    return done[root.uid]


def _fill_param(p: Param, values, fill_node, w):
    # Inputs are filled for every param that holds them: a pointer reads them, and a
    # former pointer keeps them as children (caskade keeps its links).
    filled = rebuild_children(p, fill_node)
    if p.pointer:
        return copy_with(filled, value=compute_pointer(filled, _label(w, p.uid)))
    if p.uid in values:
        value = values[p.uid]
        # a float32 param keeps its dtype in a float64 vector (x64), as caskade's does
        want = p.dtype if p.dtype is not None else getattr(p.stored, "dtype", None)
        if want is not None and getattr(value, "dtype", want) != want:
            value = value.astype(want)
        return copy_with(filled, value=value)
    return filled


def compute_pointer(p: Param, label: str | None = None):
    """``fn(*inputs)`` of a pointer param whose inputs are filled. An exception raised
    by ``fn`` reaches the user with its own type, with a note naming the pointer."""
    args = [a.value if isinstance(a, Param) else a for a in p.ptr.inputs]
    try:
        value = p.ptr.fn(*args)
    except Exception as err:
        err.add_note(f"(while computing pointer '{label or p.name}')")
        raise
    return _checked_pointer_value(p, value, label)


def _checked_pointer_value(p: Param, value, label):
    shape = getattr(value, "shape", None)
    if p.shape is None or shape is None:
        return value
    n = len(p.shape)
    if len(shape) < n or any(
        s is not None and s != v for s, v in zip(p.shape, shape[len(shape) - n :])
    ):
        raise ShapeError(
            f"pointer '{label or p.name}' computed a value of shape {tuple(shape)}, but the "
            f"param declares shape={p.shape} (extra leading axes are batch axes)."
        )
    return value


def override(root, values: dict):
    """A filled ``root`` in which the params in ``values`` (uid -> value) hold those
    values for one call, and every pointer that depends on them is computed again
    (caskade's OverrideParam: an override reaches the pointers that read it)."""
    done = {}

    def visit(node):
        uid = node.uid
        if uid in done:
            return done[uid]
        if uid in values:
            new = copy_with(node, value=values[uid])
        elif isinstance(node, Param):
            new = rebuild_children(node, visit)
            if new is not node and node.pointer:
                new = copy_with(new, value=compute_pointer(new))
        else:
            new = rebuild_children(node, visit)
        done[uid] = new
        return new

    return visit(root)


def values_to_dict(root, params: list, getter: Callable) -> dict:
    """Nested dict keyed as caskade keys children, holding ``getter(p)`` for each of
    ``params`` (each once, at its first visit)."""
    wanted = {p.uid for p in params}
    seen = set()

    def build(node):
        out = {}
        _check_keys(node)
        for child in children(node):
            c = child.node
            if isinstance(c, Param) and c.uid in wanted and c.uid not in seen:
                seen.add(c.uid)
                _put(out, child.key, getter(c))
            elif not isinstance(c, Param) or c.pointer:
                sub = build(c)
                if sub:
                    _put(out, child.key, sub)
        return out

    return build(root)


def _check_keys(node) -> None:
    """Two different children under one key (list members with the same name) would
    share one dict entry and one HDF5 group: refuse, naming both."""
    seen = {}
    for child in children(node):
        first = seen.setdefault(child.key, child)
        if first.node.uid != child.node.uid:
            raise GraphError(
                f"'{node.name}{first.path}' and '{node.name}{child.path}' are both keyed "
                f"{'/'.join(child.key)!r} (the same name): give them distinct names, since "
                "dicts of values and state files key children by name."
            )


def _put(d, key, value):
    for k in key[:-1]:
        d = d.setdefault(k, {})
    d[key[-1]] = value


def dict_to_values(root, params: list, mapping: dict, fill_module=None) -> dict:
    """Inverse of `values_to_dict`: uid -> value for the params named in ``mapping``.
    A module mapped to an array or list gives its dynamic params through
    ``fill_module(module, params_below, value)``."""
    wanted = {p.uid for p in params}
    out = {}

    def take(node, sub, where):
        _check_keys(node)
        kids = {}
        for child in children(node):
            d = kids
            for k in child.key[:-1]:
                d = d.setdefault(k, {})
            d[child.key[-1]] = child.node
        _match(kids, sub, where)

    def _match(kids, sub, where):
        for key, value in sub.items():
            if key not in kids:
                raise FillError(
                    f"params dict: no child {key!r} under '{where}'. Available: "
                    + ", ".join(map(repr, kids))
                )
            target = kids[key]
            if isinstance(target, dict):
                _match(target, value, f"{where}.{key}")
            elif isinstance(target, Param) and target.uid in wanted and not isinstance(value, dict):
                out[target.uid] = value
            elif isinstance(value, dict):
                take(target, value, f"{where}.{key}")
            elif fill_module is not None and not isinstance(target, Param):
                below = [p for p in dynamic_order(target) if p.uid in wanted]
                out.update(fill_module(target, below, value))
            else:
                raise FillError(
                    f"params dict: '{where}.{key}' is not a dynamic param of '{root.name}'."
                )

    take(root, mapping, root.name)
    return out
