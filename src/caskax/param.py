"""Params: the leaves of a caskax model, and pointers between them.

A `Param` is an immutable Equinox module. Its *kind* says where its value comes from
when the model runs:

==========  ===================================  =========================================
kind        made by                              value at run time
==========  ===================================  =========================================
static      a value given (or ``dynamic=False``) the stored value
dynamic     no value, or ``dynamic=True``        a slice of the flat parameter vector
pointer     value is a `Param` or `Pointer`      the other param's value, or ``fn(*inputs)``
live        static with no value                 set inside a forward method with ``set``
==========  ===================================  =========================================
"""

import dataclasses
import itertools
import keyword
import math
import warnings
from typing import Any, Callable

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np

from .errors import CaskaxWarning, ModuleError, ParamError, ShapeError

__all__ = ["Param", "Pointer", "new_uid"]

# Process-wide counter: uids only need to be unique, and a counter keeps them readable.
_uids = itertools.count(1)


_KEEP = object()  # "no value given": keep the current one (None means no value)


def new_uid() -> int:
    """A fresh node id (never reused within the process)."""
    return next(_uids)


def _identity(x):
    return x


def frozen_error(node, name, deleting=False) -> ModuleError:
    """The error for assigning to (or deleting) an attribute of a built node."""
    cls = type(node).__name__
    fields = {f.name for f in dataclasses.fields(node)}
    if name not in fields and not hasattr(type(node), name) and not deleting:
        return ModuleError(
            f"{cls}.{name} is not a declared field: add the annotation `{name}: cx.Param` "
            "(or the field's type) to the class body. caskax modules are dataclasses, so "
            "every field is declared."
        )
    verb = "deleted" if deleting else "assigned"
    if isinstance(node, Param):
        how = (
            "params are immutable: edit them through the module that holds them, "
            "e.g. m = m.set('path.to.param', value) or m.set_attrs('path', valid=...)"
        )
    else:
        how = (
            f"modules are immutable: m = m.set({name!r}, value) returns a new module "
            "with the field changed"
        )
    return ModuleError(f"{cls}.{name} cannot be {verb} after construction; caskax {how}.")


def frozen_setattr(self, name, value):
    """``__setattr__`` of caskax nodes: equinox's, with a caskax error once built."""
    try:
        eqx.Module.__setattr__(self, name, value)
    except dataclasses.FrozenInstanceError:
        raise frozen_error(self, name) from None


def frozen_delattr(self, name):
    """``__delattr__`` of caskax nodes: always a caskax error (nodes are immutable)."""
    raise frozen_error(self, name, deleting=True)


class Pointer(eqx.Module):
    """A param whose value is computed from other nodes: ``fn(*inputs)``.

    Each input is a `Param` (``fn`` receives its value), a `caskax.Module` (``fn``
    receives it filled, so its forward methods need no params) or anything else
    (passed as is). Inputs are held as children of the pointer param, so a node
    reachable only through a pointer still belongs to the tree.

    Example:
        >>> import caskax as cx
        >>> t = cx.Param("t", 2.0)
        >>> p = cx.Param("twice", cx.Pointer(lambda t: 2 * t, t))
        >>> p.kind
        'pointer'
    """

    __getattribute__ = object.__getattribute__  # see Module: plain bound methods

    inputs: tuple
    # Functions stay out of the leaves; compared by identity, so editing a tree keeps
    # the same function object and the compiled code is reused.
    fn: Callable = eqx.field(static=True)

    def __init__(self, fn: Callable, *inputs: Any):
        if not callable(fn):
            raise ParamError(f"cx.Pointer expects a callable first, got {type(fn).__name__}")
        self.fn = fn
        self.inputs = tuple(inputs)

    @property
    def is_link(self) -> bool:
        """True for a plain link to another param (``Param(value=other)``)."""
        return self.fn is _identity


def link(other) -> Pointer:
    """A pointer whose value is ``other``'s value."""
    return Pointer(_identity, other)


def check_name(kind: str, name, error=ParamError) -> str:
    """A node name, as caskade allows them: a Python identifier, not a keyword (names
    are path components, HDF5 groups and labels)."""
    if not isinstance(name, str):
        raise error(f"{kind} name must be a string, got {type(name).__name__} {name!r}.")
    if not name.isidentifier() or keyword.iskeyword(name):
        raise error(
            f"{kind} name {name!r} is not a valid Python identifier (letters, digits and "
            "underscores, not starting with a digit, not a keyword): names are used in "
            "paths like 'models[0].x0' and in state files."
        )
    return name


def _normalise_shape(name, shape, what="shape"):
    if shape is None:
        return None
    try:
        shape = tuple(shape)
    except TypeError:
        raise ShapeError(
            f"Param '{name}': {what} must be a tuple of ints or None (e.g. (2,) or (None, 3)), "
            f"got {shape!r}."
        ) from None
    for s in shape:
        if s is not None and (isinstance(s, bool) or not isinstance(s, (int, np.integer)) or s < 0):
            raise ShapeError(
                f"Param '{name}': {what}={shape!r} must hold non-negative ints or None."
            )
    return tuple(None if s is None else int(s) for s in shape)


def _normalise_group(name, group):
    if isinstance(group, bool) or not isinstance(group, (int, np.integer)):
        raise ParamError(f"Param '{name}': group must be an int, got {group!r}.")
    return int(group)


def _default_float():
    return jnp.zeros(()).dtype  # float32, or float64 under jax_enable_x64


def _is_tracer(x) -> bool:
    return isinstance(x, jax.core.Tracer)


def _coerce(name, value, shape, dtype):
    """Turn user input into an inexact jax array with a checked shape."""
    if value is None:
        return None
    if isinstance(value, (str, bytes)) or getattr(getattr(value, "dtype", None), "kind", None) in (
        "U",
        "S",
        "O",
    ):
        raise ParamError(
            f"Param '{name}': value {value!r} is text, not a number; give a number, list or "
            "array (convert strings yourself, e.g. float(s))."
        )
    try:
        if dtype is None:
            # host values typed in numpy: jnp.asarray would compile a copy per shape
            dtype = value.dtype if hasattr(value, "dtype") else np.asarray(value).dtype
            dtype = jax.dtypes.canonicalize_dtype(dtype)
            if not jnp.issubdtype(dtype, jnp.inexact):
                # An int value must not make a param integer: gradients need floats.
                dtype = _default_float()
        # An explicit dtype also drops jax's weak type from Python scalars. Host values
        # are cast in numpy: an eager cast on the device is a compile of its own.
        if isinstance(value, (jax.Array, jax.core.Tracer)):
            arr = jnp.asarray(value, dtype=dtype)
        else:
            arr = jax.device_put(np.asarray(value, dtype=dtype))
    except (TypeError, ValueError) as err:
        raise ParamError(
            f"Param '{name}': value of type {type(value).__name__} cannot become an array "
            f"({err}). Give a number, list or array, another Param, or a cx.Pointer."
        ) from None
    _check_shape(name, tuple(arr.shape), shape)
    return arr


def _check_shape(name, value_shape, shape):
    if shape is None:
        return
    n = len(shape)
    if len(value_shape) < n or any(
        s is not None and s != v for s, v in zip(shape, value_shape[len(value_shape) - n :])
    ):
        raise ShapeError(
            f"Param '{name}': value of shape {value_shape} does not match shape={shape} "
            "(extra leading axes are allowed as batch axes; None matches any length)."
        )


def _check_batch(name, value, shape, batch_shape):
    if value is None or batch_shape is None or _is_tracer(value):
        return
    n = 0 if shape is None else len(shape)
    got = tuple(value.shape[: value.ndim - n])
    if got != tuple(batch_shape):
        raise ShapeError(
            f"Param '{name}': value of shape {tuple(value.shape)} has batch axes {got}, but "
            f"batch_shape={tuple(batch_shape)} was declared."
        )


def _check_valid(name, value, valid, cyclic):
    if valid is None or cyclic or value is None or _is_tracer(value):
        return
    arr = np.asarray(value)
    lo, hi = (None if b is None else np.asarray(b) for b in valid)
    if lo is not None and hi is not None:
        bad = np.any(arr < lo) or np.any(arr > hi)
    else:  # one-sided: the bound itself maps to -inf, as caskade warns
        bad = (lo is not None and np.any(arr <= lo)) or (hi is not None and np.any(arr >= hi))
    if bad:
        warnings.warn(
            f"Param '{name}': value {arr.tolist()} is outside valid={valid}; "
            "to_valid will give inf/nan there.",
            CaskaxWarning,
            stacklevel=4,
        )


def _bound(name, b, valid):
    """A valid bound as a float, or as nested tuples of floats for an array bound
    (hashable: ``valid`` is part of the compiled structure). Infinite bounds are open."""
    if b is None:
        return None
    try:
        arr = np.asarray(b, dtype=np.float64)
    except (TypeError, ValueError):
        raise ParamError(
            f"Param '{name}': valid bounds must be numbers, arrays or None, got {valid!r}."
        ) from None
    if np.isnan(arr).any():
        raise ParamError(f"Param '{name}': valid={valid!r} holds NaN.")
    if np.isinf(arr).all():
        return None  # (0, inf) is (0, None): a one-sided transform
    if np.isinf(arr).any():
        raise ParamError(
            f"Param '{name}': valid={valid!r} mixes finite and infinite bounds in one array; "
            "give finite bounds, or None for an open side."
        )
    if arr.ndim == 0:
        return float(arr)
    return _nested_tuple(arr)


def _nested_tuple(arr):
    return tuple(_nested_tuple(a) for a in arr) if arr.ndim else float(arr)


def _normalise_valid(name, valid, cyclic):
    if valid is None:
        if cyclic:
            raise ParamError(f"Param '{name}': cyclic=True needs valid=(lo, hi).")
        return None
    try:
        lo, hi = valid
    except (TypeError, ValueError):
        raise ParamError(
            f"Param '{name}': valid must be (lo, hi), (lo, None) or (None, hi), got {valid!r}."
        ) from None
    lo, hi = _bound(name, lo, valid), _bound(name, hi, valid)
    if lo is None and hi is None:
        if cyclic:
            raise ParamError(f"Param '{name}': cyclic=True needs both bounds in valid.")
        return None
    if lo is not None and hi is not None:
        try:
            ordered = bool(np.all(np.asarray(lo) < np.asarray(hi)))
        except ValueError:
            raise ParamError(
                f"Param '{name}': valid bounds of shapes {np.shape(lo)} and {np.shape(hi)} "
                "do not broadcast together."
            ) from None
        if not ordered:
            raise ParamError(f"Param '{name}': valid=({lo}, {hi}) needs lo < hi.")
    if cyclic and (lo is None or hi is None):
        raise ParamError(f"Param '{name}': cyclic=True needs both bounds in valid.")
    return (lo, hi)


class Param(eqx.Module):
    """A named model parameter: static, dynamic, pointer or live.

    **Arguments:**

    - `name`: label used in paths, tables and files.
    - `value`: a number/list/array (static, or the initial value of a dynamic param),
      another `Param` (a pointer to it), a `Pointer` (a function pointer), or `None`
      (dynamic, with values supplied by the flat vector).
    - `shape`: the shape of one value; `None` entries are wildcards. Leading axes of
      the value beyond `shape` are batch axes (see `caskax.batch_axes`).
    - `dynamic`: force dynamic (`True`) or static (`False`); by default a param with a
      value is static and one without is dynamic. Static with no value is *live*.
    - `valid`: `(lo, hi)`, `(lo, None)` or `(None, hi)`; with `cyclic=True` the value
      wraps around `[lo, hi)`.
    - `units`, `description`: free text shown in tables and files.
    - `group`: which flat vector the param belongs to (`f(x0, x1)` with groups 0, 1).
    - `batch_shape`: leading batch axes of a dynamic param that has no value yet.
    - `dtype`: the array dtype (default: the default float dtype).
    - `prior`: a numpyro distribution used by `Program.log_prior` and `cx.nuts`.

    Example:
        >>> import caskax as cx
        >>> q = cx.Param("q", 0.5, valid=(0, 1))
        >>> q.kind, q.to_dynamic().kind
        ('static', 'dynamic')
    """

    # The stored value (for a pointer: its value in a filled tree, else None); read
    # `value`, which computes an unfilled pointer from its inputs as caskade does.
    stored: Any
    # The Pointer (fn and inputs) of a pointer param; a former pointer keeps it for its
    # inputs. None for a param that never pointed anywhere.
    ptr: Pointer | None
    prior: Any
    name: str = eqx.field(static=True)
    node_kind: str = eqx.field(static=True)
    shape: tuple | None = eqx.field(static=True)
    declared_batch_shape: tuple | None = eqx.field(static=True)
    valid: tuple | None = eqx.field(static=True)
    cyclic: bool = eqx.field(static=True)
    units: str | None = eqx.field(static=True)
    description: str = eqx.field(static=True)
    group: int = eqx.field(static=True)
    dtype: Any = eqx.field(static=True)
    uid: int = eqx.field(static=True)
    # For a param made by cx.stack: its members' record (ids, names, rank of one
    # member's value), read by cx.unstack and the stacked-call check; None otherwise.
    _stack: Any = eqx.field(static=True, default=None)

    def __init__(
        self,
        name: str | None = None,
        value: Any = None,
        shape: tuple | None = None,
        *,
        dynamic: bool | None = None,
        valid: tuple | None = None,
        cyclic: bool = False,
        units: str | None = None,
        description: str = "",
        group: int = 0,
        batch_shape: tuple | None = None,
        dtype: Any = None,
        prior: Any = None,
    ):
        name = check_name("Param", "Param" if name is None else name)
        self.name = name
        self.shape = _normalise_shape(name, shape)
        self.declared_batch_shape = _normalise_shape(name, batch_shape, "batch_shape")
        self.cyclic = bool(cyclic)
        self.valid = _normalise_valid(name, valid, self.cyclic)
        self.units = None if units is None else str(units)
        self.description = str(description)
        self.group = _normalise_group(name, group)
        self.dtype = None if dtype is None else jnp.dtype(dtype)
        self.prior = prior
        self.uid = new_uid()
        self._stack = None  # held by the instance, as in every copy (see Module)
        if isinstance(value, Param):
            value = link(value)
        if isinstance(value, Pointer):
            # dynamic=True on a pointer is ignored, as caskade ignores it: the value
            # still comes from the pointer (make it dynamic later with to_dynamic)
            if batch_shape is not None:
                raise ParamError(
                    f"Param '{name}': a pointer takes its batch axes from its inputs; "
                    "batch_shape= is for dynamic params without a value."
                )
            self.ptr, self.stored, self.node_kind = value, None, "pointer"
            return
        if callable(value) and not hasattr(value, "__array__"):
            raise ParamError(
                f"Param '{name}': a bare function is ambiguous in caskax; write "
                "cx.Pointer(fn, *inputs) so the inputs are part of the tree."
            )
        self.ptr = None
        self.stored = _coerce(name, value, self.shape, self.dtype)
        _check_batch(name, self.stored, self.shape, self.declared_batch_shape)
        if dynamic is None:
            dynamic = value is None
        self.node_kind = "dynamic" if dynamic else "static"
        _check_valid(name, self.stored, self.valid, self.cyclic)

    @property
    def value(self):
        """The param's value: the stored one, or for a pointer outside a forward call,
        ``fn(*inputs)`` computed from its inputs' current values (as caskade does).

        Example:
            >>> import caskax as cx
            >>> t = cx.Param("t", 2.0)
            >>> float(cx.Param("twice", cx.Pointer(lambda t: 2 * t, t)).value)
            4.0
        """
        stored = self.stored
        if stored is None and self.node_kind == "pointer":
            from . import graph

            return graph.fill(self, {}).stored
        return stored

    # -- kinds ----------------------------------------------------------------------
    @property
    def kind(self) -> str:
        """One of ``"static"``, ``"dynamic"``, ``"pointer"``, ``"live"``.

        Example:
            >>> import caskax as cx
            >>> a = cx.Param("a", 1.0)
            >>> [p.kind for p in (a, cx.Param("b"), cx.Param("c", a), cx.Param("d", dynamic=False))]
            ['static', 'dynamic', 'pointer', 'live']
        """
        if self.node_kind == "static" and self.stored is None:
            return "live"
        return self.node_kind

    @property
    def static(self) -> bool:
        """True for static and live params (value not taken from the flat vector)."""
        return self.kind in ("static", "live")

    @property
    def dynamic(self) -> bool:
        """True if the value is a slice of the flat vector."""
        return self.node_kind == "dynamic"

    @property
    def pointer(self) -> bool:
        """True if the value is another param's, or ``fn(*inputs)`` of a `Pointer`."""
        return self.node_kind == "pointer"

    @property
    def live(self) -> bool:
        """True for a static param with no value, set inside a forward method."""
        return self.kind == "live"

    # -- shapes ---------------------------------------------------------------------
    @property
    def batch_shape(self) -> tuple:
        """Leading axes of the value beyond `shape` (``()`` when unbatched).

        Example:
            >>> import caskax as cx
            >>> p = cx.Param("t0", [1.0, 2.0, 3.0], shape=())
            >>> p.batch_shape, p.full_shape(), p.size()
            ((3,), (3,), 3)
        """
        if self.stored is not None and self.shape is not None:
            # np.shape: a tree of vmap axes (cx.batch_axes) holds ints here, not arrays
            full = np.shape(self.stored)
            return tuple(full[: max(len(full) - len(self.shape), 0)])
        if self.declared_batch_shape is not None:
            return self.declared_batch_shape
        return ()

    @property
    def value_shape(self) -> tuple:
        """The shape of one value: `shape` with its ``None`` wildcards filled from the
        stored value (caskade's ``Param.shape``); `shape` itself keeps the declaration.

        Example:
            >>> import caskax as cx, numpy as np
            >>> p = cx.Param("p", np.ones((3, 4, 5)), shape=(None, 5))
            >>> p.shape, p.value_shape, p.batch_shape
            ((None, 5), (4, 5), (3,))
        """
        if self.shape is None:
            return () if self.stored is None else tuple(self.stored.shape)
        if self.stored is None:
            return self.shape
        n = len(self.shape)
        tail = tuple(self.stored.shape[self.stored.ndim - n :]) if n else ()
        return tuple(v if s is None else s for s, v in zip(self.shape, tail))

    @property
    def batched(self) -> bool:
        """True if the value has batch axes (see `caskax.batch_axes`)."""
        return len(self.batch_shape) > 0

    def full_shape(self) -> tuple:
        """Shape of the whole value (batch axes included), as the flat vector sees it."""
        if self.stored is not None:
            return tuple(self.stored.shape)
        shape = () if self.shape is None else self.shape
        if any(s is None for s in shape):
            raise ShapeError(
                f"Param '{self.name}': dynamic with no value and wildcard shape={shape}; "
                "give a value or a concrete shape so the flat vector has a fixed length."
            )
        return self.batch_shape + tuple(shape)

    def size(self) -> int:
        """Number of flat-vector entries the param takes when dynamic."""
        return math.prod(self.full_shape())

    # -- functional edits (each returns a new Param with the same uid) ---------------
    def _replace(self, **changes) -> "Param":
        if "value" in changes:
            changes["stored"] = changes.pop("value")
        if "link" in changes:
            changes["ptr"] = changes.pop("link")
        new = object.__new__(type(self))
        for field in self.__dataclass_fields__:
            object.__setattr__(new, field, changes.get(field, getattr(self, field)))
        return new

    def with_value(self, value) -> "Param":
        """A copy holding ``value`` (kind kept; a pointer becomes static)."""
        if isinstance(value, (Param, Pointer)):
            ptr = link(value) if isinstance(value, Param) else value
            return self._replace(ptr=ptr, value=None, node_kind="pointer")
        arr = _coerce(self.name, value, self.shape, self.dtype)
        _check_batch(self.name, arr, self.shape, self.declared_batch_shape)
        _check_valid(self.name, arr, self.valid, self.cyclic)
        # A pointer given a value becomes static but keeps its inputs as children, as
        # caskade keeps its links: the tree (and a state file started earlier) keeps them.
        kind = "static" if self.node_kind == "pointer" else self.node_kind
        return self._replace(value=arr, node_kind=kind)

    _EDITABLE = ("valid", "cyclic", "units", "description", "group", "shape", "prior", "dtype")

    def with_attrs(self, **attrs) -> "Param":
        """A copy with some of ``valid``, ``cyclic``, ``units``, ``description``,
        ``group``, ``shape``, ``prior`` or ``dtype`` changed (caskade assigns these
        attributes in place). The value is checked against the new shape and range.

        Example:
            >>> import caskax as cx
            >>> p = cx.Param("q", 0.5).with_attrs(valid=(0, 1), units="none")
            >>> p.valid, p.units
            ((0.0, 1.0), 'none')
        """
        bad = sorted(set(attrs) - set(self._EDITABLE))
        if bad:
            raise ParamError(
                f"Param '{self.name}': cannot change {', '.join(bad)} with with_attrs; "
                f"editable: {', '.join(self._EDITABLE)} (the value: set / with_value; the "
                "kind: to_dynamic / to_static)."
            )
        changes = {}
        cyclic = bool(attrs.get("cyclic", self.cyclic))
        if "valid" in attrs or "cyclic" in attrs:
            changes["cyclic"] = cyclic
            changes["valid"] = _normalise_valid(self.name, attrs.get("valid", self.valid), cyclic)
        if "units" in attrs:
            changes["units"] = None if attrs["units"] is None else str(attrs["units"])
        if "description" in attrs:
            changes["description"] = str(attrs["description"])
        if "group" in attrs:
            changes["group"] = _normalise_group(self.name, attrs["group"])
        if "prior" in attrs:
            changes["prior"] = attrs["prior"]
        value = self.stored
        if "dtype" in attrs:
            changes["dtype"] = None if attrs["dtype"] is None else jnp.dtype(attrs["dtype"])
            if value is not None and changes["dtype"] is not None:
                value = changes["value"] = jnp.asarray(value, dtype=changes["dtype"])
        if "shape" in attrs:
            if self.pointer:
                raise ParamError(
                    f"Param '{self.name}': a pointer's shape comes from its function; make it "
                    "static or dynamic first."
                )
            shape = _normalise_shape(self.name, attrs["shape"])
            if value is not None and not _is_tracer(value):
                _check_shape(self.name, tuple(value.shape), shape)
            changes["shape"] = shape
        new = self._replace(**changes)
        _check_valid(new.name, new.stored, new.valid, new.cyclic)
        return new

    def _no_pointer(self, value, how):
        if isinstance(value, (Param, Pointer)) or (
            callable(value) and not hasattr(value, "__array__")
        ):
            raise ParamError(
                f"Param '{self.name}': {how} takes an array value, not a "
                f"{type(value).__name__}; to make a pointer, use module.set(target, other_param) "
                "or cx.Pointer(fn, *inputs)."
            )

    def to_dynamic(self, value=_KEEP) -> "Param":
        """A dynamic copy holding ``value`` (the current value if not given; ``None``:
        no value). A former pointer keeps its inputs as children."""
        self._no_pointer(value, "to_dynamic")
        new = self._replace(node_kind="dynamic")
        if value is None:
            return new._replace(value=None)
        return new if value is _KEEP else new.with_value(value)

    def to_static(self, value=_KEEP) -> "Param":
        """A static copy holding ``value`` (the current value if not given). With no
        value (``to_static(None)``, as in caskade) the param is *live*: set inside a
        forward method. A former pointer keeps its inputs as children.

        Example:
            >>> import caskax as cx
            >>> p = cx.Param("p", 1.0)
            >>> p.to_static().kind, p.to_static(None).kind
            ('static', 'live')
        """
        self._no_pointer(value, "to_static")
        new = self._replace(node_kind="static")
        if value is None:
            return new._replace(value=None)
        return new if value is _KEEP else new.with_value(value)

    __getattribute__ = object.__getattribute__  # see Module: plain bound methods

    # -- caskade's names ------------------------------------------------------------
    @property
    def npvalue(self):
        """The value as a numpy array (caskade's ``npvalue``)."""
        value = self.value
        return None if value is None else np.asarray(value)

    def is_valid(self, value=None) -> bool:
        """True if ``value`` (default: the param's own) lies in ``valid``; warns, like
        caskade's ``is_valid``, when it does not."""
        value = self.value if value is None else value
        if self.pointer and value is self.value:
            return True
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            _check_valid(self.name, value, self.valid, self.cyclic)
        for w in caught:
            warnings.warn(w.message, w.category, stacklevel=2)
        return not caught

    @property
    def node_str(self) -> str:
        """``name|kind: value`` as caskade's graph labels show a param."""
        kind = "static" if self.kind == "live" else self.kind
        try:
            value = self.value
        except Exception:
            value = None
        if value is None:
            return f"{self.name}|{kind}: live" if self.kind == "live" else f"{self.name}|{kind}"
        arr = np.asarray(value)
        if arr.size <= 1:
            return (
                f"{self.name}|{kind}: {arr.reshape(()).item():.3g}"
                if arr.size
                else f"{self.name}|{kind}"
            )
        if arr.size <= 4:
            return f"{self.name}|{kind}: " + str(np.char.mod("%.3g", arr).tolist()).replace("'", "")
        return f"{self.name}|{kind}: {self.value_shape}"

    # caskade's linking spellings: a pointer's inputs are given when it is made
    def link(self, *args, **kwargs):
        """caskade's ``p.link(...)``: not a caskax spelling (raises `ModuleError`). A
        caskax pointer holds its inputs: ``m.set("p", cx.Pointer(fn, *inputs))``."""
        raise _spelling_error("p.link(...)")

    def unlink(self, *args, **kwargs):
        """caskade's ``p.unlink(...)``: not a caskax spelling (raises `ModuleError`)."""
        raise _spelling_error("p.unlink(...)")

    def to_pointer(self, value, *inputs) -> "Param":
        """A pointer copy: to ``value`` (a `Param`), or ``Pointer(value, *inputs)`` for
        a function (caskade's ``to_pointer``; in a module, use ``m.set(target, ...)``).

        Example:
            >>> import caskax as cx
            >>> a = cx.Param("a", 2.0)
            >>> float(cx.Param("b", 1.0).to_pointer(lambda a: 3 * a, a).value)
            6.0
        """
        if isinstance(value, (Param, Pointer)) and not inputs:
            return self.with_value(value)
        if callable(value) and not isinstance(value, Param):
            return self.with_value(Pointer(value, *inputs))
        raise ParamError(
            f"Param '{self.name}': to_pointer takes a Param, a cx.Pointer, or a function "
            f"and its inputs; got {type(value).__name__}."
        )

    __setattr__ = frozen_setattr  # caskax errors that name the immutable spelling
    __delattr__ = frozen_delattr

    # -- identity -------------------------------------------------------------------
    # Equinox hashes modules by their fields, which fails on arrays; caskax nodes are
    # references, so identity is the right notion of equality for hashing.
    def __hash__(self):
        return id(self)

    def __eq__(self, other):
        return self is other

    def __repr__(self):
        val = "-" if self.stored is None else _short(self.stored)
        return f"Param({self.name!r}, kind={self.kind}, value={val})"


def _spelling_error(spelling):
    return ModuleError(
        f"{spelling} is caskade's way to link nodes; caskax nodes are immutable and a "
        "pointer holds its own inputs. Make the pointer in one step on the module that "
        "holds the param: m = m.set('p', other_param) for a link, or "
        "m = m.set('p', cx.Pointer(fn, *inputs)) for a function of other params/modules."
    )


def _short(value) -> str:
    if _is_tracer(value):
        return f"<traced {tuple(value.shape)}>"
    arr = np.asarray(value)
    if arr.size <= 6:
        return np.array2string(arr, precision=4, separator=", ")
    return f"<array {arr.shape} {arr.dtype}>"
