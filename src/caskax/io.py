"""State files: a model's params in HDF5, in caskade's layout.

A file written by caskade's ``save_state`` loads into the matching caskax model, and a
caskax file loads into caskade. The layout (checked against caskade 1.1.5):

- the root group is named after the root module;
- below a node, one group per child, keyed as caskade keys it: a field by its attribute
  name; a list/tuple field is a group named after the field holding one group per
  member, keyed by the member's *name*; a dict field holds one group per key; the
  inputs of a pointer param are children of the pointer's group, keyed by their names;
- a node reachable along several paths (a shared galaxy, a pointer's target) is written
  once; every other path to it is an HDF5 hard link to the same group;
- each param group holds a dataset ``value`` (the string ``"None"`` when the param has
  no value, or a pointer's value cannot be computed yet; a pointer stores its computed
  value). Its attrs: ``node_type`` (``"static"``, ``"dynamic"`` or ``"pointer"``; a live
  param is ``"static"``), ``appendable`` and ``cyclic`` (bools), ``units`` (the string
  ``"None"`` when unset), and ``valid_left`` / ``valid_right`` (float64, only when set);
- an appendable file has a leading sample axis on every numeric ``value`` (chunked,
  gzip, unlimited first axis), grown by one per `append_state`.

Files are replaced atomically: `save_state` and `append_state` write a temporary file
in the same folder and rename it over ``path``, so a process killed at any moment
leaves either the old file or the new one, never a half-written file.
"""

import os
import shutil
import uuid

import h5py
import jax
import jax.numpy as jnp
import numpy as np

from . import graph
from .errors import CaskaxError, GraphError, ShapeError, StateFileError
from .param import Param, _normalise_valid

__all__ = ["save_state", "append_state", "load_state", "count_samples"]


# -- public API ----------------------------------------------------------------------------
def save_state(module, path, appendable: bool = False) -> None:
    """Write every param of ``module`` to the HDF5 file ``path`` (replaced if it exists).

    **Arguments:**

    - `module`: the root `caskax.Module`; its name is the file's root group.
    - `path`: where to write (any extension; caskade itself expects ``.h5``/``.hdf5``).
    - `appendable`: give each value a leading sample axis so `append_state` can add
      samples later.

    Example:
        >>> import os, tempfile
        >>> import caskax as cx
        >>> from caskax.examples.models import Gaussian1D
        >>> lc = Gaussian1D("lc", t0=-3.0, sigma=2.0, peak_flux=0.25).to_dynamic("t0")
        >>> path = os.path.join(tempfile.mkdtemp(), "lc.h5")
        >>> cx.io.save_state(lc, path)
        >>> import h5py
        >>> with h5py.File(path) as f:
        ...     print(float(f["lc/t0/value"][()]), f["lc/t0/value"].attrs["node_type"])
        -3.0 dynamic
    """
    path = os.fspath(path)
    values = _state_values(module)
    _module_layout(module)  # refuses bad names and key collisions before writing
    tmp = _tmp_name(path)
    try:
        with h5py.File(tmp, "w-") as f:
            _write_tree(f, module, values, bool(appendable))
        os.replace(tmp, path)
    except BaseException:
        _remove(tmp)
        raise


def append_state(module, path) -> None:
    """Append the current param values of ``module`` as one more sample to ``path``, a
    file written by ``save_state(..., appendable=True)`` (by caskax or caskade).

    The file must match the model's structure and shapes; nothing is written otherwise.
    The new file replaces the old one atomically (copy, append, flush, rename), so a
    process killed during an append leaves every earlier sample readable.

    Example:
        >>> import os, tempfile
        >>> import caskax as cx
        >>> from caskax.examples.models import Gaussian1D
        >>> lc = Gaussian1D("lc", t0=-3.0, sigma=2.0, peak_flux=0.25)
        >>> path = os.path.join(tempfile.mkdtemp(), "chain.h5")
        >>> cx.io.save_state(lc, path, appendable=True)
        >>> cx.io.append_state(lc.set(t0=-2.0), path)
        >>> cx.io.count_samples(path)
        2
        >>> float(cx.io.load_state(lc, path, index=0).t0.value)
        -3.0
    """
    path = os.fspath(path)
    _check_is_hdf5(path)
    values = _state_values(module)
    tmp = _tmp_name(path)
    try:
        shutil.copyfile(path, tmp)
        shutil.copymode(path, tmp)
        with h5py.File(tmp, "r+") as f:
            root = _root_group(f, module, path)
            layout = _check_structure(root, module, path)
            plan = []
            for where, p in _unique_params(layout):
                ds = root[where]["value"]
                plan.append(_plan_append(ds, p, values[p.uid], f"{module.name}/{where}", path))
            for ds, value in plan:
                if value is not None:
                    ds.resize((ds.shape[0] + 1,) + ds.shape[1:])
                    ds[-1] = value
            f.flush()
        with open(tmp, "rb+") as fh:
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        _remove(tmp)
        raise


def load_state(module, path, index: int = -1):
    """A copy of ``module`` holding the state stored in ``path``; ``module`` is untouched.

    As in caskade, each param takes the file's value, kind (static/dynamic; a param
    that is a pointer in the model stays one), units, valid range and cyclic flag. For
    an appendable file, ``index`` picks the sample (default: the last). A node shared
    in the model is read once and stays one node.

    Example:
        >>> import os, tempfile
        >>> import caskax as cx
        >>> from caskax.examples.models import Gaussian1D
        >>> lc = Gaussian1D("lc", t0=-3.0, sigma=2.0, peak_flux=0.25)
        >>> path = os.path.join(tempfile.mkdtemp(), "lc.h5")
        >>> cx.io.save_state(lc.set(sigma=1.5).to_dynamic("sigma"), path)
        >>> new = cx.io.load_state(lc, path)
        >>> float(new.sigma.value), new.sigma.kind, float(lc.sigma.value)
        (1.5, 'dynamic', 2.0)
    """
    path = os.fspath(path)
    _check_is_hdf5(path)
    try:
        index = int(index)
    except (TypeError, ValueError):
        raise StateFileError(f"load_state: index must be an integer, got {index!r}.") from None
    with h5py.File(path, "r") as f:
        root = _root_group(f, module, path)
        layout = _check_structure(root, module, path)
        changes = {}
        for where, p in _unique_params(layout):
            changes[p.uid] = _loaded_changes(
                root[where]["value"], p, index, f"{module.name}/{where}", path
            )
    return _apply(module, changes)


def _apply(root, changes: dict):
    """Rebuild ``root`` bottom-up, applying ``changes[uid]`` (field updates) to every copy
    of each node after its children are rebuilt, so that a pointer's inputs are the
    updated nodes too and every copy of a shared node ends up in the same state."""
    memo = {}

    def rebuild(node):
        if id(node) not in memo:
            new = graph.rebuild_children(node, rebuild)
            if node.uid in changes:
                new = graph.copy_with(new, **changes[node.uid])
            memo[id(node)] = new
        return memo[id(node)]

    return rebuild(root)


def count_samples(path) -> int:
    """The number of samples in an appendable state file (1 for a plain one).

    Example:
        >>> count_samples("no-such-file.h5")  # doctest: +IGNORE_EXCEPTION_DETAIL
        Traceback (most recent call last):
        StateFileError: ...
    """
    path = os.fspath(path)
    _check_is_hdf5(path)
    counts = []
    with h5py.File(path, "r") as f:

        def visit(name, obj):
            if isinstance(obj, h5py.Dataset) and name.endswith("value") and not _is_string(obj):
                counts.append(obj.shape[0] if obj.attrs.get("appendable", False) else 1)

        f.visititems(visit)
    return min(counts) if counts else 0


# -- values ----------------------------------------------------------------------------------
def _state_values(module) -> dict:
    """uid -> numpy value (or None) for every param below ``module``; a pointer holds
    its computed value, or None when it cannot be computed yet (caskade does the same)."""
    w = graph.walk(module)
    try:
        filled = graph.walk(graph.fill(module, {}, w)).nodes
    except Exception:
        filled = None
    out = {}
    for uid, node in w.nodes.items():
        if not isinstance(node, Param):
            continue
        if node.pointer:
            if filled is not None:
                value = filled[uid].value
            else:
                try:
                    value = graph.fill(node, {}).value
                except Exception:
                    value = None
        else:
            value = node.value
        if isinstance(value, jax.core.Tracer):
            raise CaskaxError(
                f"param '{w.paths[uid] or node.name}' holds a traced value: state files "
                "are written outside jit/vmap/grad, from concrete values."
            )
        out[uid] = None if value is None else np.asarray(value)
    return out


def _node_type(p: Param) -> str:
    return "static" if p.kind == "live" else p.node_kind


# -- writing ---------------------------------------------------------------------------------
def _write_tree(f, module, values, appendable):
    root = f.create_group(module.name)
    written = {module.uid: root}

    def visit(node, group):
        for child in graph.children(node):
            parent = group
            for k in child.key[:-1]:
                parent = parent.require_group(k)
            key, c = child.key[-1], child.node
            if key in parent:
                continue  # the same node linked twice here (collisions were checked)
            if c.uid in written:
                parent[key] = written[c.uid]  # hard link: a shared node is written once
                continue
            g = parent.create_group(key)
            written[c.uid] = g
            if isinstance(c, Param):
                _write_value(g, c, values[c.uid], appendable)
            visit(c, g)

    visit(module, root)


def _write_value(group, p: Param, value, appendable):
    if value is None:
        ds = group.create_dataset("value", data="None")
    elif appendable:
        ds = group.create_dataset(
            "value",
            data=value[None],
            chunks=True,
            maxshape=(None,) + value.shape,
            compression="gzip",
        )
    else:
        ds = group.create_dataset("value", data=value)
    ds.attrs["node_type"] = _node_type(p)
    ds.attrs["appendable"] = appendable
    ds.attrs["cyclic"] = p.cyclic
    if p.valid is not None and p.valid[0] is not None:
        ds.attrs["valid_left"] = np.float64(p.valid[0])
    if p.valid is not None and p.valid[1] is not None:
        ds.attrs["valid_right"] = np.float64(p.valid[1])
    ds.attrs["units"] = p.units if p.units is not None else "None"


def _tmp_name(path: str) -> str:
    folder, base = os.path.split(os.path.abspath(path))
    return os.path.join(folder, f".{base}.{uuid.uuid4().hex[:12]}.tmp")


def _remove(tmp):
    try:
        os.remove(tmp)
    except FileNotFoundError:
        pass


# -- structure -------------------------------------------------------------------------------
def _module_layout(module) -> dict:
    """path (relative to the root group) -> node or None (an intermediate group such as a
    list field), along every path through the tree, in visiting order."""
    out: dict = {}
    if "/" in module.name or module.name in ("", ".", ".."):
        raise GraphError(
            f"cannot name an HDF5 root group {module.name!r}: rename the root module."
        )

    def visit(node, prefix):
        for child in graph.children(node):
            for k in child.key:
                if "/" in k or k in ("", ".", ".."):
                    raise GraphError(
                        f"cannot store child key {k!r} under '{module.name}/{prefix}': "
                        "HDF5 names cannot contain '/' or be empty. Rename the node."
                    )
            for i in range(1, len(child.key)):
                out.setdefault(prefix + "/".join(child.key[:i]), None)
            where = prefix + "/".join(child.key)
            old = out.get(where)
            if where in out and (old is None or old.uid != child.node.uid):
                raise GraphError(
                    f"two children of '{node.name}' are both stored as "
                    f"'{module.name}/{where}' (caskade keys list members by their names). "
                    "Give them distinct names."
                )
            if where in out:
                continue
            out[where] = child.node
            visit(child.node, where + "/")

    visit(module, "")
    return out


def _file_layout(group) -> dict:
    """path -> True (a param group, holding ``value``) or False (another group), along
    every path (hard links followed), in sorted order."""
    out: dict = {}

    def visit(g, prefix, ancestors):
        for key in g:
            obj = g[key]
            if not isinstance(obj, h5py.Group):
                continue
            where = prefix + key
            out[where] = isinstance(obj.get("value"), h5py.Dataset)
            if obj.id in ancestors:
                continue  # a hard-link cycle (never written by caskade or caskax)
            visit(obj, where + "/", ancestors | {obj.id})

    visit(group, "", {group.id})
    return out


def _check_structure(root, module, path) -> dict:
    layout = _module_layout(module)
    in_file = _file_layout(root)
    missing = [p for p in layout if p not in in_file]
    extra = [p for p in in_file if p not in layout]
    name = module.name
    if missing or extra:
        parts = []
        if missing:
            parts.append(f"{len(missing)} missing from the file, first '{name}/{missing[0]}'")
        if extra:
            parts.append(f"{len(extra)} in the file but not in the model, first '{name}/{extra[0]}'")
        raise GraphError(
            f"'{path}' does not match the structure of '{name}': " + "; ".join(parts) + ". "
            "Files are keyed as caskade keys children (field names, list members by name, "
            "pointer inputs under the pointer); was it written for a different model?"
        )
    for where, node in layout.items():
        is_param = isinstance(node, Param)
        if is_param != in_file[where]:
            what = "a param" if is_param else "a module or group"
            raise GraphError(
                f"'{path}': '{name}/{where}' is {what} in the model but "
                f"{'not ' if is_param else ''}a param group (with a 'value' dataset) in the file."
            )
    return layout


def _unique_params(layout):
    seen = set()
    for where, node in layout.items():
        if isinstance(node, Param) and node.uid not in seen:
            seen.add(node.uid)
            yield where, node


def _check_is_hdf5(path):
    if not os.path.exists(path):
        raise StateFileError(f"no such file: '{path}'. Write one first with save_state(path).")
    if os.path.isdir(path) or not h5py.is_hdf5(path):
        raise StateFileError(f"'{path}' is not an HDF5 file (state files are written by save_state).")


def _root_group(f, module, path):
    obj = f.get(module.name)
    if not isinstance(obj, h5py.Group):
        found = ", ".join(repr(k) for k in f.keys()) or "none"
        raise StateFileError(
            f"'{path}' has no root group '{module.name}' (root groups found: {found}). "
            "The root group is named after the root module: rename the module to match."
        )
    return obj


def _is_string(ds) -> bool:
    return ds.dtype.kind in "OSU"


def _expected_shape(p: Param):
    return None if p.value is None else tuple(p.value.shape)


def _shape_ok(p: Param, shape: tuple) -> bool:
    current = _expected_shape(p)
    declared = p.shape
    if current is None:
        if declared is None:
            return True
        n = len(declared)
        return len(shape) >= n and all(
            d is None or d == s for d, s in zip(declared, shape[len(shape) - n :])
        )
    if len(shape) != len(current):
        return False
    wild = [False] * len(current)
    if declared is not None:
        for i, d in enumerate(declared):
            wild[len(current) - len(declared) + i] = d is None
    return all(w or a == b for w, a, b in zip(wild, shape, current))


# -- appending -------------------------------------------------------------------------------
def _plan_append(ds, p: Param, value, where, path):
    if not bool(ds.attrs.get("appendable", False)):
        raise StateFileError(
            f"'{path}' is not appendable ('{where}/value' has no sample axis). Write it "
            "with save_state(path, appendable=True) first."
        )
    if _is_string(ds):
        if value is not None:
            raise StateFileError(
                f"'{path}': '{where}' had no value when the file was written, so it has no "
                "sample axis to append to. Start a new file with save_state(path, appendable=True)."
            )
        return ds, None
    if value is None:
        raise StateFileError(
            f"'{path}': '{where}' ({p.kind}) has no value to append, but the file holds "
            f"samples of it. Give it a value (set / set_values) before append_state."
        )
    if tuple(value.shape) != tuple(ds.shape[1:]):
        raise ShapeError(
            f"'{path}': '{where}' has shape {tuple(value.shape)} but the file stores samples "
            f"of shape {tuple(ds.shape[1:])}."
        )
    return ds, value


# -- loading ---------------------------------------------------------------------------------
def _read_value(ds, index, where, path):
    if _is_string(ds):
        raw = ds[()]
        text = raw.decode() if isinstance(raw, bytes) else str(raw)
        if text != "None":
            raise StateFileError(f"'{path}': '{where}/value' holds the string {text!r}, not a value.")
        return None
    if bool(ds.attrs.get("appendable", False)):
        n = ds.shape[0]
        if not -n <= index < n:
            raise StateFileError(
                f"'{path}': sample index {index} is out of range for '{where}', which holds "
                f"{n} sample(s) (valid: {-n} to {n - 1})."
            )
        return np.asarray(ds[index])
    return np.asarray(ds[()])


def _attr_str(ds, key, default):
    v = ds.attrs.get(key, default)
    return v.decode() if isinstance(v, bytes) else str(v)


def _loaded_changes(ds, p: Param, index, where, path) -> dict:
    """The field changes that give ``p`` the state stored in ``ds``."""
    value = _read_value(ds, index, where, path)
    if value is not None and not _shape_ok(p, tuple(value.shape)):
        want = _expected_shape(p) or p.shape
        raise ShapeError(
            f"'{path}': '{where}' holds a value of shape {tuple(value.shape)}, but the "
            f"param expects shape {want}."
        )
    node_type = _attr_str(ds, "node_type", "")
    units = _attr_str(ds, "units", "None")
    left = ds.attrs.get("valid_left", None)
    right = ds.attrs.get("valid_right", None)
    valid = None
    if left is not None or right is not None:
        valid = (None if left is None else float(left), None if right is None else float(right))
    cyclic = bool(ds.attrs.get("cyclic", False))
    valid = _normalise_valid(p.name, valid, cyclic)
    changes = dict(units=None if units == "None" else units, valid=valid, cyclic=cyclic)
    if not p.pointer:
        kind = "static" if "static" in node_type else "dynamic" if "dynamic" in node_type else None
        if kind is not None:  # a pointer in the file: caskade keeps the model's value
            changes.update(node_kind=kind, link=None, value=_as_array(value, p))
    return changes


def _as_array(value, p: Param):
    if value is None:
        return None
    if p.value is not None:
        dtype = p.value.dtype
    elif p.dtype is not None:
        dtype = p.dtype
    else:
        dtype = jnp.zeros(()).dtype
    if not jnp.issubdtype(dtype, jnp.inexact):
        dtype = jnp.zeros(()).dtype
    return jnp.asarray(value.astype(dtype, copy=False))
