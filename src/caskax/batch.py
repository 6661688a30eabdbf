"""Batched Programs: one model, N datasets, one compiled function.

``cx.batch(programs)`` takes N Programs of one structure (the same model built N times
with different data arrays, static values or start values) and returns a
`BatchedProgram`: the model's arrays with a leading dataset axis wherever they differ,
shared once wherever they agree. ``F(X)`` maps ``(N, n) -> (N,)`` by ``jax.vmap`` over
the datasets; ``cx.fit``, ``cx.laplace`` and ``cx.nuts`` solve the N problems
independently in one compiled program. ``cx.batch(f, {"data": D})`` builds the same
thing from one Program by swapping the arrays at given paths for stacked ones, without
building N Programs.
"""

import contextlib
import functools
import hashlib
import json
import math
import os
import shutil
import threading
import time
import warnings

import jax
import jax.numpy as jnp
import numpy as np

from .errors import (
    CaskaxWarning,
    GraphError,
    InferenceError,
    ParamIndexError,
    ShapeError,
    StateFileError,
)
from .program import Program, _Slot, _Static

__all__ = ["batch", "BatchedProgram", "read_results"]


class BatchedProgram:
    """N Programs of one structure as one function: ``F(X)`` for ``X`` ``(N, n)``
    returns ``(N,)`` (``F(X0, X1, ...)`` with param groups).

    Made by `batch`. The arrays that differ between datasets carry a leading axis of
    length ``N``; the others are held once. ``F[k]`` is dataset ``k``'s `Program`;
    ``F.init`` is ``(N, n)``; ``names``, ``layout``, ``size``, ``groups`` and ``valid``
    are one member's. A pytree whose leaves are its arrays, so
    ``jax.jit(lambda F, X: F(X))`` compiles once for any data of the same shapes.

    Example:
        >>> import caskax as cx, jax.numpy as jnp
        >>> from caskax.examples import Gaussian1D
        >>> f = cx.compile(Gaussian1D("lc", t0=0.0, sigma=1.0, peak_flux=1.0).to_dynamic("t0"),
        ...                "flux", 0.0)
        >>> F = cx.batch(f, {"sigma": jnp.array([1.0, 2.0, 4.0])})
        >>> len(F), F.init.shape, F.names
        (3, (3, 1), ['lc.t0'])
        >>> [round(v, 3) for v in F(jnp.ones((3, 1))).tolist()]   # exp(-(0 - t0)^2 / sigma^2)
        [0.368, 0.779, 0.939]
    """

    __slots__ = ("_arrays", "_axes", "_static", "_n", "__weakref__")

    def __init__(self, arrays, axes, static, n):
        self._arrays, self._axes, self._static, self._n = tuple(arrays), tuple(axes), static, int(n)

    # -- members ---------------------------------------------------------------------------
    def member_of(self, arrays) -> Program:
        """The Program of one dataset given its arrays (a slice of ``F``'s leaves along
        the dataset axis, as ``jax.vmap`` over ``F.in_axes`` hands them)."""
        return Program._from_parts(arrays, self._static)

    @property
    def in_axes(self) -> tuple:
        """``jax.vmap``'s ``in_axes`` for ``F``'s leaves: 0 for stacked, None for shared."""
        return self._axes

    @property
    def arrays(self) -> tuple:
        return self._arrays

    def __len__(self):
        return self._n

    @property
    def num_datasets(self) -> int:
        return self._n

    def __getitem__(self, k) -> Program:
        """Dataset ``k`` as a plain `Program` (equal to the Program it was built from)."""
        k = int(k)
        if not -self._n <= k < self._n:
            raise ParamIndexError(f"dataset {k} out of range for {self._n} datasets.")
        k %= self._n
        return self.member_of([a[k] if ax == 0 else a for a, ax in zip(self._arrays, self._axes)])

    def take(self, indices) -> "BatchedProgram":
        """The datasets at ``indices`` (a sequence of ints or a boolean mask of length
        ``N``) as a smaller `BatchedProgram`: sample only the interesting ones.

        Example:
            >>> import caskax as cx, jax.numpy as jnp
            >>> from caskax.examples import Gaussian1D
            >>> f = cx.compile(Gaussian1D("lc", t0=0.0, sigma=1.0, peak_flux=1.0).to_dynamic("t0"), "flux", 0.0)
            >>> F = cx.batch(f, sigma=jnp.array([1.0, 2.0, 4.0]))
            >>> G = F.take([2, 0])
            >>> len(G), [round(v, 3) for v in G(jnp.ones((2, 1))).tolist()]
            (2, [0.939, 0.368])
        """
        idx = np.asarray(indices)
        if idx.dtype == bool:
            if idx.shape != (self._n,):
                raise ShapeError(f"take: a mask needs {self._n} entries, got shape {idx.shape}.")
            idx = np.flatnonzero(idx)
        idx = idx.astype(np.int64).reshape(-1)
        if idx.size == 0 or np.any((idx < -self._n) | (idx >= self._n)):
            raise ParamIndexError(
                f"take: indices must be non-empty and within [-{self._n}, {self._n}), got {idx.tolist()}."
            )
        arrays = [a[idx] if ax == 0 else a for a, ax in zip(self._arrays, self._axes)]
        return BatchedProgram(arrays, self._axes, self._static, idx.size)

    # -- one member's layout ---------------------------------------------------------------
    @property
    def _shape(self) -> Program:
        # static properties only (layout, names): they never look at the arrays
        return Program._from_parts(self._arrays, self._static)

    @property
    def layout(self) -> tuple:
        return self._static.rows

    @property
    def names(self):
        return self._shape.names

    @property
    def size(self):
        return self._shape.size

    @property
    def groups(self) -> tuple:
        return self._shape.groups

    @property
    def valid(self) -> bool:
        return self._static.valid

    @property
    def method(self) -> str:
        return self._static.method

    @property
    def init(self):
        """Each dataset's current dynamic values, ``(N, n)`` (a tuple with groups)."""
        return _batched(self, "init", ())

    # -- calling ---------------------------------------------------------------------------
    def __call__(self, *xs):
        return _batched(self, "__call__", self._check(xs))

    def to_valid(self, *xs):
        """``(N, n)`` constrained -> unconstrained, dataset by dataset."""
        return _batched(self, "to_valid", self._check(xs))

    def from_valid(self, *us):
        """``(N, n)`` unconstrained -> constrained."""
        return _batched(self, "from_valid", self._check(us))

    def log_det_jacobian(self, *us):
        return _batched(self, "log_det_jacobian", self._check(us))

    def log_prior(self, *xs):
        return _batched(self, "log_prior", self._check(xs))

    def _check(self, xs):
        sizes = self.size if isinstance(self.size, tuple) else (self.size,)
        if len(xs) != len(sizes):
            raise ShapeError(
                f"this batched Program takes {len(sizes)} array(s) of shape (N, n), got {len(xs)}."
            )
        out = []
        for x, n in zip(xs, sizes):
            x = jnp.asarray(x)
            if x.shape != (self._n, n):
                raise ShapeError(
                    f"expected an array of shape ({self._n}, {n}): one flat vector per dataset, "
                    f"laid out as {self.names}; got shape {tuple(x.shape)}."
                )
            out.append(x)
        return tuple(out)

    def __repr__(self):
        return f"BatchedProgram({self._n} x {self._shape.module.name}.{self.method}, size={self.size}, valid={self.valid})"


def _flatten(F):
    return F._arrays, (F._axes, F._static, F._n)


def _unflatten(aux, arrays):
    return BatchedProgram(arrays, *aux)


jax.tree_util.register_pytree_node(BatchedProgram, _flatten, _unflatten)


@functools.partial(jax.jit, static_argnums=(0, 1, 2, 3))
def _batched_jit(method, axes, static, n, arrays, xs):
    def one(arrays, *xs):
        f = Program._from_parts(arrays, static)
        out = getattr(f, method)
        return out if method == "init" else out(*xs)

    return jax.vmap(one, in_axes=(axes,) + (0,) * len(xs), axis_size=n)(arrays, *xs)


def _batched(F, method, xs):
    return _batched_jit(method, F._axes, F._static, F._n, F._arrays, tuple(xs))


# -- building ----------------------------------------------------------------------------------
def batch(programs, arrays: dict | None = None, /, **named) -> BatchedProgram:
    """N datasets of one model as one `BatchedProgram`.

    Two ways to build one:

    - ``cx.batch([f0, f1, ...])``: Programs compiled from the same model structure
      (same classes, params, pointers, method and layout) that differ in array values,
      static values or start values. Arrays equal in every member are held once; the
      others are stacked. Python numbers that differ (a module's ``exp_time``) become
      stacked arrays. A different structure is a `GraphError` naming the first
      difference.
    - ``cx.batch(f, {"path": D, ...})`` or ``cx.batch(f, path=D)``: the fast path. The
      arrays of one Program at the given paths (relative to ``f.module``: a field
      ``"data"``, a param ``"models[0].x0"`` meaning its value, or ``"args[0]"`` for
      the compiled method's first argument) are replaced by ``D``, of shape
      ``(N, *shape)``; every copy of a shared node is replaced alike. No Program is
      built per dataset, so 10,000 datasets take milliseconds.

    **Returns:** a `BatchedProgram` ``F`` with ``F(X)`` of shape ``(N,)``;
    ``cx.fit(F)``, ``cx.laplace(F, X)`` and ``cx.nuts(F, key)`` solve each dataset's
    problem independently, results with a leading dataset axis.

    Example:
        >>> import caskax as cx, jax.numpy as jnp
        >>> from caskax.examples import Gaussian1D
        >>> def program(sigma):
        ...     lc = Gaussian1D("lc", t0=0.0, sigma=sigma, peak_flux=1.0).to_dynamic("t0")
        ...     return cx.compile(lc, "flux", 0.0)
        >>> F = cx.batch([program(1.0), program(2.0)])
        >>> [round(v, 3) for v in F(jnp.ones((2, 1))).tolist()]
        [0.368, 0.779]
        >>> G = cx.batch(program(1.0), sigma=jnp.array([1.0, 2.0]))   # the fast path
        >>> bool(jnp.all(G(jnp.ones((2, 1))) == F(jnp.ones((2, 1)))))
        True
    """
    by_path = dict(arrays or {})
    by_path.update(named)
    if isinstance(programs, Program):
        if not by_path:
            raise GraphError(
                "cx.batch(f, ...) with one Program needs the arrays to swap: "
                "cx.batch(f, {'data': D}) with D of shape (N, ...); or pass a list of Programs."
            )
        return _swap(programs, by_path)
    if by_path:
        raise GraphError(
            "cx.batch: paths to swap go with one Program, not with a list of Programs."
        )
    programs = list(programs)
    if not programs:
        raise GraphError("cx.batch needs at least one Program.")
    for k, p in enumerate(programs):
        if not isinstance(p, Program):
            raise GraphError(f"cx.batch needs Programs; programs[{k}] is a {type(p).__name__}.")
    return _stack(programs)


def _leaves(p: Program) -> list:
    """The full leaf list of a Program's tree, arrays not de-duplicated."""
    return [p._arrays[s.index] if isinstance(s, _Slot) else s for s in p._static.leaves]


def _paths(p: Program) -> list:
    """``keystr`` of each leaf of the Program's tree, as `_leaves` orders them."""
    return [
        _user_path(jax.tree_util.keystr(k))
        for k, _ in jax.tree_util.tree_flatten_with_path(p._tree)[0]
    ]


def _user_path(keystr: str) -> str:
    # (module, args, kwargs): "[0].model.x" -> "model.x", "[1][0]" -> "args[0]"
    if keystr.startswith("[0]."):
        return keystr[4:]
    if keystr.startswith("[1]"):
        return "args" + keystr[3:]
    if keystr.startswith("[2]"):
        return "kwargs" + keystr[3:]
    return keystr


def _describe(leaf) -> str:
    if isinstance(leaf, _Slot):
        return "an array"
    if hasattr(leaf, "shape") and hasattr(leaf, "dtype"):
        return f"an array {tuple(leaf.shape)} {leaf.dtype}"
    return repr(leaf)


def _first_difference(p0: Program, p: Program, k: int) -> str:
    s0, s = p0._static, p._static
    if s0.method != s.method:
        return f"programs[0] calls {s0.method!r}, programs[{k}] calls {s.method!r}"
    if s0.valid != s.valid:
        return f"programs[0] has valid={s0.valid}, programs[{k}] valid={s.valid}"
    r0 = [(r.name, r.path, tuple(r.shape), r.valid, r.group) for r in s0.rows]
    r1 = [(r.name, r.path, tuple(r.shape), r.valid, r.group) for r in s.rows]
    for a, b in zip(r0, r1):
        if a != b:
            return (
                f"dynamic param {a[0]!r} at {a[1]!r} (shape {a[2]}, valid {a[3]}) in "
                f"programs[0] is {b[0]!r} at {b[1]!r} (shape {b[2]}, valid {b[3]}) in programs[{k}]"
            )
    if len(r0) != len(r1):
        extra = (r0 if len(r0) > len(r1) else r1)[min(len(r0), len(r1))]
        return (
            f"programs[0] has {len(r0)} dynamic params, programs[{k}] has {len(r1)} "
            f"(first unmatched: {extra[1]!r})"
        )
    paths0, paths1 = _paths(p0), _paths(p)
    for a, b in zip(paths0, paths1):
        if a != b:
            return f"the trees differ at {a!r} (programs[0]) / {b!r} (programs[{k}])"
    if len(paths0) != len(paths1):
        return f"programs[0]'s tree has {len(paths0)} leaves, programs[{k}]'s {len(paths1)}"
    return (
        f"programs[0] and programs[{k}] differ in a non-array part of the model "
        "(a param's kind, a pointer function, a static field)"
    )


def _stack(programs) -> BatchedProgram:
    p0 = programs[0]
    s0 = p0._static
    for k, p in enumerate(programs[1:], 1):
        if p._static._cmp != s0._cmp or p._static.treedef.num_leaves != s0.treedef.num_leaves:
            raise GraphError(
                f"cx.batch: the Programs differ in structure: {_first_difference(p0, p, k)}. "
                "Batch Programs compiled from one model with different values only."
            )
    leaves = [_leaves(p) for p in programs]
    paths = None
    slots_of = {}  # the members' slot indices at a leaf -> the batched leaf index
    arrays, axes, static_leaves = [], [], []
    for j, first in enumerate(leaves[0]):
        column = [lv[j] for lv in leaves]
        is_array = [isinstance(s, _Slot) for s in (p._static.leaves[j] for p in programs)]
        if not any(is_array):
            if all(_same_value(first, c) for c in column[1:]):
                static_leaves.append(first)
                continue
            if not all(isinstance(c, (bool, int, float, np.number)) for c in column):
                paths = paths or _paths(p0)
                k = next(i for i, c in enumerate(column) if not _same_value(first, c))
                raise GraphError(
                    f"cx.batch: {paths[j]!r} is {first!r} in programs[0] and {column[k]!r} in "
                    f"programs[{k}]; only arrays and numbers may differ between datasets."
                )
            key = ("number", j)
            slots_of[key] = len(arrays)
            arrays.append(_numbers(column))
            axes.append(0)
            static_leaves.append(_Slot(slots_of[key]))
            continue
        if not all(is_array):
            paths = paths or _paths(p0)
            k = is_array.index(not is_array[0])
            raise GraphError(
                f"cx.batch: {paths[j]!r} is {_describe(column[0])} in programs[0] and "
                f"{_describe(column[k])} in programs[{k}]."
            )
        key = tuple(p._static.leaves[j].index for p in programs)
        if key not in slots_of:
            for k, c in enumerate(column[1:], 1):
                if c.shape != first.shape or c.dtype != first.dtype:
                    paths = paths or _paths(p0)
                    raise GraphError(
                        f"cx.batch: {paths[j]!r} has shape {tuple(first.shape)} {first.dtype} in "
                        f"programs[0] and {tuple(c.shape)} {c.dtype} in programs[{k}]; stacked "
                        "arrays need one shape and dtype."
                    )
            slots_of[key] = len(arrays)
            if all(c is first for c in column) or all(_equal_arrays(first, c) for c in column[1:]):
                arrays.append(first)
                axes.append(None)
            else:
                arrays.append(jnp.stack(column))
                axes.append(0)
        static_leaves.append(_Slot(slots_of[key]))
    static = _Static(s0.treedef, tuple(static_leaves), s0.rows, s0.method, s0.valid, s0.key)
    return BatchedProgram(arrays, axes, static, len(programs))


def _numbers(values):
    """Python numbers stacked as one array that promotes as they did: weakly typed, so
    a float32 model stays float32 under x64 as with the numbers themselves."""
    stacked = jnp.asarray(np.asarray(values))
    return _weak(stacked) if all(isinstance(v, (bool, int, float)) for v in values) else stacked


def _weak(stacked):
    try:
        from jax._src.lax.lax import _convert_element_type  # no public way to mark weak types
    except ImportError:  # pragma: no cover - then strong types: x64 models may promote
        return stacked
    return _convert_element_type(stacked, None, weak_type=True)


def _same_value(a, b) -> bool:
    try:
        return bool(a == b) and type(a) is type(b)
    except Exception:  # noqa: BLE001 - objects without a truth value compare by identity
        return a is b


def _equal_arrays(a, b) -> bool:
    if isinstance(a, jax.core.Tracer) or isinstance(b, jax.core.Tracer):
        return a is b
    return bool(np.array_equal(np.asarray(a), np.asarray(b)))


def _swap(f: Program, by_path: dict) -> BatchedProgram:
    """The fast path: ``f``'s leaves at ``by_path``'s paths (and at every copy of
    their node) replaced by stacked arrays."""
    s = f._static
    leaves = list(s.leaves)
    paths = _paths(f)
    index = {p: j for j, p in enumerate(paths)}
    arrays, axes = list(f._arrays), [None] * len(f._arrays)
    n = None
    for path, value in by_path.items():
        positions = _positions(f, path, index, paths)
        j0 = positions[0]
        old = f._arrays[leaves[j0].index] if isinstance(leaves[j0], _Slot) else leaves[j0]
        shape = tuple(np.shape(old))
        dtype = old.dtype if hasattr(old, "dtype") else jnp.asarray(old).dtype
        value = jnp.asarray(value, dtype=dtype)
        if not hasattr(old, "dtype") or getattr(old, "weak_type", False):
            value = _weak(value)  # a Python number (or weak array) promotes as before
        if value.ndim != len(shape) + 1 or tuple(value.shape[1:]) != shape:
            raise ShapeError(
                f"cx.batch: {path!r} holds shape {shape}; its replacement must have shape "
                f"(N, {', '.join(map(str, shape))}{',' if len(shape) == 1 else ''}) with one entry "
                f"per dataset, got {tuple(value.shape)}."
            )
        if value.shape[0] == 0:
            raise ShapeError(
                f"cx.batch: {path!r} stacks no datasets (shape {tuple(value.shape)}); a batched "
                "Program needs at least one."
            )
        if n is None:
            n = value.shape[0]
        elif value.shape[0] != n:
            raise ShapeError(
                f"cx.batch: {path!r} stacks {value.shape[0]} datasets, the paths before it {n}."
            )
        slot = _Slot(len(arrays))
        arrays.append(value)
        axes.append(0)
        for j in positions:
            leaves[j] = slot
    # drop arrays no longer referenced (the swapped-out originals)
    used = sorted({lv.index for lv in leaves if isinstance(lv, _Slot)})
    renumber = {old: new for new, old in enumerate(used)}
    leaves = [_Slot(renumber[lv.index]) if isinstance(lv, _Slot) else lv for lv in leaves]
    static = _Static(s.treedef, tuple(leaves), s.rows, s.method, s.valid, s.key)
    return BatchedProgram([arrays[i] for i in used], [axes[i] for i in used], static, n)


def _positions(f: Program, path: str, index: dict, paths: list) -> list:
    """Leaf positions a user path names: the leaf itself (a param's path means its
    value), and the same leaf in every other copy of its node."""
    path = path.strip()
    tree = f._tree
    flat = jax.tree_util.tree_flatten_with_path(tree)[0]
    j = index.get(path)
    if j is None:
        j = _param_value_position(path, tree, flat, paths)
    if j is None:
        params = {p.rsplit(".", 1)[0] for p in paths if "." in p}
        params = {p for p in params if _param_value_position(p, tree, flat, paths) is not None}
        known = sorted(params | {p for p in paths if p.rsplit(".", 1)[0] not in params})
        raise GraphError(f"cx.batch: no array at {path!r} in {f.module.name}. Paths here: {known}.")
    key_path = flat[j][0]
    # the deepest node (Param or Module) on the way holds the leaf; its copies elsewhere
    # in the tree (a shared node) must change alike
    obj, owner, owner_depth = tree, None, 0
    for depth, entry in enumerate(key_path):
        obj = _step(obj, entry)
        if hasattr(obj, "uid") and depth + 1 < len(key_path):
            owner, owner_depth = obj, depth + 1
    if owner is None:
        return [j]
    suffix = jax.tree_util.keystr(tuple(key_path[owner_depth:]))
    uid = owner.uid
    copies = jax.tree_util.tree_flatten_with_path(
        tree, is_leaf=lambda x: getattr(x, "uid", None) == uid
    )[0]
    out = []
    for k, leaf in copies:
        if getattr(leaf, "uid", None) == uid:
            full = _user_path(jax.tree_util.keystr(k) + suffix)
            if full in index:
                out.append(index[full])
    return out or [j]


def _param_value_position(path: str, tree, flat: list, paths: list):
    """The position of the value array of the Param at ``path``, or None."""
    under = [j for j, p in enumerate(paths) if p.startswith(path + ".")]
    if not under:
        return None
    key_path, node = flat[under[0]][0], tree
    for depth, entry in enumerate(key_path):
        node = _step(node, entry)
        if _user_path(jax.tree_util.keystr(tuple(key_path[: depth + 1]))) == path:
            break
    value = getattr(node, "value", None) if hasattr(node, "uid") else None
    if value is None:
        return None
    return next((j for j in under if flat[j][1] is value), None)


def _step(obj, entry):
    if isinstance(entry, jax.tree_util.GetAttrKey):
        return getattr(obj, entry.name)
    if isinstance(entry, jax.tree_util.SequenceKey):
        return obj[entry.idx]
    if isinstance(entry, jax.tree_util.DictKey):
        return obj[entry.key]
    if isinstance(entry, jax.tree_util.FlattenedIndexKey):
        return jax.tree_util.tree_leaves(obj)[entry.key]
    return obj


# -- many datasets in chunks: memory, devices, files ----------------------------------------------------
def _chunk_indices(n: int, batch_size: int | None):
    """``[(real, padded), ...]``: the dataset indices of each chunk, and the same padded
    to ``batch_size`` by repeating the last index, so every chunk compiles alike."""
    size = n if batch_size is None else int(batch_size)
    if size < 1:
        raise ShapeError(f"batch_size must be an integer >= 1, got {batch_size!r}.")
    out = []
    for start in range(0, n, size):
        real = np.arange(start, min(start + size, n))
        padded = np.concatenate([real, np.full(size - real.size, real[-1])]) if n > size else real
        out.append((real, padded))
    return out


def _datasets_mesh(n: int):
    """The local devices as a one-axis mesh named ``"datasets"`` when there are several
    and they divide ``n`` datasets evenly; None otherwise (one device solves them)."""
    devices = jax.local_devices()
    if len(devices) < 2 or n % len(devices):
        return None
    from jax.sharding import Mesh

    return Mesh(np.array(devices), ("datasets",))


def _on_devices(F: "BatchedProgram", *xs):
    """``F`` and dataset-leading arrays ``xs`` spread over the local devices along the
    dataset axis (each device solving its share), when there are several and they
    divide the count; unchanged otherwise."""
    mesh = _datasets_mesh(len(F))
    if mesh is None:
        return (F, *xs)
    from jax.sharding import NamedSharding, PartitionSpec

    split, whole = (
        NamedSharding(mesh, PartitionSpec("datasets")),
        NamedSharding(mesh, PartitionSpec()),
    )
    arrays = [jax.device_put(a, split if ax == 0 else whole) for a, ax in zip(F.arrays, F.in_axes)]
    G = BatchedProgram(arrays, F.in_axes, F._static, len(F))
    return (G, *(None if x is None else jax.device_put(x, split) for x in xs))


PEER_TIMEOUT_ENV = "CASKAX_PEER_TIMEOUT"
_PEER_TIMEOUT_DEFAULT = 60.0


def _peer_timeout() -> float:
    """Seconds of silence after which a process of a multi-process batched call gives
    up on another: ``CASKAX_PEER_TIMEOUT``, or 60 s. The default sits below
    ``jax.distributed``'s heartbeat timeout (100 s by default), so that caskax's error,
    which names the missing chunks, comes before JAX ends the job."""
    raw = os.environ.get(PEER_TIMEOUT_ENV, "").strip()
    if not raw:
        return _PEER_TIMEOUT_DEFAULT
    try:
        value = float(raw)
    except ValueError:
        value = math.nan
    if not (math.isfinite(value) and value > 0):
        raise InferenceError(f"{PEER_TIMEOUT_ENV} must be a number of seconds > 0, got {raw!r}.")
    return value


class _Heartbeat:
    """This process's sign of life in a parts folder while a multi-process call runs: a
    daemon thread rewrites ``.alive-{rank}`` (a token of this call, a counter, a state)
    every ``interval`` seconds. The others judge it by whether its content changes, on
    their own clocks, so clocks that differ between machines do not matter."""

    def __init__(self, parts_dir: str, rank: int, interval: float):
        self.path = os.path.join(parts_dir, f".alive-{rank}")
        self.interval = interval
        self.token = os.urandom(8).hex()
        self.state, self.count = "running", 0
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(
            target=self._run, name=f"caskax-heartbeat-{rank}", daemon=True
        )

    def __enter__(self):
        self.beat()
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()
        self.beat("exited")

    def beat(self, state: str | None = None) -> None:
        with self._lock:
            self.state = state or self.state
            self.count += 1
            tmp = f"{self.path}.{os.getpid()}.tmp"
            try:
                with open(tmp, "w") as fh:
                    fh.write(f"{self.token} {self.count} {self.state}\n")
                os.replace(tmp, self.path)  # whole: a reader never sees half a line
            except OSError:
                pass  # the others then see this process as silent, and say so

    def _run(self):
        while not self._stop.wait(self.interval):
            self.beat()


class _Peers:
    """The other processes of a multi-process call, as this one sees them through their
    heartbeat files. A peer is *fresh* once its file has changed while this process
    watched (it runs this call, not an earlier one), and *silent* after ``timeout``
    seconds of this process's clock without a change (counted from the start of
    watching, so a file an earlier run left behind counts as silence too)."""

    def __init__(self, parts_dir: str, rank: int, nproc: int, timeout: float, interval: float):
        self.dir, self.timeout, self.interval = parts_dir, timeout, interval
        now = time.monotonic()
        self.last_look = now
        self.seen = {
            r: {"content": self._read(r), "changed": now, "fresh": False, "done_since": None}
            for r in range(nproc)
            if r != rank
        }

    def path(self, r: int) -> str:
        return os.path.join(self.dir, f".alive-{r}")

    def _read(self, r: int):
        try:
            with open(self.path(r)) as fh:
                return fh.read()
        except OSError:
            return None

    def look(self, ranks) -> None:
        """Read the heartbeats of ``ranks`` (at most twice per beat interval)."""
        now = time.monotonic()
        if now - self.last_look < self.interval / 2:
            return
        self.last_look = now
        for r in ranks:
            p = self.seen[r]
            content = self._read(r)
            if content is not None and content != p["content"]:
                p.update(content=content, changed=now, fresh=True)
            finished = p["fresh"] and self.state(r) in ("done", "exited")
            p["done_since"] = (p["done_since"] or now) if finished else None

    def state(self, r: int):
        words = (self.seen[r]["content"] or "").split()
        return words[2] if len(words) == 3 else None

    def fresh(self, r: int) -> bool:
        return self.seen[r]["fresh"]

    def gone(self, r: int):
        """Why peer ``r`` will not write what is still missing of its chunks, or None
        while it may."""
        p, now = self.seen[r], time.monotonic()
        silent = now - p["changed"]
        if p["done_since"] is not None and now - p["done_since"] > self.timeout:
            return (
                f"process {r} finished its chunks {now - p['done_since']:.0f} s ago, yet they "
                "are not all here (is out= on a file system every process reaches, and does "
                "every process make the same call?)"
            )
        if silent > self.timeout:
            if self.state(r) in ("done", "exited"):
                return (
                    f"process {r} stopped after reporting its chunks finished ({silent:.0f} s "
                    f"ago), yet they are not all here (is out= on a file system every process "
                    "reaches, and does every process make the same call?)"
                )
            if p["content"] is None:
                return (
                    f"process {r} gave no sign of life for {silent:.0f} s (no heartbeat file "
                    f"'{self.path(r)}'): it died before its call began, or out= is not on a "
                    "file system every process reaches"
                )
            return (
                f"process {r} gave no sign of life for {silent:.0f} s (its heartbeat file "
                f"'{self.path(r)}' stopped changing): it was most likely killed (SIGKILL, "
                "out of memory, a failed node)"
            )
        return None


def _run_in_chunks(
    F: "BatchedProgram",
    solve,
    *,
    batch_size=None,
    progress=False,
    out=None,
    resume=False,
    what="fit",
    meta=None,
    inputs=(),
    shared=(),
) -> dict:
    """Solve ``F``'s datasets chunk by chunk: ``solve(F_chunk, indices)`` returns a dict
    of arrays with a leading axis over the chunk's datasets. Chunks are padded to one
    size (one compile; ``solve`` may spread a chunk over the devices with
    `_on_devices`), counted by one progress bar, and with ``out`` written to
    ``out + ".parts/"`` one file per finished chunk (written whole, then renamed: a crash
    leaves every finished chunk and no partial one), merged into ``out`` at the end.
    ``resume=True`` keeps the finished chunks of an earlier, interrupted call with the
    same ``out`` and ``batch_size``, and only when the data agree: every file carries a
    fingerprint of its chunk's arrays and of ``inputs`` (per-dataset arrays such as the
    starts, leading axis N), and ``shared`` (other arrays that decide the results) joins
    the settings in ``meta``. With several processes (``jax.distributed``) each
    solves every P-th chunk, keeps a heartbeat in the parts folder, and waits for the
    others' chunks there, giving up on a process that stops (`_Peers`). Returns the
    merged dict, in dataset order."""
    n = len(F)
    chunks = _chunk_indices(n, batch_size)
    meta = {**(meta or {}), "num_datasets": n, "batch_size": len(chunks[0][1])}
    parts_dir = None if out is None else os.fspath(out) + ".parts"
    inputs = tuple(inputs)
    if out is not None:
        common = [a for a, ax in zip(F.arrays, F.in_axes) if ax is None]
        # the model's plain numbers (a module's exp_time) too; other static leaves, such
        # as a pointer's function, have no value that survives the process
        numbers = [
            repr(v)
            for v in F._static.leaves
            if isinstance(v, (bool, int, float, complex, str, np.number)) or v is None
        ]
        meta["shared"] = _fingerprint(common + numbers + list(shared))
    nproc, rank = jax.process_count(), jax.process_index()
    if nproc > 1 and out is None:
        raise InferenceError(
            f"batched {what} over {nproc} processes shares its chunks through files: give "
            "out=path.h5 on a file system every process can reach."
        )
    if (
        out is not None
        and resume
        and os.path.exists(os.fspath(out))
        and not os.path.exists(parts_dir)
    ):
        _check_same_run(os.fspath(out), what, meta)
        fps = [_chunk_fingerprint(F, padded, inputs) for _, padded in chunks]
        _check_inputs(os.fspath(out), what, _fingerprint(fps), np.arange(n))
        return _read_results(os.fspath(out), what)
    if parts_dir is not None:
        if not resume and nproc == 1 and os.path.isdir(parts_dir):
            shutil.rmtree(parts_dir)
        os.makedirs(parts_dir, exist_ok=True)
    # with several processes (jax.distributed), each takes every nproc-th chunk
    mine = chunks[rank::nproc]
    heartbeat, peers = contextlib.nullcontext(), None
    if nproc > 1:
        timeout = _peer_timeout()
        interval = min(2.0, timeout / 6)  # one tiny file per beat
        # what an earlier run of this process left: its read marker, and without resume
        # its chunks (the others take a chunk only once its writer shows life in this run)
        stale = [f".read-{rank}"] + ([] if resume else [f"{r[0]:09d}.h5" for r, _ in mine])
        for name in stale:
            with contextlib.suppress(FileNotFoundError):
                os.remove(os.path.join(parts_dir, name))
        peers = _Peers(parts_dir, rank, nproc, timeout, interval)
        heartbeat = _Heartbeat(parts_dir, rank, interval)
    with heartbeat:
        results = _solve_mine(F, solve, mine, parts_dir, resume, what, meta, progress, inputs)
        if nproc > 1:
            heartbeat.beat("done")
            results = _gather_parts(parts_dir, chunks, what, meta, rank, nproc, peers, resume)
        fps = [r.pop(_FP, None) for r in results]
        merged = {k: np.concatenate([r[k] for r in results]) for k in results[0]}
        if out is not None and rank == 0:
            _write_results(os.fspath(out), merged, what, {**meta, "inputs": _fingerprint(fps)})
            if nproc > 1:  # the others have read the parts when their markers appear
                _wait_for_readers(parts_dir, nproc, peers, what)
    if nproc > 1 and rank:
        # after this process's last heartbeat: process 0 then removes the folder (it may
        # have done so already, had it given up on this process)
        with contextlib.suppress(OSError):
            open(os.path.join(parts_dir, f".read-{rank}"), "w").close()
    if out is not None and rank == 0:
        shutil.rmtree(parts_dir, ignore_errors=True)
    return merged


def _solve_mine(F, solve, mine, parts_dir, resume, what, meta, progress, inputs) -> list:
    """This process's chunks, solved (or with ``resume``, read back when finished
    before), each written to the parts folder with its fingerprint (kept in each
    result under `_FP`)."""
    n = len(F)
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=sum(real.size for real, _ in mine), desc=what, unit="dataset")
    results = []
    try:
        for real, padded in mine:
            part = None if parts_dir is None else os.path.join(parts_dir, f"{real[0]:09d}.h5")
            G = F if padded.size == n and np.array_equal(padded, np.arange(n)) else F.take(padded)
            fp = None if part is None else _chunk_fingerprint(G, padded, inputs)
            if part is not None and resume and os.path.exists(part):
                _check_same_run(part, what, meta)
                _check_inputs(part, what, fp, real)
                got = _read_results(part, what)
                if np.array_equal(got["index"], real):
                    results.append({**got, _FP: fp})
                    if bar is not None:
                        bar.update(real.size)
                    continue
            got = {k: np.asarray(v)[: real.size] for k, v in _solve_chunk(solve, G, padded, what)}
            got["index"] = real
            if part is not None:
                _write_results(part, got, what, {**meta, "inputs": fp})
            results.append({**got, _FP: fp})
            if bar is not None:
                bar.update(real.size)
    finally:
        if bar is not None:
            bar.close()
    return results


def _solve_chunk(solve, G, padded, what):
    """``solve(G, padded).items()``, with a device out of memory turned into an error
    that says which chunk and what to change."""
    try:
        return solve(G, padded).items()
    except jax.errors.JaxRuntimeError as err:
        if "RESOURCE_EXHAUSTED" not in str(err):
            raise
        size = int(padded.size)
        raise InferenceError(
            f"batched {what}: the device ran out of memory solving datasets "
            f"{int(padded[0])}..{int(padded[-1])} ({size} in one chunk). Pass a smaller "
            f"batch_size= (such as {max(1, size // 4)}) to solve fewer at a time; with out= "
            "and resume=True the chunks already finished are kept."
        ) from err


def _wait_for(paths, poll_s: float = 0.05, check=None, usable=os.path.exists) -> None:
    """Wait until every path is ``usable`` (exists). Between polls ``check(missing)``
    gets the paths still missing; it may raise (their writer stopped) or return paths to
    stop waiting for."""
    missing = list(paths)
    while True:
        missing = [p for p in missing if not usable(p)]
        if not missing:
            return
        if check is not None:
            dropped = set(check(missing) or ())
            missing = [p for p in missing if p not in dropped]
        time.sleep(poll_s)


def _gather_parts(parts_dir, chunks, what, meta, rank, nproc, peers, resume) -> list:
    """Every chunk's results once each process has written its own: the processes of a
    ``jax.distributed`` run meet through the parts folder (no collective needed). A
    process that stops with its chunks missing (`_Peers.gone`) is an `InferenceError`
    naming it and the missing datasets, rather than a wait without end."""
    paths = [os.path.join(parts_dir, f"{real[0]:09d}.h5") for real, _ in chunks]
    owner = {p: i % nproc for i, p in enumerate(paths)}
    index = {p: real for p, (real, _) in zip(paths, chunks)}

    def usable(p):
        # without resume a chunk file counts once its writer has shown life in this run
        # (each process removes its own earlier files first)
        r = owner[p]
        return (resume or r == rank or peers.fresh(r)) and os.path.exists(p)

    def check(missing):
        ranks = sorted({owner[p] for p in missing} - {rank})
        peers.look(ranks)
        for r in ranks:
            reason = peers.gone(r)
            if reason is None:
                continue
            lost = [p for p in missing if owner[p] == r]
            datasets = np.concatenate([index[p] for p in lost]).tolist()
            shown = ", ".join(map(str, datasets[:10])) + (" ..." if len(datasets) > 10 else "")
            raise InferenceError(
                f"batched {what} over {nproc} processes: {reason}. Its chunks of datasets "
                f"[{shown}] ({len(lost)} chunk file(s), such as '{os.path.basename(lost[0])}') "
                f"are missing from '{parts_dir}'. The finished chunks stay there: rerun the "
                "same call with resume=True in every process to solve only the missing ones. "
                f"(A silent process is given up on after {PEER_TIMEOUT_ENV}="
                f"{peers.timeout:g} s.)"
            )

    _wait_for(paths, check=check, usable=usable)
    results = []
    for path, (real, _) in zip(paths, chunks):
        _check_same_run(path, what, meta)
        got = _read_results(path, what)
        if not np.array_equal(got["index"], real):
            raise StateFileError(
                f"'{path}' holds datasets {got['index'].tolist()}, expected {real.tolist()}."
            )
        results.append({**got, _FP: _read_attr(path, what, "inputs")})
    return results


def _wait_for_readers(parts_dir, nproc, peers, what) -> None:
    """Process 0 waits for the others to have read every part (their ``.read-{r}``
    markers) before it removes the parts; a process that stops meanwhile is not waited
    for (a warning names it: its own call ended without results)."""
    markers = {os.path.join(parts_dir, f".read-{r}"): r for r in range(1, nproc)}

    def check(missing):
        ranks = [markers[p] for p in missing]
        peers.look(ranks)
        gone = [(p, markers[p], peers.gone(markers[p])) for p in missing]
        gone = [(p, r, why) for p, r, why in gone if why is not None]
        for _, r, why in gone:
            warnings.warn(
                f"batched {what}: every result is written, but {why}; its own call ended "
                "without them (they are in the out= file).",
                CaskaxWarning,
                stacklevel=5,
            )
        return [p for p, _, _ in gone]

    _wait_for(list(markers), check=check)


_FP = "_fingerprint"  # a chunk's fingerprint beside its results, never written as one


def _fingerprint(arrays) -> str:
    """A BLAKE2 digest of arrays' dtypes, shapes and bytes (strings are taken as they
    are): what a resumed call compares with its files, so that results solved for other
    data are never returned for these."""
    h = hashlib.blake2b(digest_size=16)
    for a in arrays:
        if isinstance(a, str) or a is None:
            h.update(repr(a).encode())
            continue
        a = np.ascontiguousarray(np.asarray(a))
        h.update(f"{a.dtype.str}{a.shape}".encode())
        h.update(a.reshape(-1).view(np.uint8))
    return h.hexdigest()


def _chunk_fingerprint(G: "BatchedProgram", padded, inputs) -> str:
    """The fingerprint of one chunk: its datasets' own arrays (``G`` is the chunk, or
    the whole batch when the chunk is all of it) and their rows of ``inputs``."""
    own = [a for a, ax in zip(G.arrays, G.in_axes) if ax == 0]
    if len(G) != len(padded):
        own = [a[padded] for a in own]
    return _fingerprint(own + [None if x is None else np.asarray(x)[padded] for x in inputs])


def _read_attr(path: str, what: str, name: str):
    import h5py

    with h5py.File(path, "r") as h5:
        value = h5[what].attrs.get(name) if what in h5 else None
    return None if value is None else json.loads(value)


def _check_inputs(path: str, what: str, fp: str, datasets) -> None:
    """Refuse to resume from a file solved for other data or starts."""
    theirs = _read_attr(path, what, "inputs")
    if theirs != fp:
        shown = f"{int(datasets[0])}..{int(datasets[-1])}"
        raise StateFileError(
            f"'{path}' holds a batched {what} of datasets {shown} solved for other data or "
            "other starts than this call's (their arrays' fingerprints differ); resume=True "
            "continues the same call on the same data. Use another out path, or "
            "resume=False to start over."
        )


def _write_results(path: str, arrays: dict, what: str, meta) -> None:
    """One HDF5 file of result arrays (each with a leading dataset axis, ``index``
    holding the datasets' numbers), written beside ``path`` and renamed over it."""
    import h5py

    tmp = f"{path}.{os.getpid()}.tmp"
    try:
        with h5py.File(tmp, "w") as h5:
            group = h5.create_group(what)
            for k, v in arrays.items():
                group.create_dataset(k, data=np.asarray(v))
            group.attrs["format"] = f"caskax.batch.{what}/1"
            for k, v in (meta or {}).items():
                group.attrs[k] = json.dumps(v)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def _check_same_run(path: str, what: str, meta: dict) -> None:
    """Refuse to resume from a file written by a call with other settings."""
    import h5py

    with h5py.File(path, "r") as h5:
        attrs = dict(h5[what].attrs) if what in h5 else {}
    theirs = {k: json.loads(attrs[k]) if k in attrs else None for k in meta}
    ours = json.loads(json.dumps(meta))
    if theirs != ours:
        diff = [k for k in ours if theirs.get(k) != ours[k]]
        if diff == ["shared"]:
            raise StateFileError(
                f"'{path}' was written by a batched {what} whose arrays shared by every "
                "dataset (the model's fixed arrays, or a given mass matrix) differ from this "
                "call's (their fingerprints differ); resume=True continues the same call. "
                "Use another out path, or resume=False to start over."
            )
        raise StateFileError(
            f"'{path}' was written by a batched {what} with other settings ({', '.join(diff)}: "
            f"{[theirs.get(k) for k in diff]} there, {[ours[k] for k in diff]} now); resume=True "
            "continues the same call. Use another out path, or resume=False to start over."
        )


def _read_results(path: str, what: str) -> dict:
    import h5py

    with h5py.File(path, "r") as h5:
        if what not in h5:
            raise GraphError(f"'{path}' holds no batched {what} results (no '{what}' group).")
        return {k: v[()] for k, v in h5[what].items()}


def read_results(path) -> dict:
    """The arrays a batched ``cx.fit``, ``cx.laplace`` or ``cx.nuts`` call wrote with
    ``out=path``: ``{"index": dataset numbers, field: array with a leading dataset
    axis, ...}``, plus ``"kind"`` (``"fit"``, ``"laplace"`` or ``"nuts"``).

    Example:
        >>> import os, tempfile, caskax as cx, jax.numpy as jnp
        >>> from caskax.examples import Gaussian1D
        >>> f = cx.compile(Gaussian1D("lc", t0=0.5, sigma=1.0, peak_flux=1.0).to_dynamic("t0"), "flux", 0.0)
        >>> F = cx.batch(f, sigma=jnp.array([1.0, 2.0, 4.0]))
        >>> path = os.path.join(tempfile.mkdtemp(), "fits.h5")
        >>> res = cx.fit(F, batch_size=2, out=path)
        >>> saved = cx.batch_results(path)
        >>> saved["kind"], saved["index"].tolist(), saved["x"].shape
        ('fit', [0, 1, 2], (3, 1))
    """
    import h5py

    path = os.fspath(path)
    with h5py.File(path, "r") as h5:
        kinds = [k for k in ("fit", "laplace", "nuts") if k in h5]
    if not kinds:
        raise GraphError(
            f"'{path}' holds no batched results (no 'fit', 'laplace' or 'nuts' group)."
        )
    out = _read_results(path, kinds[0])
    out["kind"] = kinds[0]
    return out
