"""Programs: a module method compiled into a pure function of a flat vector.

``f = cx.compile(module, "method", *args)`` runs the graph pass once (identity, copy
check, cycle check, layout) and returns a `Program`. ``f(x)`` fills the tree from ``x``
and calls ``module.method(*args)``. All graph work happens at trace time; the compiled
code is the user's arithmetic only.
"""

import hashlib
import sys
import warnings
import math
from typing import NamedTuple

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np

from . import graph, transforms
from .errors import CaskaxWarning, DepthError, GraphError, ShapeError, depth_error
from .module import _memo_scope, dynamic_layout
from .param import Param

__all__ = ["compile", "Program", "LayoutRow"]


class _Row(NamedTuple):
    path: str
    shape: tuple
    slice: slice
    valid: tuple | None
    units: str | None


class LayoutRow(_Row):
    """One dynamic param's place in the flat vector (the rows of `Program.layout`).

    A 5-tuple ``(path, shape, slice, valid, units)``, with the attributes ``group``,
    ``cyclic``, ``uid`` and ``name`` (the label used in `Program.names`) as well.

    Example:
        >>> import caskax as cx
        >>> from caskax.examples import Gaussian1D
        >>> f = cx.compile(Gaussian1D("lc", t0=-3.0, sigma=2.0, peak_flux=0.25).to_dynamic(), "flux", 0.0)
        >>> path, shape, where, valid, units = f.layout[1]
        >>> path, shape, where, valid, f.layout[1].name
        ('sigma', (), slice(1, 2, None), (0.0, None), 'lc.sigma')
    """

    def __new__(cls, path, shape, slice, valid, units, group=0, cyclic=False, uid=None, name=None):
        row = super().__new__(cls, path, shape, slice, valid, units)
        row.group, row.cyclic, row.uid = group, cyclic, uid
        row.name = path if name is None else name
        return row

    def __eq__(self, other):
        extra = ("group", "cyclic", "uid", "name")
        return tuple.__eq__(self, other) and all(
            getattr(self, k) == getattr(other, k, None) for k in extra
        )

    def __hash__(self):
        return hash((tuple(self[:2]), self.slice.start, self.slice.stop, self.uid))

    def __repr__(self):
        return (
            f"LayoutRow(path={self.path!r}, shape={self.shape}, slice={self.slice}, "
            f"valid={self.valid}, units={self.units!r}, group={self.group}, name={self.name!r})"
        )


class _FnKey:
    """A pointer function as it enters a cache key: compared by what it computes (code,
    closure values, defaults, globals), not by object, so the fresh lambdas of a
    rebuilt model do not force a new trace."""

    __slots__ = ("fn",)

    def __init__(self, fn):
        self.fn = fn

    def _parts(self):
        f = self.fn
        code = getattr(f, "__code__", None)
        if code is None:  # builtins, partials, callable objects: by identity
            return (id(f),)
        return (
            code,
            id(getattr(f, "__globals__", None)),
            _values_key(_cells(f)),
            _values_key(getattr(f, "__defaults__", None) or ()),
            _values_key(tuple(sorted((getattr(f, "__kwdefaults__", None) or {}).items()))),
        )

    def __eq__(self, other):
        return isinstance(other, _FnKey) and self._parts() == other._parts()

    def __hash__(self):
        return hash(self._parts()[0])


def _cells(f):
    out = []
    for cell in getattr(f, "__closure__", None) or ():
        try:
            out.append(cell.cell_contents)
        except ValueError:  # an empty cell
            out.append(_FnKey)
    return tuple(out)


def _values_key(values):
    # Plain scalars and strings by value, functions by what they compute, tuples item by
    # item (a wrapper closing over its function and a tuple of settings, as cx.stack's
    # pointers do); anything else (arrays, modules) by identity.
    return tuple(_value_key(v) for v in values)


def _value_key(v):
    if isinstance(v, (bool, int, float, complex, str, bytes, type(None))):
        return v
    if isinstance(v, tuple):
        return ("tuple", _values_key(v))
    if getattr(v, "__code__", None) is not None:
        return _FnKey(v)
    return ("id", id(v))


def _canonical_structure(tree):
    """The tree structure with node uids renumbered by first visit and pointer
    functions wrapped in `_FnKey`: equal for two builds of the same model."""
    module = tree[0]
    w = graph.walk(module)
    number = {uid: i for i, uid in enumerate(w.nodes)}
    memo = {}

    def canon(node):
        if id(node) not in memo:
            new = graph.rebuild_children(node, canon, uid=number[node.uid])
            if isinstance(new, Param) and new.ptr is not None:
                new = graph.copy_with(new, ptr=graph.copy_with(new.ptr, fn=_FnKey(new.ptr.fn)))
            memo[id(node)] = new
        return memo[id(node)]

    return jax.tree_util.tree_structure((canon(module),) + tuple(tree[1:]))


class _Static:
    """The non-array part of a Program. Compared structurally (uids renumbered, pointer
    functions by code), so Programs that differ only in array values, and rebuilds of
    one model, share jax's compiled code."""

    __slots__ = ("treedef", "leaves", "rows", "method", "valid", "key", "_cmp", "_hash")

    def __init__(self, treedef, leaves, rows, method, valid, key):
        self.treedef, self.leaves, self.rows = treedef, leaves, rows
        self.method, self.valid, self.key = method, valid, key
        # jit hashes and compares this on every call with a Program argument: do the
        # work once (the fields never change).
        # slices are unhashable before Python 3.12: use their ends.
        rows = tuple(
            (
                r.path,
                r.shape,
                r.slice.start,
                r.slice.stop,
                r.valid,
                r.units,
                r.group,
                r.cyclic,
                r.name,
            )
            for r in rows
        )
        self._cmp = (key, rows, method, valid)
        try:
            self._hash = hash((self._cmp, leaves))
        except TypeError:
            self._hash = hash(self._cmp)

    def __hash__(self):
        return self._hash

    def __eq__(self, other):
        if self is other:
            return True
        if not isinstance(other, _Static) or self._hash != other._hash or self._cmp != other._cmp:
            return False
        try:
            return bool(self.leaves == other.leaves)
        except Exception:
            return all(a is b for a, b in zip(self.leaves, other.leaves))


class _Slot:
    """Marks where an array leaf goes back in; arrays are stored once each."""

    __slots__ = ("index",)

    def __init__(self, index):
        self.index = index

    def __eq__(self, other):
        return isinstance(other, _Slot) and other.index == self.index

    def __hash__(self):
        return hash(("slot", self.index))


def _content(x):
    """Equal arrays share one key: the same object, or equal concrete contents."""
    if isinstance(x, jax.core.Tracer):
        return ("id", id(x))
    a = np.asarray(x)
    digest = hashlib.blake2b(np.ascontiguousarray(a).view(np.uint8).ravel(), digest_size=16)
    return (
        type(x).__name__,
        a.shape,
        str(a.dtype),
        getattr(x, "weak_type", None),
        digest.hexdigest(),
    )


def _split(tree):
    # Equal arrays (the pixel grid of every image model, even as separate copies) become
    # one leaf: a Program passed to jit has as few arguments as the model has distinct
    # arrays, and the memo of shared forward calls sees one object for one value.
    leaves, treedef = jax.tree_util.tree_flatten(tree)
    arrays, where, by_id, static = [], {}, {}, []
    for x in leaves:
        if eqx.is_array(x):
            if id(x) not in by_id:
                key = _content(x)
                if key not in where:
                    where[key] = len(arrays)
                    # A numpy leaf passed to jit is copied to the device on every call
                    # (five scalar times made a GPU call 3.5x slower): move it once here.
                    arrays.append(x if isinstance(x, jax.Array) else jax.device_put(x))
                by_id[id(x)] = where[key]
            static.append(_Slot(by_id[id(x)]))
        else:
            static.append(x)
    return arrays, (treedef, tuple(static))


def _join(arrays, treedef, static):
    leaves = [arrays[s.index] if isinstance(s, _Slot) else s for s in static]
    return jax.tree_util.tree_unflatten(treedef, leaves)


class Program:
    """A compiled module method: ``f(x)`` (``f(x0, x1, ...)`` with param groups).

    A Program is a pytree whose leaves are the model's arrays, so
    ``jax.jit(lambda f, x: f(x))`` reuses compiled code across new data. Calling it
    directly runs a cached ``jax.jit`` closed over those arrays.

    Attributes: `init`, `size`, `layout`, `names`, `module`, `method`, `valid`.

    Example:
        >>> import caskax as cx, jax.numpy as jnp
        >>> class Line(cx.Module):
        ...     a: cx.Param
        ...     b: cx.Param
        ...     def __init__(self):
        ...         super().__init__("line")
        ...         self.a = cx.Param("a", 1.0, dynamic=True)
        ...         self.b = cx.Param("b", 0.0, dynamic=True)
        ...     @cx.forward
        ...     def __call__(self, x, a, b):
        ...         return a * x + b
        >>> f = cx.compile(Line(), "__call__", jnp.arange(3.0))
        >>> f(jnp.array([2.0, 1.0])).tolist(), f.names
        ([1.0, 3.0, 5.0], ['line.a', 'line.b'])
    """

    __slots__ = ("_arrays", "_static", "_direct", "__weakref__")

    def __init__(self, module, method, args, kwargs, valid, rows):
        tree = (module, tuple(args), dict(kwargs))
        arrays, (treedef, leaves) = _split(tree)
        self._arrays = tuple(arrays)
        self._static = _Static(
            treedef, leaves, tuple(rows), method, bool(valid), _canonical_structure(tree)
        )
        self._direct = None

    @classmethod
    def _from_parts(cls, arrays, static):
        new = object.__new__(cls)
        new._arrays, new._static, new._direct = tuple(arrays), static, None
        return new

    # -- structure --------------------------------------------------------------------
    @property
    def _tree(self):
        s = self._static
        return _join(self._arrays, s.treedef, s.leaves)

    @property
    def module(self):
        """The (unfilled) module this Program was compiled from."""
        return self._tree[0]

    @property
    def method(self) -> str:
        return self._static.method

    @property
    def valid(self) -> bool:
        """True if the Program takes unconstrained vectors (``compile(..., valid=True)``)."""
        return self._static.valid

    @property
    def layout(self) -> tuple:
        """One `LayoutRow` (path, shape, slice, valid, units, ...) per dynamic param."""
        return self._static.rows

    @property
    def groups(self) -> tuple:
        return tuple(sorted({r.group for r in self.layout})) or (0,)

    def _rows(self, g):
        return [r for r in self.layout if r.group == g]

    def _per_group(self, values):
        return values[0] if len(values) == 1 else tuple(values)

    @property
    def size(self):
        """Length of the flat vector (a tuple with several groups)."""
        return self._per_group(
            [sum(math.prod(r.shape) for r in self._rows(g)) for g in self.groups]
        )

    @property
    def names(self):
        """One label per entry of the flat vector, e.g. ``"SN.x0[1]"``; entries of a
        param with several axes (a stacked member axis, an image) are labelled by their
        index on each, e.g. ``"sources.x0[17, 0]"``."""
        out = []
        for g in self.groups:
            labels = []
            for r in self._rows(g):
                if r.shape == ():
                    labels.append(r.name)
                elif len(r.shape) == 1:
                    labels.extend(f"{r.name}[{i}]" for i in range(r.shape[0]))
                else:
                    for idx in np.ndindex(*r.shape):
                        labels.append(f"{r.name}[{', '.join(map(str, idx))}]")
            out.append(labels)
        return self._per_group(out)

    @property
    def init(self):
        """Current values of the dynamic params, flat (unconstrained if ``valid``)."""
        x = self.module.get_values("array")
        xs = x if isinstance(x, tuple) else (x,)
        return self.to_valid(*xs) if self.valid else self._per_group(list(xs))

    # -- calling -----------------------------------------------------------------------
    def __call__(self, *xs):
        if self._direct is None:
            if self._traced:
                # Inside a transformation that took this Program as an argument: one
                # nested jit, so an optimiser's loop that calls f in several places
                # traces the model once.
                return _apply_nested(self._arrays, self._static, xs)
            tree, static = self._tree, self._static
            self._direct = jax.jit(lambda *xs: _apply(tree, static, xs))
        # Also under vmap or grad outside jit: the compiled function batches or
        # differentiates as a whole, where tracing op by op would compile each op.
        try:
            return self._direct(*xs)
        except RecursionError as err:
            if isinstance(err, DepthError):
                raise
            raise depth_error(f"the model of {self!r}") from None

    @property
    def _traced(self) -> bool:
        """True inside a transformation that took this Program as an argument."""
        return any(isinstance(a, jax.core.Tracer) for a in self._arrays)

    def _eager(self, xs) -> bool:
        """Called outside any transformation: run the method compiled, as one program."""
        return not (self._traced or any(isinstance(x, jax.core.Tracer) for x in xs))

    def _pure(self, *xs):
        return _apply(self._tree, self._static, xs)

    def unflatten(self, *xs):
        """The module filled with ``x`` (pointers computed): inspect any param's value.

        Example:
            >>> import caskax as cx, jax.numpy as jnp
            >>> from caskax.examples import Gaussian1D
            >>> f = cx.compile(Gaussian1D("lc", t0=-3.0, sigma=2.0, peak_flux=0.25).to_dynamic(), "flux", 0.0)
            >>> float(f.unflatten(jnp.array([1.0, 2.0, 3.0])).peak_flux.value)
            3.0
        """
        module = self._tree[0]
        xs = _check_inputs(self._static, xs)
        if self.valid:
            xs = tuple(self._map(xs, transforms.from_valid))
        return graph.fill(module, _values(self._static, xs))

    # -- valid ranges -------------------------------------------------------------------
    def _map(self, xs, fn):
        for g, x in zip(self.groups, xs):
            parts = []
            for r in self._rows(g):
                part = x[r.slice]
                parts.append(fn(part, _flat_valid(r), r.cyclic) if r.valid is not None else part)
            yield jnp.concatenate(parts) if parts else x

    def _group_map(self, xs, group, fn):
        # caskade's to_valid(params, group=g): one vector, of group g only
        if len(xs) != 1:
            raise ShapeError(
                f"with group={group}, give one flat vector (of that group), got {len(xs)}."
            )
        rows = self._rows(group)
        if not rows:
            raise ShapeError(
                f"this Program has no param group {group}; groups: {list(self.groups)}."
            )
        x = jnp.asarray(xs[0])
        n = sum(math.prod(r.shape) for r in rows)
        if x.ndim != 1 or x.shape[0] != n:
            raise ShapeError(
                f"group {group} takes a flat vector of shape ({n},), got {tuple(x.shape)}."
            )
        parts = [
            fn(x[r.slice], _flat_valid(r), r.cyclic) if r.valid is not None else x[r.slice]
            for r in rows
        ]
        return jnp.concatenate(parts)

    def to_valid(self, *xs, group=None):
        """Constrained flat vector(s) -> unconstrained (see `caskax.transforms`). With
        ``group=g``, one vector of that param group (caskade's ``to_valid(x, group=g)``).

        Example:
            >>> import caskax as cx, jax.numpy as jnp
            >>> from caskax.examples import Gaussian1D
            >>> f = cx.compile(Gaussian1D("lc", t0=-3.0, sigma=1.0, peak_flux=0.25).to_dynamic(), "flux", 0.0)
            >>> u = f.to_valid(f.init)           # sigma has valid=(0, None): log(sigma)
            >>> u.tolist(), f.from_valid(u).tolist()
            ([-3.0, 0.0, 0.25], [-3.0, 1.0, 0.25])
            >>> float(f.log_det_jacobian(u))     # log|d exp(u)/du| at u = 0
            0.0
        """
        if group is not None:
            return self._group_map(xs, group, transforms.to_valid)
        xs = _check_inputs(self._static, xs)
        if self._eager(xs):
            return _compiled_method(self, "to_valid", xs)
        return self._per_group(list(self._map(xs, transforms.to_valid)))

    def from_valid(self, *us, group=None):
        """Unconstrained flat vector(s) -> constrained (``group=`` as in `to_valid`)."""
        if group is not None:
            return self._group_map(us, group, transforms.from_valid)
        us = _check_inputs(self._static, us)
        if self._eager(us):
            return _compiled_method(self, "from_valid", us)
        return self._per_group(list(self._map(us, transforms.from_valid)))

    def log_det_jacobian(self, *us):
        """``log|det d from_valid / du|``, summed over all entries (0 for cyclic)."""
        us = _check_inputs(self._static, us)
        if self._eager(us):
            return _compiled_method(self, "log_det_jacobian", us)
        total = jnp.zeros((), dtype=jnp.result_type(us[0]))
        for g, u in zip(self.groups, us):
            for r in self._rows(g):
                if r.valid is not None:
                    total = total + transforms.log_det_jacobian(
                        u[r.slice], _flat_valid(r), r.cyclic
                    )
        return total

    def log_prior(self, *xs):
        """Sum of the params' prior log-densities at ``x`` (0 for params without one).
        A ``valid=True`` Program takes ``u`` here too and maps it first.

        Example:
            >>> import caskax as cx, jax.numpy as jnp
            >>> import numpyro.distributions as dist
            >>> class M(cx.Module):
            ...     a: cx.Param
            ...     def __init__(self):
            ...         super().__init__("m")
            ...         self.a = cx.Param("a", 0.0, dynamic=True, prior=dist.Normal(0.0, 1.0))
            ...     @cx.forward
            ...     def __call__(self, a):
            ...         return -a**2
            >>> round(float(cx.compile(M()).log_prior(jnp.zeros(1))), 4)  # -log(sqrt(2 pi))
            -0.9189
        """
        xs = _check_inputs(self._static, xs)
        if self._eager(xs):
            return _compiled_method(self, "log_prior", xs)
        if self.valid:
            xs = tuple(self._map(xs, transforms.from_valid))
        w = graph.walk(self._tree[0])
        total = jnp.zeros((), dtype=jnp.result_type(xs[0]))
        for g, x in zip(self.groups, xs):
            for r in self._rows(g):
                prior = w.nodes[r.uid].prior
                if prior is not None:
                    total = total + jnp.sum(prior.log_prob(x[r.slice].reshape(r.shape)))
        return total

    def __repr__(self):
        return f"Program({self.module.name}.{self.method}, size={self.size}, valid={self.valid})"


@jax.jit(static_argnums=1)
def _apply_nested(arrays, static, xs):
    return Program._from_parts(arrays, static)._pure(*xs)


@jax.jit(static_argnames="method")
def _compiled_method(f: Program, method: str, xs: tuple):
    # The Program is an argument, so rebuilt Programs of one structure share the code.
    return getattr(f, method)(*xs)


def _flatten(p: Program):
    return p._arrays, p._static


def _unflatten(static, arrays):
    return Program._from_parts(arrays, static)


jax.tree_util.register_pytree_node(Program, _flatten, _unflatten)


def _check_inputs(static, xs):
    rows = static.rows
    groups = sorted({r.group for r in rows}) or [0]
    if len(xs) != len(groups):
        raise ShapeError(
            f"this Program takes {len(groups)} flat vector(s) (groups {groups}), got {len(xs)}."
        )
    out = []
    for g, x in zip(groups, xs):
        x = jnp.asarray(x)
        grow = [r for r in rows if r.group == g]
        n = sum(math.prod(r.shape) for r in grow)
        if x.ndim != 1 or x.shape[0] != n:
            listing = ", ".join(f"{r.path}{list(r.shape)}" for r in grow)
            raise ShapeError(
                f"expected a flat vector of shape ({n},) for group {g} laid out as "
                f"[{listing}], got shape {tuple(x.shape)}. Use jax.vmap for batches."
            )
        if not jnp.issubdtype(x.dtype, jnp.floating):
            raise ShapeError(
                f"expected a real floating-point vector for group {g}, got dtype {x.dtype}"
                + (" (caskax flat vectors are real)." if jnp.iscomplexobj(x) else ".")
            )
        out.append(x)
    return tuple(out)


def _flat_valid(r):
    """A row's valid range for its slice of the flat vector: array bounds broadcast to
    the param's shape and flattened."""
    return transforms.bounds(r.valid, shape=r.shape)


def _values(static, xs):
    groups = sorted({r.group for r in static.rows}) or [0]
    values = {}
    for g, x in zip(groups, xs):
        for r in static.rows:
            if r.group == g:
                values[r.uid] = x[r.slice].reshape(r.shape)
    return values


def _apply(tree, static, xs):
    module, args, kwargs = tree
    xs = _check_inputs(static, xs)
    if static.valid:
        groups = sorted({r.group for r in static.rows}) or [0]
        new = []
        for g, x in zip(groups, xs):
            parts = [
                transforms.from_valid(x[r.slice], _flat_valid(r), r.cyclic)
                if r.valid is not None
                else x[r.slice]
                for r in static.rows
                if r.group == g
            ]
            new.append(jnp.concatenate(parts) if parts else x)
        xs = tuple(new)
    with _memo_scope():
        filled = graph.fill(module, _values(static, xs))
        return getattr(filled, static.method)(*args, **kwargs)


def _labels(module, w, params):
    labels = []
    for p in params:
        owner = w.owner.get(p.uid)
        labels.append(f"{w.nodes[owner].name}.{p.name}" if owner is not None else p.name)
    if len(set(labels)) < len(labels):  # fall back to unique paths
        labels = [w.paths[p.uid] or p.name for p in params]
    return labels


def compile(module, method: str = "__call__", *args, valid: bool = False, **kwargs) -> Program:
    """Compile ``module.method(*args, **kwargs)`` into a `Program` of the flat vector.

    The graph pass runs here, once: copies of one node must agree (`GraphError`),
    pointers must not form a cycle (`GraphError` naming it), and every dynamic param
    needs a fixed shape (`ShapeError`). With ``valid=True`` the Program takes
    unconstrained vectors (caskade's ValidContext) and its `init` is unconstrained.

    Example:
        >>> import caskax as cx, jax
        >>> class Sq(cx.Module):
        ...     a: cx.Param
        ...     def __init__(self):
        ...         super().__init__("sq"); self.a = cx.Param("a", 3.0, dynamic=True)
        ...     @cx.forward
        ...     def __call__(self, a):
        ...         return a**2
        >>> f = cx.compile(Sq())
        >>> float(f(f.init)), float(jax.grad(f)(f.init)[0])
        (9.0, 6.0)
    """
    if not graph.is_node(module) or isinstance(module, type):
        raise GraphError(f"cx.compile needs a caskax Module, got {type(module).__name__}.")
    _check_depth(module)
    return _compile(module, method, args, kwargs, valid)


def _check_depth(module):
    # Checked before JAX flattens the tree: a RecursionError raised inside JAX's C++
    # tree code leaves the interpreter's recursion count unusable, so it must not happen.
    frames, frame = 0, sys._getframe()
    while frame is not None:
        frames, frame = frames + 1, frame.f_back
    if frames + graph.nesting_depth(module) + 150 > sys.getrecursionlimit():
        raise depth_error(f"'{module.name}'")


# Past this many modules of one class, XLA compiles an unrolled copy of each member's
# graph (about 25 s at 1000 sources in benchmarks/RESULTS.md): cx.stack compiles one.
STACK_HINT = 256


def _suggest_stack(w):
    counts = {}
    for node in w.nodes.values():
        if not isinstance(node, Param):
            counts[type(node)] = counts.get(type(node), 0) + 1
    cls, n = max(counts.items(), key=lambda kv: kv[1], default=(None, 0))
    if n >= STACK_HINT:
        warnings.warn(
            f"the model holds {n} {cls.__name__} modules: XLA compiles one copy of the "
            f"graph per member, so compile time grows with their number. cx.stack(...) "
            "makes them one module with a member axis, compiled once (docs: Many components).",
            CaskaxWarning,
            stacklevel=3,
        )


def _compile(module, method, args, kwargs, valid):
    if not callable(getattr(module, method, None)):
        raise GraphError(f"'{module.name}' has no method {method!r}.")
    w = graph.walk(module)
    graph.check_cycles(w)
    graph.check_copies(w)
    _suggest_stack(w)
    rows = []
    for g, params in sorted(dynamic_layout(module, w).items()):
        offset = 0
        labels = _labels(module, w, params)
        for p, label in zip(params, labels):
            shape = p.full_shape()
            n = math.prod(shape)
            rows.append(
                LayoutRow(
                    w.paths[p.uid] or p.name,
                    shape,
                    slice(offset, offset + n),
                    p.valid,
                    p.units,
                    group=g,
                    cyclic=p.cyclic,
                    uid=p.uid,
                    name=label,
                )
            )
            offset += n
    return Program(module, method, args, kwargs, valid, rows)
