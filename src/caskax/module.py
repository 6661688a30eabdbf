"""Modules: immutable containers of Params and other Modules, and ``@cx.forward``.

Every editing method returns a new tree; nothing here mutates a module after
construction. See `graph.py` for how targets, copies and filling work.
"""

import contextlib
import contextvars
import inspect
import math
from typing import Any, ClassVar

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np

from . import graph, transforms
from .errors import (
    DepthError,
    FillError,
    GraphError,
    ModuleError,
    ParamError,
    ParamIndexError,
    depth_error,
)
from .param import (
    Param,
    Pointer,
    _check_valid,
    check_name,
    frozen_delattr,
    frozen_setattr,
    link,
    new_uid,
)

__all__ = ["Module", "forward", "batch_axes"]

_MISSING = object()


class _ModuleMeta(type(eqx.Module)):
    # Equinox checks a new module by flattening it, recursively: a model nested past
    # Python's stack gets a caskax error that names the way out.
    def __call__(cls, *args, **kwargs):
        try:
            return super().__call__(*args, **kwargs)
        except RecursionError as err:
            if isinstance(err, DepthError):
                raise
            raise depth_error(f"a new {cls.__name__}") from None


class Module(eqx.Module, metaclass=_ModuleMeta):
    """Base class of caskax models: an Equinox module whose fields hold Params,
    Modules, lists/tuples/dicts of them, arrays and plain values.

    Subclasses annotate their fields, call ``super().__init__(name)`` and mark the
    methods that read their params with `caskax.forward`.

    Example:
        >>> import caskax as cx
        >>> class Line(cx.Module):
        ...     slope: cx.Param
        ...     def __init__(self, name=None, slope=None):
        ...         super().__init__(name)
        ...         self.slope = cx.Param("slope", slope)
        ...     @cx.forward
        ...     def __call__(self, x, slope):
        ...         return slope * x
        >>> line = Line(slope=2.0)
        >>> float(line(3.0)), float(line.to_dynamic()(3.0, [5.0]))  # fill from params
        (6.0, 15.0)
    """

    _caskax_module: ClassVar[bool] = True
    # caskade's saveattrs: attribute names (dotted allowed) that save_state writes as
    # HDF5 attrs of this module's group; set it in the class body of a subclass
    saveattrs: ClassVar[tuple] = ()
    name: str = eqx.field(static=True)
    uid: int = eqx.field(static=True)
    _filled: bool = eqx.field(static=True)
    # For a module made by cx.stack: its members' record (read by cx.unstack, and by
    # @forward to refuse a call on the whole stack); None otherwise.
    _stack: Any = eqx.field(static=True, default=None)

    def __init__(self, name: str | None = None):
        self.name = check_name("Module", type(self).__name__ if name is None else name, ModuleError)
        self.uid = new_uid()
        self._filled = False
        # set here, not left to the class default: equinox flattens what the instance
        # holds, and a copy (copy_with) holds every field
        self._stack = None

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        init = cls.__dict__.get("__init__")
        if init is None or getattr(init, "_caskax_checked", False):
            return

        def checked_init(self, *args, **kw):
            init(self, *args, **kw)
            if "uid" not in self.__dict__:
                raise ModuleError(
                    f"{cls.__name__}.__init__ must call super().__init__(name) before "
                    "setting its fields: caskax modules get their name and id there."
                )

        checked_init._caskax_checked = True
        for attr in ("__name__", "__qualname__", "__doc__", "__module__"):
            setattr(checked_init, attr, getattr(init, attr))
        cls.__init__ = checked_init

    # Equinox wraps every bound method in a pytree (BoundMethod), which flattens the
    # whole model on each method call: linear in its size, and recursive, so a deep
    # model overflows Python's stack. caskax methods are plain methods; jax.jit and
    # eqx.filter_jit of a method still work (the module is closed over).
    __getattribute__ = object.__getattribute__

    __setattr__ = frozen_setattr  # caskax errors that name the immutable spelling
    __delattr__ = frozen_delattr

    # Equinox hashes modules by their fields, which fails on arrays. Nodes are
    # references, so identity is the right notion here (jax.jit(m.method) needs it).
    def __hash__(self):
        return id(self)

    def __eq__(self, other):
        return self is other

    # -- editing ----------------------------------------------------------------------
    def to_dynamic(self, *targets, children_only: bool = True) -> "Module":
        """A copy in which ``targets`` are dynamic.

        With no targets, this module's own params (all params below it with
        ``children_only=False``). A module target means its params; pointers among them
        are left alone, but a pointer named directly becomes dynamic at its current value.

        Example:
            >>> from caskax.examples import Gaussian
            >>> g = Gaussian("g", x0=[0., 0.], q=0.5, phi=0., sigma=1., flux=1.)
            >>> g.to_dynamic("q", g.sigma).param_order()  # by path or by object
            'g: q, g: sigma'
        """
        return _set_kind(self, targets, children_only, dynamic=True)

    def to_static(self, *targets, children_only: bool = True) -> "Module":
        """A copy in which ``targets`` are static (a param with no value becomes live).
        Same target rules as `to_dynamic`.

        Example:
            >>> from caskax.examples import Gaussian1D
            >>> lc = Gaussian1D("lc", t0=-3.0, sigma=2.0, peak_flux=0.25).to_dynamic()
            >>> lc.to_static("sigma").param_order()
            'lc: t0, lc: peak_flux'
        """
        return _set_kind(self, targets, children_only, dynamic=False)

    def set(self, target=_MISSING, value=_MISSING, /, **fields) -> "Module":
        """A copy with one target (and/or named fields) set.

        ``value`` may be an array (new value, kind kept; a pointer becomes static), a
        `Param` (the target points to it), a `cx.Pointer` (function pointer; string
        inputs are paths relative to this module), or, for a
        target that is not a param, anything (the field is replaced). Inside a forward
        method, ``self.set(flux=value)`` fills a live param.

        Example:
            >>> import caskax as cx
            >>> class Two(cx.Module):
            ...     a: cx.Param
            ...     b: cx.Param
            ...     def __init__(self):
            ...         super().__init__("two")
            ...         self.a, self.b = cx.Param("a", 1.0), cx.Param("b", 2.0)
            >>> m = Two().set("b", cx.Pointer(lambda a: 10 * a, "a")).set(a=3.0)
            >>> float(m.a.value), m.b.kind
            (3.0, 'pointer')
        """
        root = self
        if target is not _MISSING:
            if value is _MISSING:
                raise GraphError("Module.set(target, value): value is missing.")
            root = _set_one(root, target, value)
        for key, val in fields.items():
            root = _set_one(root, key, val)
        return root

    def replace_node(self, target, node) -> "Module":
        """A copy in which the Param or Module at ``target`` is replaced by ``node``
        itself (caskade's ``del m.p; m.p = new``), where `set` would make ``target``
        point to ``node``. Every place that holds ``target`` now holds ``node``.

        Example:
            >>> import caskax as cx
            >>> from caskax.examples import Gaussian1D
            >>> lc = Gaussian1D("lc", t0=-3.0, sigma=2.0, peak_flux=0.25)
            >>> new = cx.Param("t0", 1.0, dynamic=True)
            >>> lc.replace_node("t0", new).t0.uid == new.uid, lc.set("t0", new).t0.kind
            (True, 'pointer')
        """
        if not graph.is_node(node):
            raise GraphError(f"replace_node needs a Param or Module, got {type(node).__name__}.")
        w = graph.walk(self)
        uid = graph.resolve(self, target, w)
        old = w.nodes[uid]
        if isinstance(old, Param) != isinstance(node, Param):
            raise GraphError(
                f"replace_node: '{w.paths[uid] or old.name}' is a {type(old).__name__}; "
                f"give one, not a {type(node).__name__}."
            )
        if uid == self.uid:
            return node
        return graph.replace(self, {uid: node})

    def set_attrs(self, target, **attrs) -> "Module":
        """A copy in which the param ``target`` has new ``valid``, ``cyclic``, ``units``,
        ``description``, ``group``, ``shape``, ``prior`` or ``dtype`` (caskade assigns
        these attributes in place: ``p.valid = (0, 1)``). See `Param.with_attrs`.

        Example:
            >>> from caskax.examples import Gaussian1D
            >>> lc = Gaussian1D("lc", t0=-3.0, sigma=2.0, peak_flux=0.25)
            >>> lc.set_attrs("peak_flux", valid=(0, 1), units="Jy").peak_flux.units
            'Jy'
        """
        w = graph.walk(self)
        node = w.nodes[graph.resolve(self, target, w)]
        if not isinstance(node, Param):
            raise GraphError(
                f"set_attrs: '{w.paths[node.uid] or node.name}' is a module, not a param."
            )
        return graph.replace(self, {node.uid: node.with_attrs(**attrs)})

    def set_values(self, values, group: int | None = None) -> "Module":
        """A copy whose dynamic params store ``values`` (array, list or dict, the
        schemes of `get_values`).

        Example:
            >>> from caskax.examples import Gaussian1D
            >>> lc = Gaussian1D("lc", t0=-3.0, sigma=2.0, peak_flux=0.25).to_dynamic("t0", "sigma")
            >>> lc.set_values([-1.0, 3.0]).get_values().tolist()
            [-1.0, 3.0]
            >>> float(lc.set_values({"sigma": 4.0, "t0": 0.0}).sigma.value)
            4.0
        """
        if isinstance(values, (list, tuple, np.ndarray, jax.Array)) and len(values) == 0:
            return self  # caskade: an empty list or array gives nothing to set
        w = graph.walk(self)
        new = {}
        for uid, val in params_to_values(self, values, w, group=group, check=True).items():
            p = w.nodes[uid]
            _check_valid(w.paths[uid] or p.name, val, p.valid, p.cyclic)
            new[uid] = graph.copy_with(p, value=val)
        return graph.replace(self, new)

    def to_valid(self, values, group: int | None = None):
        """Dynamic values (array, list or dict, as `get_values` gives them) mapped to
        unconstrained space, in the same form (caskade's ``module.to_valid``).

        Example:
            >>> from caskax.examples import Gaussian1D
            >>> lc = Gaussian1D("lc", t0=-3.0, sigma=1.0, peak_flux=0.25).to_dynamic()
            >>> lc.to_valid(lc.get_values()).tolist()  # sigma has valid=(0, None): log
            [-3.0, 0.0, 0.25]
            >>> [float(v) for v in lc.from_valid([-3.0, 0.0, 0.25])]  # a list: one per param
            [-3.0, 1.0, 0.25]
        """
        return _valid_map(self, values, group, transforms.to_valid)

    def from_valid(self, values, group: int | None = None):
        """The inverse of `to_valid`: unconstrained values back into each valid range."""
        return _valid_map(self, values, group, transforms.from_valid)

    # -- caskade's names for what the methods above give -----------------------------
    @property
    def dynamic_param_groups(self) -> tuple:
        """The param groups that hold dynamic params, ascending (caskade's name).

        Example:
            >>> from caskax.examples import Gaussian1D
            >>> Gaussian1D("lc", t0=1.0, sigma=1.0, peak_flux=1.0).to_dynamic().dynamic_param_groups
            (0,)
        """
        return tuple(sorted(dynamic_layout(self)))

    @property
    def dynamic(self) -> bool:
        """True if any param below is dynamic (caskade's ``Module.dynamic``)."""
        return len(self.dynamic_params) > 0

    @property
    def static(self) -> bool:
        """True if no param below is dynamic (caskade's ``Module.static``)."""
        return not self.dynamic

    def topological_ordering(self) -> tuple:
        """Every node below this module (itself first), each parent before its children:
        caskade's order, the one the flat vector follows."""
        w = graph.walk(self)
        return tuple(w.nodes[u] for u in graph.topological_order(self, w))

    def __getitem__(self, key):
        """The child keyed ``key`` (a field name, or a member's name in a list field), as
        caskade's ``m["child"]``; a path such as ``"models[0].x0"`` works too."""
        for child in graph.children(self):
            if child.key[-1] == key and (len(child.key) == 1 or child.node.name == key):
                return child.node
        return graph.lookup(self, key)

    def map(self, fn):
        """``fn(member)`` for every member of a module made by `caskax.stack`, the
        results stacked along a leading axis: ``cx.stack_map(self, fn)``.

        Example:
            >>> import caskax as cx
            >>> from caskax.examples import Gaussian1D
            >>> lcs = cx.stack([Gaussian1D(f"lc{i}", t0=-i, sigma=1.0, peak_flux=1.0)
            ...                 for i in range(3)])
            >>> [round(float(v), 3) for v in lcs.map(lambda lc: lc.flux(1.0))]
            [0.368, 1.0, 0.368]
        """
        from .stack import stack_map

        return stack_map(self, fn)

    def to(self, dtype=None, device=None) -> "Module":
        """A copy with every float value cast to ``dtype`` and/or put on ``device``
        (caskade's ``Module.to``; a jax device, e.g. ``jax.devices()[0]``).

        Example:
            >>> import jax.numpy as jnp
            >>> from caskax.examples import Gaussian1D
            >>> Gaussian1D("lc", t0=1.0, sigma=1.0, peak_flux=1.0).to(jnp.float16).t0.value.dtype
            dtype('float16')
        """
        w = graph.walk(self)
        new = {}
        for uid, node in w.nodes.items():
            if isinstance(node, Param) and node.stored is not None and not node.pointer:
                value = node.stored
                if dtype is not None and jnp.issubdtype(value.dtype, jnp.floating):
                    value = value.astype(dtype)
                if device is not None:
                    value = jax.device_put(value, device)
                changes = {"value": value}
                if dtype is not None and node.dtype is not None:
                    changes["dtype"] = jnp.dtype(dtype)
                new[uid] = graph.copy_with(node, **changes)
        return graph.replace(self, new)

    def link(self, *args, **kwargs):
        """caskade's ``m.link(...)``: not a caskax spelling (raises `ModuleError`). A
        field is set with ``m.set(name, node)``; a pointer holds its own inputs."""
        from .param import _spelling_error

        raise _spelling_error("m.link(...)")

    def unlink(self, *args, **kwargs):
        """caskade's ``m.unlink(...)``: not a caskax spelling (raises `ModuleError`)."""
        from .param import _spelling_error

        raise _spelling_error("m.unlink(...)")

    # -- reading ----------------------------------------------------------------------
    def get_values(self, scheme: str = "array", group: int | None = None):
        """Current values of the dynamic params.

        ``scheme="array"``: one flat vector; ``"list"``: one array per param;
        ``"dict"``: nested dict keyed like the tree. With several param groups and
        ``group=None``, a tuple with one entry per group.

        Example:
            >>> import caskax as cx
            >>> p = cx.Param("p", [1.0, 2.0], dynamic=True)
            >>> class M(cx.Module):
            ...     p: cx.Param
            ...     def __init__(self):
            ...         super().__init__("m"); self.p = p
            >>> M().get_values().tolist()
            [1.0, 2.0]
        """
        w = graph.walk(self)
        layout = dynamic_layout(self, w)
        groups = sorted(layout) if group is None else [group]
        out = []
        for g in groups:
            params = layout.get(g, [])
            vals = []
            for p in params:
                _check_has_value(p, w)
                vals.append(p.value)
            if scheme == "array":
                out.append(_join_values(vals))
            elif scheme == "list":
                out.append(vals)
            elif scheme == "dict":
                out.append(graph.values_to_dict(self, params, lambda p: p.value))
            else:
                raise FillError(f"scheme must be 'array', 'list' or 'dict', got {scheme!r}.")
        if not out:
            return jnp.zeros((0,)) if scheme == "array" else ([] if scheme == "list" else {})
        return out[0] if len(out) == 1 else tuple(out)

    @property
    def dynamic_params(self) -> tuple:
        """Dynamic params below this module, in flat-vector order.

        Example:
            >>> from caskax.examples import Gaussian1D
            >>> lc = Gaussian1D("lc", t0=-3.0, sigma=2.0, peak_flux=0.25).to_dynamic("t0")
            >>> [p.name for p in lc.dynamic_params], [p.name for p in lc.static_params]
            (['t0'], ['sigma', 'peak_flux'])
        """
        return tuple(graph.dynamic_order(self))

    @property
    def static_params(self) -> tuple:
        """Static (and live) params below this module, in graph order.

        Example:
            >>> from caskax.examples import Gaussian1D
            >>> [p.name for p in Gaussian1D("lc", t0=1.0, sigma=2.0).static_params]
            ['t0', 'sigma']
        """
        return self._params_of_kind(lambda p: p.static)

    @property
    def pointer_params(self) -> tuple:
        """Pointer params below this module, in graph order.

        Example:
            >>> from caskax.examples import Gaussian1D
            >>> lc = Gaussian1D("lc", t0=1.0, sigma=2.0, peak_flux=1.0)
            >>> [p.name for p in lc.set("sigma", lc.t0).pointer_params]
            ['sigma']
        """
        return self._params_of_kind(lambda p: p.pointer)

    def _params_of_kind(self, pred) -> tuple:
        w = graph.walk(self)
        nodes = (w.nodes[u] for u in graph.topological_order(self, w))
        return tuple(n for n in nodes if isinstance(n, Param) and pred(n))

    def param_order(self) -> str:
        """The flat-vector order, one line per group: ``owner: name, ...``.

        Example:
            >>> from caskax.examples import Gaussian1D
            >>> Gaussian1D("lc", t0=-3.0, sigma=2.0, peak_flux=0.25).to_dynamic().param_order()
            'lc: t0, lc: sigma, lc: peak_flux'
        """
        w = graph.walk(self)
        lines = []
        for g, params in sorted(dynamic_layout(self, w).items()):
            lines.append(", ".join(f"{_owner_name(w, p)}: {p.name}" for p in params))
        return "\n".join(lines)

    def find_param(self, i: int | tuple, group: int | None = None, scheme: str = "array"):
        """The param at index ``i`` of the flat vector, and the index inside it. With
        several param groups, give ``group=`` or ``i`` as ``(group, index)`` (caskade's
        form, as `find_index` returns it). A list of indices gives a tuple of results, and
        negative indices count from the end, as in caskade.

        Example:
            >>> from caskax.examples import Gaussian
            >>> g = Gaussian("g", x0=[0., 0.], q=0.5, phi=0., sigma=1., flux=1.).to_dynamic("x0", "q")
            >>> p, idx = g.find_param(1)
            >>> p.name, idx
            ('x0', (1,))
        """
        layout = dynamic_layout(self)
        if scheme == "list":  # the i-th dynamic param, as in caskade
            if not isinstance(i, (int, np.integer)):
                return tuple(self.find_param(k, group, scheme) for k in i)
            params = layout.get(_one_group(layout, group), [])
            if not -len(params) <= i < len(params):
                raise ParamIndexError(f"index {i} is outside the {len(params)} dynamic params.")
            return params[i]
        if scheme != "array":
            raise FillError(f"find_param: scheme must be 'array' or 'list', got {scheme!r}.")
        if isinstance(i, tuple) and len(layout) > 1 and len(i) == 2 and i[0] in layout:
            group, i = i
        elif not isinstance(i, (int, np.integer)):
            try:
                items = list(i)
            except TypeError:
                raise ParamIndexError(
                    f"find_param takes an int or a sequence of ints, got {i!r}."
                ) from None
            return tuple(self.find_param(k, group) for k in items)
        g = _one_group(layout, group)
        params = layout.get(g, [])
        total = sum(p.size() for p in params)
        if not -total <= i < total:
            raise ParamIndexError(f"index {i} is outside the flat vector of length {total}.")
        i = i % total if total else i  # negative indices count from the end, as in Python
        offset = 0
        for p in params:
            n = p.size()
            if offset <= i < offset + n:
                shape = p.full_shape()
                idx = tuple(int(k) for k in np.unravel_index(i - offset, shape)) if shape else ()
                return p, idx
            offset += n

    def find_index(self, target, scheme: str = "array") -> int | slice | tuple:
        """Index (scalar param) or slice of ``target`` in the flat vector; with several
        param groups, ``(group, index_or_slice)`` as caskade gives it.

        Example:
            >>> from caskax.examples import Gaussian
            >>> g = Gaussian("g", x0=[0., 0.], q=0.5, phi=0., sigma=1., flux=1.).to_dynamic("x0", "q")
            >>> g.find_index("x0"), g.find_index(g.q)
            (slice(0, 2, None), 2)
        """
        w = graph.walk(self)
        if isinstance(target, (list, tuple)):
            return tuple(self.find_index(t, scheme) for t in target)
        uid = graph.resolve(self, target, w)
        node = w.nodes[uid]
        if not isinstance(node, Param):
            # a module: its own dynamic params, as caskade gives them
            return tuple(
                self.find_index(c.node, scheme)
                for c in graph.children(node)
                if isinstance(c.node, Param) and c.node.dynamic
            )
        layout = dynamic_layout(self, w)
        if scheme == "list":
            for g, params in layout.items():
                for k, p in enumerate(params):
                    if p.uid == uid:
                        return (g, k) if len(layout) > 1 else k
            raise ParamError(f"'{w.paths[uid] or node.name}' is not a dynamic param.")
        if scheme != "array":
            raise FillError(f"find_index: scheme must be 'array' or 'list', got {scheme!r}.")
        for g, params in layout.items():
            offset = 0
            for p in params:
                if p.uid == uid:
                    where = offset if p.full_shape() == () else slice(offset, offset + p.size())
                    return (g, where) if len(layout) > 1 else where
                offset += p.size()
        raise ParamError(f"'{w.paths[uid] or w.nodes[uid].name}' is not a dynamic param.")

    # -- display and files (implemented in display.py / io.py) -------------------------
    def __str__(self):
        from .display import tree_str

        return tree_str(self)

    def __repr__(self):
        return self.__str__()

    def _repr_html_(self):
        from .display import tree_html

        return tree_html(self)

    def graphviz(self, saveto: str | None = None):
        """A graphviz ``Digraph`` of the tree (see `caskax.display.graphviz`);
        ``saveto="graph.png"`` also renders it (needs the ``dot`` program).

        Example:
            >>> from caskax.examples import Gaussian1D
            >>> "Gaussian1D(lc)" in Gaussian1D("lc", t0=1.0, sigma=2.0, peak_flux=1.0).graphviz().source
            True
        """
        from .display import graphviz

        return graphviz(self, saveto=saveto)

    def save_state(self, path, appendable: bool = False) -> None:
        """Write the params to HDF5 in caskade's layout (see `caskax.io`).

        Example:
            >>> import os, tempfile
            >>> from caskax.examples import Gaussian1D
            >>> lc = Gaussian1D("lc", t0=-3.0, sigma=2.0, peak_flux=0.25)
            >>> path = os.path.join(tempfile.mkdtemp(), "lc.h5")
            >>> lc.save_state(path)
            >>> float(lc.set(t0=0.0).load_state(path).t0.value)
            -3.0
        """
        from .io import save_state

        save_state(self, path, appendable=appendable)

    def append_state(self, path) -> None:
        """Append the current values to an appendable HDF5 file (see `caskax.io`).

        Example:
            >>> import os, tempfile
            >>> from caskax.examples import Gaussian1D
            >>> lc = Gaussian1D("lc", t0=-3.0, sigma=2.0, peak_flux=0.25)
            >>> path = os.path.join(tempfile.mkdtemp(), "chain.h5")
            >>> lc.save_state(path, appendable=True)
            >>> lc.set(t0=-2.0).append_state(path)
            >>> float(lc.load_state(path, index=0).t0.value), float(lc.load_state(path).t0.value)
            (-3.0, -2.0)
        """
        from .io import append_state

        append_state(self, path)

    def load_state(self, path, index: int = -1) -> "Module":
        """A copy with the values stored in ``path`` (sample ``index`` if appendable).

        Example:
            >>> import os, tempfile
            >>> from caskax.examples import Gaussian1D
            >>> lc = Gaussian1D("lc", t0=-3.0, sigma=2.0, peak_flux=0.25)
            >>> path = os.path.join(tempfile.mkdtemp(), "lc.h5")
            >>> lc.save_state(path, appendable=True)
            >>> lc.set(t0=1.0).append_state(path)
            >>> float(lc.load_state(path).t0.value), float(lc.load_state(path, index=0).t0.value)
            (1.0, -3.0)
        """
        from .io import load_state

        return load_state(self, path, index=index)


# -- helpers shared with program.py -------------------------------------------------------
def dynamic_layout(root, w=None) -> dict:
    """group -> dynamic params in flat order."""
    w = graph.walk(root) if w is None else w
    layout = {}
    for p in graph.dynamic_order(root, w):
        layout.setdefault(p.group, []).append(p)
    return layout


def _owner_name(w, p) -> str:
    key = w.keys.get(p.uid, ())
    if len(key) > 1:
        return key[-2]  # held in a list/tuple/dict field: caskade names the collection
    owner = w.owner.get(p.uid)
    return w.nodes[owner].name if owner is not None else p.name


def _one_group(layout, group):
    if group is not None:
        return group
    if len(layout) > 1:
        raise ParamError(f"several param groups {sorted(layout)}: pass group=.")
    return next(iter(layout), 0)


def _path(w, p) -> str:
    return w.paths.get(p.uid) or p.name


def _join_values(vals) -> jax.Array:
    """Param values as one flat array. Concrete values are joined in numpy: an eager
    ``jnp.concatenate`` compiles once per layout, a cost that shows in a cold run."""
    if not vals:
        return jnp.zeros((0,))
    if any(isinstance(v, jax.core.Tracer) for v in vals):
        return jnp.concatenate([jnp.ravel(v) for v in vals])
    dtype = jnp.result_type(*vals)
    # device_put, not jnp.asarray: the latter compiles a copy program per shape
    return jax.device_put(np.concatenate([np.ravel(np.asarray(v)) for v in vals]).astype(dtype))


def _check_has_value(p, w):
    if p.value is None:
        raise ParamError(
            f"dynamic param '{_path(w, p)}' has no value: give it one (Param(..., value) or "
            "set_values) or pass the flat vector explicitly."
        )
    if not isinstance(p.value, jax.core.Tracer) and not np.all(np.isfinite(np.asarray(p.value))):
        raise ParamError(f"dynamic param '{_path(w, p)}' holds a non-finite value {p.value}.")


def _describe(params, w) -> str:
    return ", ".join(f"{_path(w, p)}{list(p.full_shape())}" for p in params)


def params_to_values(root, values, w=None, group=None, check=False) -> dict:
    """uid -> value for the dynamic params of ``root`` from an array, list or dict
    (a sequence with one such entry per group when there are several groups)."""
    w = graph.walk(root) if w is None else w
    layout = dynamic_layout(root, w)
    groups = sorted(layout) if group is None else [group]
    if not groups:
        if values is None or (hasattr(values, "__len__") and len(values) == 0):
            return {}
        raise FillError(
            f"'{root.name}' has no dynamic params, but params were given. Make params "
            "dynamic first (to_dynamic), or call without params."
        )
    if len(groups) > 1:
        if not isinstance(values, (list, tuple)) or len(values) != len(groups):
            raise FillError(f"'{root.name}' has param groups {groups}: give one entry per group.")
        per_group = values
    else:
        per_group = [values]
    out = {}
    for g, vals in zip(groups, per_group):
        out.update(_group_values(root, layout.get(g, []), vals, w, check))
    return out


def _group_values(root, params, vals, w, check):
    if isinstance(vals, dict):

        def fill_sub(node, below, value):
            return _group_values(node, below, value, w, check)

        out = graph.dict_to_values(root, params, vals, fill_sub)
        if check:
            by_uid = {p.uid: p for p in params}
            out = {u: _as_value(by_uid[u], v, w) for u, v in out.items()}
        return out
    if isinstance(vals, (list, tuple)) and (
        len(vals) == 0 or any(isinstance(v, (list, tuple)) or np.ndim(v) > 0 for v in vals)
    ):
        if len(vals) != len(params):
            raise FillError(
                f"params list for '{root.name}' has {len(vals)} entries; expected "
                f"{len(params)}: {_describe(params, w)}."
            )
        return {p.uid: _as_value(p, v, w) for p, v in zip(params, vals)}
    x = _as_flat_array(root, vals)
    if x.ndim == 0:
        x = x[None]
    sizes = [p.size() for p in params]
    if x.ndim != 1 or x.shape[0] != sum(sizes):
        raise FillError(
            f"params array of shape {tuple(x.shape)} for '{root.name}'; expected "
            f"({sum(sizes)},) laid out as {_describe(params, w)}."
        )
    if check and not jnp.issubdtype(x.dtype, jnp.inexact):
        x = x.astype(jnp.zeros(()).dtype)
    out, offset = {}, 0
    for p, n in zip(params, sizes):
        out[p.uid] = x[offset : offset + n].reshape(p.full_shape())
        offset += n
    return out


def _valid_map(root, values, group, fn):
    w = graph.walk(root)
    layout = dynamic_layout(root, w)
    g = _one_group(layout, group)
    params = layout.get(g, [])
    vals = _group_values(root, params, values, w, check=True)

    def mapped(p):
        v = vals[p.uid]
        if p.valid is None:
            return v
        return fn(v, transforms.bounds(p.valid, shape=np.shape(v)), p.cyclic)

    if isinstance(values, dict):
        return graph.values_to_dict(root, [p for p in params if p.uid in vals], mapped)
    if isinstance(values, (list, tuple)) and len(values) == len(params):
        return [mapped(p) for p in params]
    return _join_values([mapped(p) for p in params])


def _as_flat_array(root, vals):
    if isinstance(vals, (jax.Array, jax.core.Tracer)):
        return vals
    try:
        # a copy: the caller's numpy array may change later, the module must not
        host = np.array(vals, copy=True)
    except (TypeError, ValueError) as err:
        raise FillError(f"params for '{root.name}' cannot become an array ({err}).") from None
    if host.dtype.kind in "USOV":
        raise FillError(
            f"params for '{root.name}' hold {host.dtype} data (strings or objects); expected "
            "numbers: a flat array, a list of arrays (one per dynamic param) or a dict."
        )
    if host.dtype.kind == "c":
        raise FillError(f"params for '{root.name}' are complex; caskax params are real.")
    return jax.device_put(host)


def _as_value(p, v, w):
    if isinstance(v, (str, bytes)) or (isinstance(v, np.ndarray) and v.dtype.kind in "USO"):
        raise FillError(f"value for '{_path(w, p)}' is a string {v!r}; expected numbers.")
    if isinstance(v, (jax.Array, jax.core.Tracer)):
        arr = jnp.asarray(v)
    else:
        try:
            # a copy: the caller's numpy array may change later, the module must not
            host = np.array(v, copy=True)
        except (TypeError, ValueError) as err:
            raise FillError(f"value for '{_path(w, p)}' cannot become an array ({err}).") from None
        if host.dtype.kind in "USO":
            raise FillError(f"value for '{_path(w, p)}' holds {host.dtype} data; expected numbers.")
        if host.dtype.kind == "c" and not jnp.iscomplexobj(p.value if p.value is not None else 0.0):
            raise FillError(f"value for '{_path(w, p)}' is complex; the param is real.")
        arr = jax.device_put(host)
    if not jnp.issubdtype(arr.dtype, jnp.inexact):
        arr = arr.astype(jnp.zeros(()).dtype)
    if p.dtype is not None and arr.dtype != p.dtype:
        arr = arr.astype(p.dtype)
    known = p.value is not None or (p.shape is not None and None not in p.shape)
    shape = p.full_shape() if known else None
    if shape is not None and math.prod(arr.shape) == math.prod(shape):
        arr = arr.reshape(shape)
    elif shape is not None:
        raise FillError(
            f"value for '{_path(w, p)}' has shape {tuple(arr.shape)}; expected {shape}."
        )
    return arr


def _current(w, x):
    """A node given by the user stands for the tree's current state of it."""
    if graph.is_node(x) and x.uid in w.nodes:
        return w.nodes[x.uid]
    return x


def _set_one(root, target, value):
    w = graph.walk(root)
    if isinstance(target, str):
        obj = graph.lookup(root, target) if target else root
        if not graph.is_node(obj):
            return _set_field(root, target, value, w)
    uid = graph.resolve(root, target, w)
    node = w.nodes[uid]
    if not isinstance(node, Param):
        if not graph.is_node(value):
            raise GraphError(
                f"cannot set module '{w.paths[uid] or node.name}' to a "
                f"{type(value).__name__}: give a Module, or target one of its fields."
            )
        return graph.replace(root, {uid: value})
    if isinstance(value, Param):
        if value.uid == uid:
            raise GraphError(f"param '{w.paths[uid] or node.name}' cannot point to itself.")
        value = link(_current(w, value))
    elif isinstance(value, Pointer):
        value = graph.copy_with(
            value, inputs=tuple(_pointer_input(root, w, i) for i in value.inputs)
        )
    return graph.replace(root, {uid: node.with_value(value)})


def _pointer_input(root, w, x):
    # A string input of a pointer set on a tree is a path relative to the receiver.
    if isinstance(x, str):
        node = graph.lookup(root, x)
        if not graph.is_node(node):
            raise GraphError(
                f"pointer input {x!r} is a {type(node).__name__}, not a Param or Module."
            )
        return w.nodes[node.uid]
    return _current(w, x)


def _set_field(root, target, value, w):
    tokens = graph.parse_path(target)
    parent = graph.lookup(root, target.rsplit(".", 1)[0]) if len(tokens) > 1 else root
    last = tokens[-1]
    if not (graph.is_node(parent) and isinstance(last, str)):
        raise GraphError(
            f"cannot set {target!r}: only params, modules and fields of modules can be set."
        )
    if last not in parent.__dataclass_fields__:
        raise GraphError(f"'{parent.name}' has no field {last!r}.")
    new_parent = graph.copy_with(parent, **{last: value})
    if parent.uid == root.uid:
        return new_parent
    return graph.replace(root, {parent.uid: new_parent})


def _set_kind(root, targets, children_only, dynamic):
    w = graph.walk(root)
    targets = _expand_containers(root, targets or (root,))
    params = []
    for t in targets:
        node = w.nodes[graph.resolve(root, t, w)]
        if isinstance(node, Param):
            params.append(node)
            continue
        if children_only:
            below = [c.node for c in graph.children(node)]
        else:
            sub = graph.walk(node)
            below = [sub.nodes[u] for u in graph.topological_order(node, sub)]
        params.extend(p for p in below if isinstance(p, Param) and not p.pointer)
    filled = None
    new = {}
    for p in params:
        if p.pointer:
            if filled is None:
                filled = graph.walk(_try_fill(root, w))
            value = filled.nodes[p.uid].value if filled else None
            p = graph.copy_with(p, value=value)
        new[p.uid] = p.to_dynamic() if dynamic else p.to_static()
    return graph.replace(root, new)


def _expand_containers(root, targets):
    # caskade's NodeList field is a node of its own: a path to a list, tuple or dict
    # field of nodes targets each of its members
    out = []
    for t in targets:
        obj = graph.lookup(root, t) if isinstance(t, str) and t else None
        if isinstance(obj, (list, tuple, dict)):
            members = obj.values() if isinstance(obj, dict) else obj
            out.extend(m for m in members if graph.is_node(m))
        else:
            out.append(t)
    return out


def _try_fill(root, w):
    try:
        return graph.fill(root, {}, w)
    except Exception:  # a pointer that cannot be computed yet keeps no value
        return root


# -- @forward -----------------------------------------------------------------------------
def own_params(module) -> dict:
    """name -> Param for the fields of ``module`` that hold a Param directly."""
    out = {}
    for name in graph.node_fields(module):
        val = getattr(module, name)
        if isinstance(val, Param):
            out[name] = val
    return out


def fill_module(module, params=None):
    """``module`` filled from ``params`` (array, list or dict), or from its stored
    values when ``params`` is None."""
    w = graph.walk(module)
    values = {} if params is None else params_to_values(module, params, w)
    return graph.fill(module, values, w)


def _read(module, name, p):
    if p.value is None:
        where = f"{module.name}.{name}"
        if p.live:
            raise ParamError(
                f"live param '{where}' is unset: inside the forward method, set it first "
                f"with module.set({name}=value)."
            )
        raise FillError(
            f"dynamic param '{where}' has no value: pass params (a flat vector, list or "
            "dict) to the call, or give the param a value."
        )
    return p.value


# One dict per top-level call (a Program call, or a forward call that fills): a node
# shared by several parents is filled once, so its forward method, called with the same
# arguments, is evaluated once too. XLA merges duplicate forward work by itself, but
# autodiff would emit one adjoint per call (2.5x slower gradients on the tutorial's joint
# model). Results are keyed by the objects themselves and by jax's trace context, so a
# value never leaves the transformation it was computed in.
_MEMO = contextvars.ContextVar("caskax_forward_memo", default=None)


@contextlib.contextmanager
def _memo_scope():
    if _MEMO.get() is not None:
        yield
        return
    token = _MEMO.set({})
    try:
        yield
    finally:
        _MEMO.reset(token)


def _trace_state():
    from jax.extend.core import get_opaque_trace_state

    return get_opaque_trace_state(convention="caskax")


def _memoised(method, module, args, kwargs, compute):
    memo = _MEMO.get()
    if memo is None:
        return compute()
    key = (
        id(module),
        id(method),
        tuple(map(id, args)),
        tuple((k, id(v)) for k, v in kwargs.items()),
    )
    state = _trace_state()
    entries = memo.setdefault(key, [])
    for entry in entries:
        # The entry holds its objects alive, so equal ids here mean the same objects.
        if entry[0] == state:
            return entry[-1]
    result = compute()
    entries.append((state, module, args, dict(kwargs), result))
    return result


def forward(method):
    """Mark a method that receives its module's own param values as keywords.

    Called with one extra trailing positional argument (or ``params=``), that argument
    (array, list or dict) fills the receiver's dynamic params first. A keyword named
    like an own param overrides it for that call. Inside a forward call, child modules
    are filled, so nested calls need no params, and a shared node's method called again
    with the same argument objects is evaluated once (forward methods are pure).

    Example:
        >>> import caskax as cx
        >>> class Scale(cx.Module):
        ...     k: cx.Param
        ...     def __init__(self):
        ...         super().__init__("scale"); self.k = cx.Param("k", None)
        ...     @cx.forward
        ...     def __call__(self, x, k):
        ...         return k * x
        >>> float(Scale()(2.0, [3.0])), float(Scale()(2.0, k=4.0))
        (6.0, 8.0)
    """
    plist = list(inspect.signature(method).parameters.values())[1:]
    kinds = inspect.Parameter
    has_varargs = any(p.kind is kinds.VAR_POSITIONAL for p in plist)
    has_varkw = any(p.kind is kinds.VAR_KEYWORD for p in plist)
    positional = [
        p.name for p in plist if p.kind in (kinds.POSITIONAL_ONLY, kinds.POSITIONAL_OR_KEYWORD)
    ]
    names = [p.name for p in plist]

    def wrapper(self, *args, params=None, **kwargs):
        own = own_params(self)
        n_plain = sum(1 for n in positional if n not in own)
        if params is None and not has_varargs and len(args) == n_plain + 1:
            *args, params = args
        if params is None and self._filled:
            return _memoised(method, self, args, kwargs, lambda: _call(self, args, kwargs))
        if getattr(params, "ndim", 1) > 1 and not isinstance(params, (list, tuple, dict)):
            # caskade's batched params: leading axes of a params array are a batch of
            # flat vectors, evaluated one by one under vmap
            def one(x):
                return wrapper(self, *args, params=x, **kwargs)

            for _ in range(params.ndim - 1):
                one = jax.vmap(one)
            return one(params)
        if _MEMO.get() is not None:
            return _call(fill_module(self, params), args, kwargs)
        with _memo_scope():
            try:
                return _call(fill_module(self, params), args, kwargs)
            except RecursionError as err:
                if isinstance(err, DepthError):
                    raise
                raise depth_error(f"'{self.name}'") from None

    def _call(module, args, kwargs):
        own = own_params(module)
        overrides = {own[k].uid: v for k, v in kwargs.items() if k in own}
        overrides.update((own[k].uid, v) for k, v in zip(positional, args) if k in own)
        if overrides:
            # An override holds for the whole call: pointers that read the param (in
            # this module or below it) are computed again from the new value.
            module = graph.override(module, overrides)
            own = own_params(module)
            if not has_varkw:
                kwargs = {k: v for k, v in kwargs.items() if k in names}
        if module._stack is not None:
            _refuse_whole_stack(module, own, method.__name__)
        bound = set(positional[: len(args)])
        for name in names:
            if name in own and name not in kwargs and name not in bound:
                kwargs[name] = _read(module, name, own[name])
        return method(module, *args, **kwargs)

    # An honest signature (no functools.wraps): eqx.filter_jit(module.method) inspects it.
    wrapper.__name__ = method.__name__
    wrapper.__qualname__ = method.__qualname__
    wrapper.__doc__ = method.__doc__
    wrapper.__module__ = method.__module__
    wrapper._caskax_forward = True
    return wrapper


def _refuse_whole_stack(module, own, method_name) -> None:
    """Raise if ``module``, made by cx.stack, holds several members' values at once.

    Its forward methods are written for one member: under `caskax.stack_map` (a vmap
    over the member axis) each param holds one member's value. Called on the whole
    stack, values with the member axis would broadcast against each other (and against
    the arguments) into a wrong answer. The check is one ndim per own param, read at
    trace time (shapes are static), so compiled code does not change.
    """
    checked = [p for p in own.values() if p._stack is not None]
    if not checked and module._stack.probe is not None:
        # no stacked param of its own: one below it (recorded by cx.stack) tells
        try:
            checked = [graph.lookup(module, module._stack.probe)]
        except (GraphError, AttributeError, IndexError, KeyError, TypeError):
            checked = []  # the structure was edited since; nothing to check
    for p in checked:
        rec = p._stack if isinstance(p, Param) else None
        if rec is None or rec.rank is None or p.pointer or p.stored is None:
            continue
        # A stack of stacks: the members' own records give the rank of one innermost
        # member's value; each member axis still present is one level not mapped yet.
        levels = [rec]
        while levels[-1].inner and getattr(levels[-1].inner[0], "rank", None) is not None:
            levels.append(levels[-1].inner[0])
        extra = jnp.ndim(p.stored) - levels[-1].rank
        if extra > 0:
            k = len(levels[max(len(levels) - extra, 0)].uids)
            call = f"s.{method_name}(...)"
            raise ModuleError(
                f"'{module.name}' is a stack of {k} members (cx.stack): its param "
                f"'{p.name}' holds all members' values, shape {tuple(jnp.shape(p.stored))}, "
                f"and '{method_name}' is written for one member. Map it over the members: "
                f"cx.stack_map({module.name}, lambda s: {call}), or "
                f"jax.vmap(lambda s: {call}, in_axes=(cx.batch_axes({module.name}),))"
                f"({module.name})."
            )


# -- batching ------------------------------------------------------------------------------
def batch_axes(module, internal=()):
    """The ``in_axes`` pytree for ``jax.vmap`` over ``module``: 0 for the value of each
    param with batch axes, None everywhere else (caskade's hierarchical link).

    ``internal``: submodules (objects or paths) whose own batch axes belong to them and
    are not mapped here, as a caskade ``hierarchical_link`` made inside them keeps its
    axis internal; pointers in them to mapped params outside are still mapped.

    Example:
        >>> import jax, caskax as cx
        >>> class P(cx.Module):
        ...     a: cx.Param
        ...     def __init__(self, a):
        ...         super().__init__("p"); self.a = cx.Param("a", a, shape=())
        ...     @cx.forward
        ...     def __call__(self, a):
        ...         return 2 * a
        >>> m = P([1.0, 2.0, 3.0])  # one batch axis of length 3
        >>> jax.vmap(lambda m: m(), in_axes=(cx.batch_axes(m),))(m).tolist()
        [2.0, 4.0, 6.0]
    """

    inside = _own_params_below(module, internal)

    def spec(x):
        if isinstance(x, Param):
            link_spec = None if x.ptr is None else spec(x.ptr)
            mapped = x.stored is not None and x.batched and x.uid not in inside
            if x.pointer and x.stored is not None and x.shape is None:
                # A filled pointer with no declared shape: its value carries the batch
                # axis exactly when one of its inputs does.
                mapped = mapped or _maps(link_spec)
            if not mapped and not _maps(link_spec):
                return None  # a None prefix leaves the whole param unmapped
            return graph.copy_with(
                x, value=0 if mapped else None, ptr=link_spec, prior=_none_like(x.prior)
            )
        if isinstance(x, Pointer):
            return graph.copy_with(x, inputs=tuple(_spec_value(i, spec) for i in x.inputs))
        if graph.is_node(x):
            return graph.copy_with(
                x, **{n: _spec_value(getattr(x, n), spec) for n in graph.node_fields(x)}
            )
        return jax.tree_util.tree_map(lambda _: None, x)

    return spec(module)


def _own_params_below(root, targets) -> set:
    """Uids of the params held as fields in the modules ``targets`` and below them (a
    pointer's inputs, which may live elsewhere, are not followed)."""
    if not targets:
        return set()
    w = graph.walk(root)
    out, stack = set(), [w.nodes[graph.resolve(root, t, w)] for t in targets]
    while stack:
        node = stack.pop()
        if isinstance(node, Param):
            out.add(node.uid)
            continue
        stack.extend(c.node for c in graph.children(node))
    return out


def _maps(spec) -> bool:
    """True if an ``in_axes`` spec maps any leaf."""
    return spec is not None and any(a == 0 for a in jax.tree_util.tree_leaves(spec))


def _none_like(tree):
    return None if tree is None else jax.tree_util.tree_map(lambda _: None, tree)


def _spec_value(value, spec):
    if graph.is_node(value):
        return spec(value)
    if isinstance(value, (list, tuple)):
        items = [_spec_value(v, spec) for v in value]
        return type(value)(*items) if hasattr(value, "_fields") else type(value)(items)
    if isinstance(value, dict):
        return type(value)((k, _spec_value(v, spec)) for k, v in value.items())
    return jax.tree_util.tree_map(lambda _: None, value)
