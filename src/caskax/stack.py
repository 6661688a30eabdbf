"""Stacked components: k modules of one class become one module with a member axis.

``S = cx.stack(sources)`` turns k modules of one class and one structure into one
module of that class whose member-specific params carry a leading axis of length k.
Model code then maps over the members with `stack_map` (a ``jax.vmap`` over that
axis), so XLA compiles one member's arithmetic once, whatever k is.

What becomes what:

* a param that each member holds on its own (distinct ids): one param of the same
  kind whose value is the members' values stacked, shape ``(k, *shape)``; a static
  param whose value is equal in every member keeps that one value (XLA folds it);
* a node every member holds (the same id: a common width placed in every source, a
  light curve that every flux points to): kept once, unbatched;
* a pointer: one pointer with the members' function; inputs shared by all members stay
  as they are, member-specific inputs are stacked (a plain array input becomes a static
  param named after the function's argument, so `caskax.batch_axes` maps it), and the
  function is applied member by member (``jax.vmap``) when it sees stacked inputs.

Flat order. The stacked model's flat vector has the unrolled model's length. A
stacked dynamic param takes one block of ``k * n`` entries, member-major (C order of
its ``(k, *shape)`` value): member ``j``'s ``n`` entries are
``block[j * n:(j + 1) * n]``, in the member's own order. `stack_permutation` gives
the index map between an unrolled model's vector and the stacked one's.

Members. Each node `stack` makes holds its members' record (ids, names, the rank of
one member's value) in a static field, so edited copies, ``jax.tree_util`` round trips
and a stacked model built again and loaded from a state file all `unstack`, with no
table kept anywhere. A forward method of a stacked module is written for one member:
called on the whole stack it raises `caskax.ModuleError`; map it with `stack_map`.

With a single member (k = 1) sharing cannot be seen from ids; there, a node reached
from the member only through pointer inputs (a link out of the member, as caskade
sees it) is shared, and everything else is the member's own.
"""

import dataclasses
import inspect
import math
import os
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np

from . import graph
from .errors import GraphError, ShapeError
from .module import batch_axes, dynamic_layout, own_params
from .param import Param, new_uid

__all__ = ["stack", "unstack", "stack_map", "stack_size", "stack_permutation"]


@dataclasses.dataclass(frozen=True, eq=False)
class _Members:
    """The member record a stacked node carries in its static field ``_stack``: what
    `unstack` needs to give member ``i`` back, and what ``@forward`` reads to refuse a
    call on the whole stack. Edits copy every field, so edited copies keep it.

    It sits in the node's static (treedef) data, which jax compares on every jit call
    to pick compiled code. ``cx.compile`` renumbers node ids so that a model rebuilt
    from scratch (fresh ids) matches its first build and reuses the compiled code. The
    members' ids and names, and the ``origin`` id of the cx.stack call, are fresh per
    build too, but only `unstack`, `stack_size` and `stack_permutation` read them,
    outside any trace. So equality and hash ignore them and keep what tracing can
    depend on: the member count, the rank ``@forward`` checks, the declared shapes, how
    priors and inputs were stacked, the probe path and the members' own records.
    Outside ``cx.compile`` the stacked node's own id is in the treedef too, and it
    belongs to one cx.stack call whose record edits keep: there, two equal treedefs
    never carry records of different members.
    """

    uids: tuple  # the members' node ids (None for a former plain pointer input)
    names: tuple
    rank: int | None = None  # ndim of one member's value (params; None: unknown)
    shape: Any = None  # the members' declared `shape` / `batch_shape` (params)
    batch_shape: Any = None
    prior: bool = False  # the members' priors were stacked leaf by leaf
    raw: Any = None  # for a former plain array input: "numpy" or "jax"
    # modules: path of a stacked param below, checked when none is the module's own
    probe: str | None = None
    inner: tuple | None = None  # the members' own records, when they were stacked nodes
    # the cx.stack call that made the node: unstack splits only that call's nodes, and
    # keeps a shared node that an earlier cx.stack made
    origin: int | None = None

    def _key(self):
        return (
            len(self.uids),
            self.rank,
            self.shape,
            self.batch_shape,
            self.prior,
            self.raw,
            self.probe,
            self.inner,
        )

    def __eq__(self, other):
        return isinstance(other, _Members) and self._key() == other._key()

    def __hash__(self):
        return hash(self._key())


_MODULE_OWN = ("name", "uid", "_filled", "_stack")


# -- cx.stack ---------------------------------------------------------------------------------
def stack(modules, name: str | None = None):
    """Stack k modules of one class and structure into one module of that class.

    Params each member holds on its own get a leading axis of length k; nodes shared by
    every member (same id) stay shared and unbatched; pointers become one pointer with
    stacked member-specific inputs. The result's flat vector has the same length as the
    members' together (see the module docs for the order).

    **Arguments:**

    - `modules`: a sequence of k >= 1 distinct `caskax.Module`s of one class and one
      structure (same params, kinds and shapes; values and names may differ).
    - `name`: the stacked module's name (default: the members' common name, else the
      class name).

    **Returns:** the stacked module. Map over its members with `stack_map` (or
    ``jax.vmap`` with ``cx.batch_axes``); calling its forward methods on the whole
    stack raises `caskax.ModuleError`. `unstack` gives the members back.

    Raises `caskax.GraphError` naming the first difference between members (class,
    kind of a param, a field that is not a param, a pointer function), or
    `caskax.ShapeError` for values of different shapes.

    Example:
        >>> import caskax as cx, jax.numpy as jnp
        >>> from caskax.examples import Gaussian
        >>> width = cx.Param("width", 0.1, dynamic=True)  # one node in every source
        >>> srcs = [Gaussian(f"s{i}", x0=[0.1 * i, 0.0], q=1.0, phi=0.0, sigma=width,
        ...                  flux=1.0 + i).to_dynamic("flux") for i in range(3)]
        >>> S = cx.stack(srcs, name="sources")
        >>> S.x0.value.shape, S.flux.value.tolist(), S.get_values().shape
        ((3, 2), [1.0, 2.0, 3.0], (4,))
        >>> cx.stack_map(S, lambda s: s.brightness(jnp.zeros(5), jnp.zeros(5))).shape
        (3, 5)
    """
    modules = list(modules)
    if not modules:
        raise GraphError("cx.stack needs at least one module.")
    for j, m in enumerate(modules):
        if not graph.is_node(m) or isinstance(m, Param):
            raise GraphError(f"cx.stack: member {j} is a {type(m).__name__}, not a caskax Module.")
    seen = {}
    for j, m in enumerate(modules):
        if m.uid in seen:
            raise GraphError(
                f"cx.stack: members {seen[m.uid]} and {j} are the same module "
                f"'{m.name}'; stack distinct modules (one per component)."
            )
        seen[m.uid] = j
    stacker = _Stacker(modules)
    out = stacker.node(modules, "")
    if name is not None:
        out = graph.copy_with(out, name=str(name))
    graph.walk(out)  # two members holding one shared node in different states: an error
    return out


class _Stacker:
    def __init__(self, modules):
        self.members = modules
        self.k = len(modules)
        self.names = [m.name for m in modules]
        self.memo = {}  # tuple of member ids -> stacked node
        self.group_of = {}  # member id -> the tuple it was stacked with
        self.shared = set()
        self.first = {}  # stacked id -> member 0's node
        self._filled0 = None
        self.origin = new_uid()  # marks the records of this call's nodes
        # One member: nodes reached only through pointer inputs are links out of it.
        self.own = _own_nodes(modules[0]) if self.k == 1 else None

    def where(self, path):
        return f"'{path}'" if path else "the members themselves"

    def member(self, j):
        return f"member {j} ('{self.names[j]}')"

    # -- dispatch on what a field holds -----------------------------------------------
    def value(self, objs, path):
        first = objs[0]
        nodes = [graph.is_node(o) for o in objs]
        if any(nodes):
            if not all(nodes):
                j = nodes.index(not nodes[0])
                raise GraphError(
                    f"cx.stack: at {self.where(path)}, {self.member(0)} holds a "
                    f"{type(first).__name__} and {self.member(j)} a {type(objs[j]).__name__}."
                )
            return self.node(objs, path)
        if isinstance(first, (list, tuple)):
            for j, o in enumerate(objs):
                if type(o) is not type(first) or len(o) != len(first):
                    raise GraphError(
                        f"cx.stack: at {self.where(path)}, {self.member(0)} holds a "
                        f"{type(first).__name__} of length {len(first)} and {self.member(j)} "
                        f"a {type(o).__name__} of length {getattr(o, '__len__', lambda: '-')()}."
                    )
            items = [self.value([o[i] for o in objs], f"{path}[{i}]") for i in range(len(first))]
            if isinstance(first, tuple):
                return type(first)(*items) if hasattr(first, "_fields") else tuple(items)
            return items
        if isinstance(first, dict):
            for j, o in enumerate(objs):
                if not isinstance(o, dict) or list(o) != list(first):
                    raise GraphError(
                        f"cx.stack: at {self.where(path)}, {self.member(0)} has keys "
                        f"{list(first)} and {self.member(j)} "
                        f"{list(o) if isinstance(o, dict) else type(o).__name__}."
                    )
            return type(first)(
                (key, self.value([o[key] for o in objs], f"{path}[{key!r}]")) for key in first
            )
        for j, o in enumerate(objs):
            if not _equal(first, o):
                raise GraphError(
                    f"cx.stack: field {self.where(path)} differs between {self.member(0)} "
                    f"and {self.member(j)}. A field that is not a param must be equal in "
                    "every member; make per-member data a static cx.Param so it is stacked."
                )
        return first

    def node(self, objs, path):
        uids = tuple(o.uid for o in objs)
        if self.k > 1 and len(set(uids)) == 1 or self.k == 1 and uids[0] not in self.own:
            if uids[0] in self.group_of:
                raise self._conflict(uids[0], path)
            self.shared.add(uids[0])
            return objs[0]
        if len(set(uids)) != self.k:
            i, j = _shared_pair(uids)
            raise GraphError(
                f"cx.stack: {self.where(path)} is one node '{objs[i].name}' in members "
                f"{i} and {j} but not in every member. A node is either shared by all "
                "members or each member's own."
            )
        if uids in self.memo:
            return self.memo[uids]
        for u in uids:
            if u in self.shared or self.group_of.get(u, uids) is not uids:
                raise self._conflict(u, path)
        for j, o in enumerate(objs):
            if type(o) is not type(objs[0]):
                raise GraphError(
                    f"cx.stack: at {self.where(path)}, {self.member(0)} holds a "
                    f"{type(objs[0]).__name__} and {self.member(j)} a {type(o).__name__}; "
                    "members must have one class and one structure."
                )
        if isinstance(objs[0], Param):
            new = self.param(objs, path)
        else:
            new = self.module(objs, path)
        self.memo[uids] = new
        for u in uids:
            self.group_of[u] = uids
        self.first[new.uid] = objs[0]
        return new

    def _conflict(self, uid, path):
        return GraphError(
            f"cx.stack: the node at {self.where(path)} (id {uid}) is held differently by "
            "the members (shared in one place, a member's own in another, or paired with "
            "different nodes): members must have one structure."
        )

    # -- modules --------------------------------------------------------------------------
    def module(self, objs, path):
        first = objs[0]
        for f in dataclasses.fields(first):
            if f.metadata.get("static", False) and f.name not in _MODULE_OWN:
                for j, o in enumerate(objs):
                    if not _equal(getattr(first, f.name), getattr(o, f.name)):
                        raise GraphError(
                            f"cx.stack: static field '{_join(path, f.name)}' differs between "
                            f"{self.member(0)} and {self.member(j)}; it must be equal in "
                            "every member."
                        )
        changes = {
            name: self.value([getattr(o, name) for o in objs], _join(path, name))
            for name in graph.node_fields(first)
        }
        names = tuple(o.name for o in objs)
        new = graph.copy_with(
            first, uid=new_uid(), name=_common(names, type(first).__name__), **changes
        )
        rec = _Members(
            tuple(o.uid for o in objs),
            names,
            probe=_probe_path(new),
            inner=_inner(objs),
            origin=self.origin,
        )
        return graph.copy_with(new, _stack=rec)

    # -- params ---------------------------------------------------------------------------
    def param(self, objs, path):
        first = objs[0]
        for j, p in enumerate(objs):
            if p.kind != first.kind:
                raise GraphError(
                    f"cx.stack: param {self.where(path)} is {first.kind} in {self.member(0)} "
                    f"but {p.kind} in {self.member(j)}. The static/dynamic status (and "
                    "pointer/live kind) of a param must be equal in every member: make them "
                    "agree with to_dynamic/to_static before stacking, and link every member "
                    "to one shared param rather than to member 0's."
                )
            for attr in (
                "shape",
                "declared_batch_shape",
                "valid",
                "cyclic",
                "units",
                "group",
                "dtype",
            ):
                if getattr(p, attr) != getattr(first, attr):
                    raise GraphError(
                        f"cx.stack: param {self.where(path)} has {attr}="
                        f"{getattr(first, attr)!r} in {self.member(0)} but "
                        f"{getattr(p, attr)!r} in {self.member(j)}."
                    )
        names = tuple(p.name for p in objs)
        changes = dict(uid=new_uid(), name=_common(names, first.name))
        links = [p.ptr for p in objs]
        if any(lk is not None for lk in links):
            if any(lk is None for lk in links):
                j = next(j for j, lk in enumerate(links) if (lk is None) != (links[0] is None))
                raise GraphError(
                    f"cx.stack: param {self.where(path)} keeps pointer inputs in one of "
                    f"{self.member(0)} and {self.member(j)} but not in the other."
                )
            # A former pointer (now static or dynamic) keeps its inputs as children too.
            changes["ptr"] = self.link(links, path)
        rank = None
        if first.pointer:
            changes["value"] = None  # computed again from the stacked inputs when filled
        else:
            vals = [p.stored for p in objs]
            missing = [v is None for v in vals]
            if any(missing) and not all(missing):
                j = missing.index(not missing[0])
                raise GraphError(
                    f"cx.stack: param {self.where(path)} has a value in one of "
                    f"{self.member(0)} and {self.member(j)} but not in the other."
                )
            shape, batch = first.shape, first.declared_batch_shape
            if first.dynamic and all(missing) or batch is not None:
                # Declared only where no value carries the axis: a value set later (one
                # for all members, or a live param's per-member value) must still fit.
                batch = (self.k,) + first.batch_shape
            if not all(missing):
                rank = vals[0].ndim
                stacked = self.stack_values(vals, path)
                if first.static and _all_equal(stacked):
                    # One static value for every member (q = 1 of round sources) stays
                    # one value: each member sees it as before, and XLA folds it as a
                    # constant where a stacked array would cost k multiplications.
                    changes["value"] = vals[0]
                    batch = first.declared_batch_shape
                else:
                    tracer = isinstance(stacked, jax.core.Tracer)
                    changes["value"] = stacked if tracer else jax.device_put(stacked)
                    if shape is None:  # so that the new leading axis reads as a batch axis
                        shape = tuple(vals[0].shape[len(first.batch_shape) :])
            elif first.dynamic:
                rank = len(first.full_shape())
            changes["shape"] = shape
            changes["declared_batch_shape"] = batch
        prior, stacked_prior = self.priors([p.prior for p in objs], rank, path)
        changes["prior"] = prior
        changes["_stack"] = _Members(
            tuple(p.uid for p in objs),
            names,
            rank,
            first.shape,
            first.declared_batch_shape,
            stacked_prior,
            inner=_inner(objs),
            origin=self.origin,
        )
        return graph.copy_with(first, **changes)

    def stack_values(self, vals, path):
        shapes = {tuple(v.shape) for v in vals}
        if len(shapes) > 1:
            j = next(j for j, v in enumerate(vals) if v.shape != vals[0].shape)
            raise ShapeError(
                f"cx.stack: param {self.where(path)} has shape {tuple(vals[0].shape)} in "
                f"{self.member(0)} but {tuple(vals[j].shape)} in {self.member(j)}."
            )
        if any(isinstance(v, jax.core.Tracer) for v in vals):
            return jnp.stack(vals)
        # Joined on the host: an eager jnp.stack of k arrays compiles a k-operand program.
        return np.stack([np.asarray(v) for v in vals]).astype(vals[0].dtype)

    def priors(self, priors, rank, path):
        first = priors[0]
        if all(p is first for p in priors):
            return first, False
        if any(p is None for p in priors) or rank is None:
            raise GraphError(
                f"cx.stack: param {self.where(path)} has different priors in the members; "
                "give every member a prior (of one kind) or none, or give them one object."
            )
        leaves0, treedef = jax.tree_util.tree_flatten(first)
        cols = [leaves0]
        for j, p in enumerate(priors[1:], 1):
            leaves, tdef = jax.tree_util.tree_flatten(p)
            if tdef != treedef:
                raise GraphError(
                    f"cx.stack: param {self.where(path)} has priors of different kinds in "
                    f"{self.member(0)} and {self.member(j)} ({type(first).__name__} vs "
                    f"{type(p).__name__})."
                )
            cols.append(leaves)
        stacked = []
        for i in range(len(leaves0)):
            leaf = np.stack([np.asarray(c[i]) for c in cols])
            # A member's prior parameter broadcasts against one member's value (right
            # aligned); with the member axis in front it must keep doing so.
            pad = max(0, rank - (leaf.ndim - 1))
            stacked.append(leaf.reshape((self.k,) + (1,) * pad + leaf.shape[1:]))
        return jax.tree_util.tree_unflatten(treedef, stacked), True

    # -- pointers -------------------------------------------------------------------------
    def link(self, links, path):
        fn = links[0].fn
        for j, lk in enumerate(links):
            if not _same_fn(fn, lk.fn):
                hint = ""
                if getattr(fn, "__code__", None) is getattr(lk.fn, "__code__", 0):
                    hint = (
                        " The code is the same but the values it closes over differ: pass "
                        "per-member values as pointer inputs, cx.Pointer(fn, lc, t)."
                    )
                raise GraphError(
                    f"cx.stack: pointer {self.where(path)} computes "
                    f"{_fn_name(fn)} in {self.member(0)} but {_fn_name(lk.fn)} in "
                    f"{self.member(j)}; a stacked pointer needs one function for all members."
                    + hint
                )
            if len(lk.inputs) != len(links[0].inputs):
                raise GraphError(
                    f"cx.stack: pointer {self.where(path)} has {len(links[0].inputs)} inputs "
                    f"in {self.member(0)} but {len(lk.inputs)} in {self.member(j)}."
                )
        inputs, probes = [], []
        for i in range(len(links[0].inputs)):
            col = [lk.inputs[i] for lk in links]
            where = f"{path} (pointer input {i})"
            nodes = [graph.is_node(x) for x in col]
            if all(nodes):
                new = self.node(col, where)
                inputs.append(new)
                probes.append(None if new is col[0] else self.probe(new, where))
            elif not any(nodes):
                if all(_equal(col[0], x) for x in col):
                    inputs.append(col[0])
                    probes.append(None)
                else:
                    new = self.raw_input(col, fn, i, where)
                    inputs.append(new)
                    probes.append((_rank_of(col[0]), None))
            else:
                j = nodes.index(not nodes[0])
                raise GraphError(
                    f"cx.stack: {self.where(where)} is a {type(col[0]).__name__} in "
                    f"{self.member(0)} but a {type(col[j]).__name__} in {self.member(j)}."
                )
        new_fn = fn
        if any(p is not None for p in probes) and not links[0].is_link:
            new_fn = _memberwise(fn, tuple(probes))
        return graph.copy_with(links[0], inputs=tuple(inputs), fn=new_fn)

    def raw_input(self, col, fn, i, where):
        arrays = [np.asarray(x) if not isinstance(x, jax.Array) else x for x in col]
        shapes = {tuple(np.shape(a)) for a in arrays}
        if len(shapes) > 1:
            raise ShapeError(
                f"cx.stack: {self.where(where)} holds arrays of different shapes "
                f"{sorted(shapes)} in the members."
            )
        if any(
            not np.issubdtype(np.asarray(a).dtype, np.number)
            for a in arrays
            if not isinstance(a, jax.Array)
        ):
            raise GraphError(
                f"cx.stack: {self.where(where)} differs between the members and is not an "
                "array; only numeric pointer inputs can be stacked."
            )
        value = np.stack([np.asarray(a) for a in arrays])
        p = Param(
            _arg_name(fn, i),
            value,
            shape=np.shape(arrays[0]),
            dtype=value.dtype,
            description="per-member pointer input (cx.stack)",
        )
        kind = "jax" if isinstance(col[0], jax.Array) else "numpy"
        rec = _Members(
            (None,) * self.k,
            (p.name,) * self.k,
            np.ndim(arrays[0]),
            raw=kind,
            origin=self.origin,
        )
        return graph.copy_with(p, _stack=rec)

    def probe(self, node, where):
        """(ndim of one member's value, path in a module input) of a stacked input, so
        its function can tell the stacked input from one member's."""
        if isinstance(node, Param):
            return (self.member_rank(node, where), None)
        w = graph.walk(node)
        for uid in graph.topological_order(node, w):
            p = w.nodes[uid]
            if isinstance(p, Param) and uid in self.first and not p.pointer:
                return (self.member_rank(p, where), w.paths[uid])
        raise GraphError(
            f"cx.stack: the module input at {self.where(where)} is each member's own but "
            "holds no param of its own to stack."
        )

    def member_rank(self, p, where):
        rec = p._stack
        if rec.rank is not None and not p.pointer:
            return rec.rank
        p0 = self.first[p.uid]
        if p0.shape is not None:
            return len(p0.batch_shape) + len(p0.shape)
        # A pointer with no declared shape: compute member 0's value to learn its rank.
        if self._filled0 is None:
            try:
                self._filled0 = graph.walk(graph.fill(self.members[0], {})).nodes
            except Exception as err:
                raise GraphError(
                    f"cx.stack: cannot tell the shape of pointer '{p0.name}' feeding "
                    f"{self.where(where)} ({err}); declare its shape= in the param."
                ) from None
        return np.ndim(self._filled0[p0.uid].value)


def _memberwise(fn: Callable, probes: tuple) -> Callable:
    """``fn`` applied member by member when its member-specific inputs are stacked
    (under `stack_map`, where each call sees one member, it is ``fn`` itself)."""
    first = next(i for i, p in enumerate(probes) if p is not None)

    def memberwise(*args):
        rank, path = probes[first]
        probe = args[first] if path is None else graph.lookup(args[first], path).value
        if jnp.ndim(probe) == rank:
            return fn(*args)
        in_axes = tuple(
            None if pr is None else (batch_axes(a) if graph.is_node(a) else 0)
            for a, pr in zip(args, probes)
        )
        return jax.vmap(fn, in_axes=in_axes)(*args)

    memberwise._caskax_member_fn = fn
    memberwise.__name__ = getattr(fn, "__name__", "pointer")
    memberwise.__qualname__ = getattr(fn, "__qualname__", memberwise.__name__)
    return memberwise


# -- mapping over members ------------------------------------------------------------------
def stack_map(stacked, fn: Callable):
    """``fn(member)`` for every member of a stacked module, stacked along a leading axis.

    ``fn`` receives one member: its own params hold that member's values, shared nodes
    are as they are. This is ``jax.vmap(fn, in_axes=(cx.batch_axes(stacked),))(stacked)``;
    inside a forward method (the stacked module filled) each member's pointers are
    already computed.

    Example:
        >>> import caskax as cx
        >>> from caskax.examples import Gaussian1D
        >>> lcs = cx.stack([Gaussian1D(f"lc{i}", t0=-i, sigma=1.0, peak_flux=1.0)
        ...                 for i in range(3)])
        >>> [round(float(v), 3) for v in cx.stack_map(lcs, lambda lc: lc.flux(1.0))]
        [0.368, 1.0, 0.368]
    """
    axes = batch_axes(stacked)
    if not any(a == 0 for a in jax.tree_util.tree_leaves(axes)):
        raise GraphError(
            f"cx.stack_map: nothing in '{stacked.name}' has a batch axis; build the module "
            "with cx.stack (or give its params a leading batch axis)."
        )
    return jax.vmap(fn, in_axes=(axes,))(stacked)


def stack_size(stacked) -> int:
    """The number of members k of a module made by `stack`.

    Example:
        >>> import caskax as cx
        >>> from caskax.examples import Gaussian1D
        >>> cx.stack_size(cx.stack([Gaussian1D(t0=float(i)) for i in range(4)]))
        4
    """
    return len(_record(stacked).uids)


def _record(stacked) -> _Members:
    rec = getattr(stacked, "_stack", None) if graph.is_node(stacked) else None
    if rec is None or isinstance(stacked, Param):
        raise GraphError(
            f"'{getattr(stacked, 'name', type(stacked).__name__)}' was not made by cx.stack; "
            "unstack and the permutation need the members it was built from."
        )
    return rec


# -- cx.unstack --------------------------------------------------------------------------------
def unstack(stacked) -> list:
    """The members of a module made by `stack`, with their ids and names and the
    stacked module's current values (so they drop back into the unrolled model).

    Example:
        >>> import caskax as cx
        >>> from caskax.examples import Gaussian1D
        >>> lcs = [Gaussian1D(f"lc{i}", t0=float(i), sigma=1.0, peak_flux=1.0) for i in range(3)]
        >>> S = cx.stack(lcs).set("t0", [5.0, 6.0, 7.0])
        >>> [(m.name, float(m.t0.value), m.uid == lc.uid) for m, lc in zip(cx.unstack(S), lcs)]
        [('lc0', 5.0, True), ('lc1', 6.0, True), ('lc2', 7.0, True)]
    """
    rec = _record(stacked)
    k = len(rec.uids)
    return [_Unstacker(i, k, rec.origin).node(stacked, "") for i in range(k)]


class _Unstacker:
    def __init__(self, i, k, origin):
        self.i, self.k, self.origin, self.memo = i, k, origin, {}

    def record(self, node):
        """``node``'s member record if the cx.stack call being undone made it."""
        rec = node._stack
        return rec if rec is not None and rec.origin == self.origin else None

    def node(self, node, path):
        if id(node) in self.memo:
            return self.memo[id(node)]
        rec = self.record(node)
        if rec is None:
            new = graph.rebuild_children(node, lambda c: self.node(c, path))
            if new is not node:
                raise GraphError(
                    f"cx.unstack: '{path or node.name}' is shared by the members but reads "
                    "a member's own node; it cannot be split into members."
                )
        elif isinstance(node, Param):
            new = self.param(node, rec, path)
        else:
            new = graph.rebuild_children(
                node,
                lambda c: self.node(c, _join(path, c.name)),
                uid=rec.uids[self.i],
                name=rec.names[self.i],
                _stack=rec.inner and rec.inner[self.i],
            )
        self.memo[id(node)] = new
        return new

    def param(self, p, rec, path):
        i = self.i
        changes = dict(
            uid=rec.uids[i],
            name=rec.names[i],
            shape=rec.shape,
            declared_batch_shape=rec.batch_shape,
            _stack=rec.inner and rec.inner[i],
        )
        if p.ptr is not None:
            inputs = tuple(self.link_input(x, path) for x in p.ptr.inputs)
            fn = getattr(p.ptr.fn, "_caskax_member_fn", p.ptr.fn)
            changes["ptr"] = graph.copy_with(p.ptr, inputs=inputs, fn=fn)
        if p.stored is not None and not p.pointer:  # a pointer's value is computed again
            changes["value"] = self.slice(p.stored, rec.rank, p, path)
        elif p.pointer:
            changes["value"] = None
        if rec.prior:
            changes["prior"] = jax.tree_util.tree_map(lambda a: a[i], p.prior)
        return graph.copy_with(p, **changes)

    def link_input(self, x, path):
        rec = self.record(x) if isinstance(x, Param) else None
        if rec is not None and rec.raw is not None:
            value = self.slice(x.stored, rec.rank, x, path)
            return np.asarray(value) if rec.raw == "numpy" else value
        return graph.map_nodes(x, lambda c: self.node(c, path))

    def slice(self, value, rank, p, path):
        ndim = jnp.ndim(value)
        if rank is None or ndim == rank + 1 and value.shape[0] == self.k:
            return value[self.i]
        if ndim == rank:  # set to one value for all members after stacking
            return value
        raise ShapeError(
            f"cx.unstack: param '{path or p.name}' holds shape {tuple(value.shape)}; expected "
            f"({self.k}, ...) with {rank} member axes, or one member's shape."
        )


# -- flat-vector order -----------------------------------------------------------------------
def stack_permutation(unrolled, stacked):
    """Index map from an unrolled model's flat vector to a stacked model's.

    ``unrolled`` and ``stacked`` are Programs or Modules; ``stacked`` holds modules made
    by `stack` from members that are nodes of ``unrolled``. Returns an integer array
    ``perm`` (one per param group, as a tuple, with several groups) with

    ``x_stacked = x_unrolled[perm]`` and ``x_unrolled = x_stacked[np.argsort(perm)]``.

    ``np.asarray(f_unrolled.names)[perm]`` labels the stacked vector member by member
    (``src17.x0[0]``), and a state file or chain of the unrolled model (by caskade or
    caskax) maps onto the stacked model's vector.

    Example:
        >>> import caskax as cx, numpy as np
        >>> from caskax.examples import Gaussian1D
        >>> lcs = [Gaussian1D(f"lc{i}", t0=float(i), sigma=1.0 + i, peak_flux=1.0)
        ...        .to_dynamic("t0", "sigma") for i in range(2)]
        >>> class Pair(cx.Module):
        ...     lcs: object
        ...     def __init__(self, lcs):
        ...         super().__init__("pair"); self.lcs = lcs
        >>> unrolled, stacked = Pair(lcs), Pair(cx.stack(lcs, name="lcs"))
        >>> perm = cx.stack_permutation(unrolled, stacked)
        >>> perm.tolist(), unrolled.get_values()[perm].tolist() == stacked.get_values().tolist()
        ([0, 2, 1, 3], True)
        >>> np.asarray(unrolled.param_order().split(", "))[perm].tolist()
        ['lc0: t0', 'lc1: t0', 'lc0: sigma', 'lc1: sigma']
    """
    u_layout = _layout(unrolled)
    s_layout = _layout(stacked)
    groups = sorted(set(u_layout) | set(s_layout))
    perms = []
    for g in groups:
        where, offset = {}, 0
        for uid, path, n, _ in u_layout.get(g, []):
            where[uid] = (offset, n, path)
            offset += n
        total = offset
        perm, offset = [], 0
        for uid, path, n, rec in s_layout.get(g, []):
            parts = [uid] if rec is None or uid in where else list(rec.uids)
            m = n // len(parts)
            for u in parts:
                if u not in where:
                    raise GraphError(
                        f"stack_permutation: dynamic param '{path}' of the stacked model has "
                        "no counterpart among the unrolled model's dynamic params; stack "
                        "the unrolled model's own modules (cx.stack(unrolled.sources))."
                    )
                start, size, upath = where[u]
                if size != m:
                    raise ShapeError(
                        f"stack_permutation: '{upath}' takes {size} entries in the unrolled "
                        f"model but {m} per member in the stacked '{path}'."
                    )
                perm.append(np.arange(start, start + size))
            offset += n
        perm = np.concatenate(perm) if perm else np.zeros((0,), dtype=int)
        if offset != total or len(np.unique(perm)) != total:
            raise ShapeError(
                f"stack_permutation: group {g} has {total} entries in the unrolled model and "
                f"{offset} in the stacked one, which do not pair one to one."
            )
        perms.append(perm)
    return perms[0] if len(perms) == 1 else tuple(perms)


def _layout(model):
    """group -> [(uid, path, size, member record)] of the dynamic params, in flat order."""
    out = {}
    if hasattr(model, "layout") and not graph.is_node(model):
        module = getattr(model, "module", None)
        nodes = {} if module is None else graph.walk(module, check=False).nodes
        for r in model.layout:
            rec = getattr(nodes.get(r.uid), "_stack", None)
            out.setdefault(r.group, []).append((r.uid, r.path, math.prod(r.shape), rec))
        return out
    w = graph.walk(model)
    for g, params in dynamic_layout(model, w).items():
        out[g] = [(p.uid, w.paths[p.uid] or p.name, p.size(), p._stack) for p in params]
    return out


# -- helpers -----------------------------------------------------------------------------------
def _own_nodes(member) -> set:
    """Ids of the nodes reached from ``member`` through module fields only."""
    own, stack_ = set(), [member]
    while stack_:
        node = stack_.pop()
        if node.uid in own:
            continue
        own.add(node.uid)
        if not isinstance(node, Param):
            stack_.extend(c.node for c in graph.children(node))
    return own


def _inner(objs):
    """The members' own records (members that were stacked nodes), or None."""
    recs = tuple(o._stack for o in objs)
    return None if all(r is None for r in recs) else recs


def _probe_path(module):
    """Path of a stacked param below ``module`` (through module fields, not pointer
    inputs) for ``@forward`` to check, or None when ``module`` has one of its own."""

    def checkable(p):
        return (
            isinstance(p, Param)
            and p._stack is not None
            and p._stack.rank is not None
            and not p.pointer
        )

    if any(checkable(p) for p in own_params(module).values()):
        return None
    todo = [(module, "")]
    while todo:
        node, path = todo.pop(0)
        for c in graph.children(node):
            where = (path + c.path).lstrip(".")
            if checkable(c.node):
                return where
            if not isinstance(c.node, Param):
                todo.append((c.node, "." + where))
    return None


def _shared_pair(uids):
    seen = {}
    for j, u in enumerate(uids):
        if u in seen:
            return seen[u], j
        seen[u] = j
    return 0, 0


def _join(path, name):
    return f"{path}.{name}" if path else name


def _common(names, fallback):
    """The members' name if they share one, else their common prefix without trailing
    digits ("src0", "src1" -> "src"), else ``fallback``."""
    if len(set(names)) == 1:
        return names[0]
    prefix = os.path.commonprefix(list(names)).rstrip("0123456789_-")
    return prefix or fallback


def _equal(a, b) -> bool:
    if a is b:
        return True
    if isinstance(a, jax.core.Tracer) or isinstance(b, jax.core.Tracer):
        return False
    if hasattr(a, "shape") or hasattr(b, "shape"):
        try:
            return np.shape(a) == np.shape(b) and bool(np.array_equal(a, b))
        except (TypeError, ValueError):
            return False
    try:
        return bool(a == b)
    except Exception:
        return False


def _all_equal(stacked) -> bool:
    """True if every member's entry of a host array stacked along axis 0 is equal."""
    if isinstance(stacked, jax.core.Tracer):
        return False
    same = stacked == stacked[:1]
    if np.issubdtype(stacked.dtype, np.inexact):
        same |= np.isnan(stacked) & np.isnan(stacked[:1])
    return bool(np.all(same))


def _same_fn(f, g) -> bool:
    """One function for every member: the same object, or the same code with equal
    closure values and defaults (a lambda written in a loop)."""
    if f is g:
        return True
    cf, cg = getattr(f, "__code__", None), getattr(g, "__code__", None)
    if cf is None or cf is not cg:
        return False
    cells = lambda h: [c.cell_contents for c in (h.__closure__ or ())]  # noqa: E731
    return all(_equal(a, b) for a, b in zip(cells(f), cells(g))) and _equal(
        f.__defaults__, g.__defaults__
    )


def _fn_name(fn):
    return getattr(fn, "__qualname__", type(fn).__name__)


def _arg_name(fn, i):
    try:
        params = [
            p
            for p in inspect.signature(fn).parameters.values()
            if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)
        ]
    except (TypeError, ValueError):
        params = []
    return params[i].name if i < len(params) else f"input{i}"


def _rank_of(x) -> int:
    return int(np.ndim(x))
