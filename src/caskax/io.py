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
  unlimited first axis), grown by one per `append_state`, and an int64 attr
  ``caskax_pending`` on the file's root ``/`` (-1, or the index of a sample being
  appended; caskade ignores it).

Guarantees:

- **Locking.** Every reader and writer of ``path`` takes a lock on a sidecar file
  ``path + ".lock"`` (``flock``: shared to read, exclusive to write), so concurrent
  appenders in several processes or threads take turns and no sample is lost; a call
  that cannot get the lock within 60 s raises `StateFileError`. The sidecar is removed
  by whoever releases it last (one left by a killed process is reused, then removed).
  HDF5's own file lock is honoured too: while another program (caskade, h5py) holds
  ``path`` open for writing, caskax waits for it, then gives up with `StateFileError`.
  The sidecar lock needs ``fcntl`` (Linux, macOS); elsewhere only HDF5's lock applies.
- **Crash safety.** `save_state` and `Chains.save` write a hidden temporary file in the
  same folder and rename it over ``path``: a process killed at any moment leaves the old
  file or the new one. `append_state` writes in place in three flushed steps: mark the
  sample pending (``caskax_pending``), grow every dataset and write the new row into
  space past the committed samples, then clear the mark. Bytes holding committed samples
  are never rewritten, and readers (`load_state`, `count_samples`) ignore the rows of a
  pending sample, so a process killed (SIGKILL included) at any moment leaves every
  sample appended before it readable; the next append overwrites the half-written row.
  This covers the death of a process, not of the machine: nothing is ``fsync``-ed.
  HDF5 orders its own writes when an append adds a chunk and a node of its chunk index
  splits (once per several tens of chunks); a kill inside that one flush is not covered.
- **Orphans.** Temporary files of a killed `save_state` (``.NAME.*.tmp`` beside
  ``path``) are removed by the next caskax call that opens ``path``.
- **Append cost.** An append writes one row per param and a few bytes of metadata, so
  its time does not grow with the file (``benchmarks/state_append.py``: about 3 ms for
  a model of four params, the same at 4 MiB as at 38 MiB). A file written by
  caskade (gzip-compressed) is rewritten once, atomically, by its first caskax append.
- **Disk full.** An append or save first checks that the folder has room for what it
  writes; when it has not, or a write fails anyway, it raises `StateFileError` and the
  file keeps every earlier sample.
- **Errors.** Every problem with a file (missing, not HDF5, truncated, structures that
  HDF5 reports as damaged, no group for the model, a ``value`` without a known ``node_type``, a sample index that is
  not an integer or is out of range) is a `StateFileError` naming the path.
"""

import contextlib
import errno
import glob
import operator
import os
import random
import shutil
import time
import uuid
import warnings

import h5py
import jax
import jax.numpy as jnp
import numpy as np

from . import graph
from .errors import CaskaxError, CaskaxWarning, GraphError, ShapeError, StateFileError
from .param import Param, _check_valid, _normalise_valid

try:
    import fcntl
except ImportError:  # not POSIX: HDF5's own file lock is the only one
    fcntl = None

__all__ = ["save_state", "append_state", "load_state", "count_samples"]

_PENDING = "caskax_pending"  # root attr: -1, or the index of the sample being appended
_LOCK_TIMEOUT_S = 60.0
_CHUNK_BYTES = 8192  # bytes per chunk of an appendable dataset (rows of one param)
_MIN_CHUNK_ROWS = 32
_META_BYTES = 1 << 16  # headroom for HDF5 metadata in the free-space checks
_NODE_TYPES = ("static", "dynamic", "pointer")


# -- public API ----------------------------------------------------------------------------
def save_state(module, path, appendable: bool = False) -> None:
    """Write every param of ``module`` to the HDF5 file ``path`` (replaced if it exists).

    **Arguments:**

    - `module`: the root `caskax.Module`; its name is the file's root group.
    - `path`: where to write (any extension; caskade itself expects ``.h5``/``.hdf5``).
    - `appendable`: give each value a leading sample axis so `append_state` can add
      samples later.

    The file is written beside ``path`` and renamed over it, under the file's lock (see
    the module notes): a crash leaves the old file or the new one.

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
    appendable = bool(appendable)
    values = _state_values(module)
    _module_layout(module)  # refuses bad names and key collisions before writing
    if isinstance(path, h5py.Group):  # an open h5py.File or Group, as caskade takes
        with _h5_errors(_where(path), "save_state"):
            if module.name in path:
                del path[module.name]
            _write_tree(path, module, values, appendable)
            if appendable:
                path.attrs.create(_PENDING, np.int64(-1))
        return
    path = os.fspath(path)
    need = sum(
        _chunk_nbytes(v) if appendable else v.nbytes for v in values.values() if v is not None
    )

    def write(f):
        _write_tree(f, module, values, appendable)
        if appendable:
            f.attrs.create(_PENDING, np.int64(-1))

    _replace_file(path, write, need)


def append_state(module, path) -> None:
    """Append the current param values of ``module`` as one more sample to ``path``, a
    file written by ``save_state(..., appendable=True)`` (by caskax or caskade).

    The file must match the model's structure and shapes; nothing is written otherwise.
    The sample is written in place (its time does not grow with the file) and committed
    last, so a process killed during an append leaves every earlier sample readable;
    appends from several processes take turns on the file's lock (see the module notes).

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
    values = _state_values(module)
    if isinstance(path, h5py.Group):  # an open h5py.File or Group: the caller's lock
        where = _where(path)
        with _h5_errors(where, "append_state"):
            plan, n, ready = _plan_appends(path, module, values, where)
            if not ready:
                raise StateFileError(
                    f"'{where}' holds compressed (caskade) datasets, which caskax appends "
                    "to by rewriting the file once: pass the file's path instead."
                )
            _append_in_place(path, plan, n, where)
        return
    path = os.fspath(path)
    with _locked(path, exclusive=True):
        _check_is_hdf5(path)
        _remove_orphans(path)
        with _h5_errors(path, "append_state"):
            with _open(path, "r+") as f:
                plan, n, ready = _plan_appends(f, module, values, path)
                if ready:
                    _append_in_place(f, plan, n, path)
            if not ready:
                # gzip chunks move when rewritten, which could clobber committed rows
                # under a crash: convert once to the in-place layout, then append.
                _convert(path, n)
                with _open(path, "r+") as f:
                    plan, n, _ = _plan_appends(f, module, values, path)
                    _append_in_place(f, plan, n, path)


def load_state(module, path, index: int = -1):
    """A copy of ``module`` holding the state stored in ``path``; ``module`` is untouched.

    As in caskade, each param takes the file's value, kind (static/dynamic; a param
    that is a pointer in the model stays one), units, valid range and cyclic flag. For
    an appendable file, ``index`` picks the sample (default: the last; an integer from
    ``-count_samples(path)`` to ``count_samples(path) - 1``); a plain file holds one
    sample (``index`` 0 or -1). A node shared in the model is read once and stays one
    node.

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
    if isinstance(path, h5py.Group):  # an open h5py.File or Group
        where = _where(path)
        index = _check_index(index, where)
        with _h5_errors(where, "load_state"):
            return _load_from(path, module, index, where)
    path = os.fspath(path)
    index = _check_index(index, path)
    with _reading(path, "load_state") as f:
        return _load_from(f, module, index, path)


def _where(group) -> str:
    return f"{group.file.filename}:{group.name}"


def _load_from(f, module, index, path):
    root = _root_group(f, module, path)
    layout = _check_structure(root, module, path)
    n, appendable = _sample_count(f, path)
    row = _resolve_index(index, n, appendable, path)
    changes = {}
    for where, p in _unique_params(layout):
        changes[p.uid] = _loaded_changes(
            root[where]["value"], p, row, f"{module.name}/{where}", path
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
    """The number of committed samples in an appendable state file (1 for a plain one).

    Example:
        >>> count_samples("no-such-file.h5")  # doctest: +IGNORE_EXCEPTION_DETAIL
        Traceback (most recent call last):
        StateFileError: ...
    """
    path = os.fspath(path)
    with _reading(path, "count_samples") as f:
        return _sample_count(f, path)[0]


# -- locking, temporary files, errors ----------------------------------------------------------
def _lock_name(path: str) -> str:
    return os.path.realpath(path) + ".lock"


@contextlib.contextmanager
def _locked(path: str, exclusive: bool):
    """Hold the sidecar lock of ``path`` (exclusive to write, shared to read).

    The sidecar is unlinked on release when nobody else holds it, so none is left
    beside the file; a waiter that locked a sidecar unlinked meanwhile sees a different
    inode at the name and tries again."""
    if fcntl is None:
        yield
        return
    lock = _lock_name(path)
    deadline = time.monotonic() + _LOCK_TIMEOUT_S
    delay = 0.0005
    while True:
        try:
            fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o666)
        except OSError as err:
            if not exclusive and err.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
                yield  # a read-only folder: readers rely on HDF5's own lock
                return
            raise StateFileError(
                f"cannot create the lock file '{lock}' for '{path}': {err.strerror}. "
                "caskax writes it beside the state file; make the folder writable."
            ) from None
        try:
            fcntl.flock(fd, (fcntl.LOCK_EX if exclusive else fcntl.LOCK_SH) | fcntl.LOCK_NB)
        except OSError as err:
            os.close(fd)
            if err.errno not in (errno.EAGAIN, errno.EACCES):
                raise StateFileError(
                    f"cannot lock '{lock}' for '{path}': {err.strerror}."
                ) from None
            if time.monotonic() > deadline:
                raise StateFileError(
                    f"'{path}' stayed locked by another process for {_LOCK_TIMEOUT_S:g} s "
                    f"(lock file '{lock}'); wait for it to finish and try again."
                ) from None
            time.sleep(delay * (0.5 + random.random()))  # jitter: waiters do not march in step
            delay = min(2 * delay, 0.02)
            continue
        try:
            same = os.path.samestat(os.stat(lock), os.fstat(fd))
        except FileNotFoundError:
            same = False
        if same:
            break
        os.close(fd)
    try:
        yield
    finally:
        try:
            if not exclusive:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)  # fails while other readers hold it
            os.unlink(lock)
        except OSError:
            pass
        os.close(fd)


@contextlib.contextmanager
def _h5_errors(path: str, doing: str):
    """Report what HDF5 (or the OS under it) refuses as a `StateFileError` naming the
    path; caskax's own errors pass through."""
    try:
        yield
    except CaskaxError:
        raise
    except (OSError, KeyError, RuntimeError, ValueError, TypeError) as err:
        if isinstance(err, OSError) and err.errno == errno.ENOSPC:
            raise StateFileError(f"{doing}: the disk holding '{path}' is full ({err}).") from err
        raise StateFileError(
            f"{doing}: '{path}' is not a readable caskax/caskade state file "
            f"(truncated, corrupt or of another layout): {err}"
        ) from err


@contextlib.contextmanager
def _open(path: str, mode: str):
    """``h5py.File`` that waits, like the sidecar lock, while another program holds the
    file open for writing (HDF5's own lock), and opens without a raw-data chunk cache so
    that a write touches only the rows it writes."""
    deadline = time.monotonic() + _LOCK_TIMEOUT_S
    while True:
        try:
            f = h5py.File(path, mode, rdcc_nbytes=0)
            break
        except BlockingIOError:
            if time.monotonic() > deadline:
                raise StateFileError(
                    f"'{path}' stayed open for writing in another program for "
                    f"{_LOCK_TIMEOUT_S:g} s (HDF5 file lock); close it there and try again."
                ) from None
            time.sleep(0.01)
    try:
        yield f
    except BaseException:
        # HDF5 retries the failed write when closing; the first error is the one to report.
        try:
            f.close()
        except Exception:
            pass
        raise
    f.close()


@contextlib.contextmanager
def _reading(path: str, doing: str):
    """The state file at ``path`` open for reading, under its shared lock, with HDF5's
    errors reported as `StateFileError`."""
    with _locked(path, exclusive=False):
        _check_is_hdf5(path)
        _remove_orphans(path)
        with _h5_errors(path, doing), _open(path, "r") as f:
            yield f


def _replace_file(path: str, write, need: int) -> None:
    """Write a new file with ``write(h5file)`` beside ``path`` and rename it over ``path``,
    under the exclusive lock, after checking there is room for ``need`` bytes."""
    with _locked(path, exclusive=True):
        _remove_orphans(path)
        _check_space(path, need, "save")
        tmp = _tmp_name(path)
        try:
            with _h5_errors(path, "save"):
                with h5py.File(tmp, "w-") as f:
                    write(f)
                os.replace(tmp, path)
        except BaseException:
            _remove(tmp)
            raise


def _tmp_name(path: str) -> str:
    folder, base = os.path.split(os.path.abspath(path))
    return os.path.join(folder, f".{base}.{uuid.uuid4().hex[:12]}.tmp")


def _remove_orphans(path: str) -> None:
    """Remove temporary files left beside ``path`` by killed writers. Called under the
    lock: every live caskax writer of ``path`` holds it while its temporary file exists."""
    folder, base = os.path.split(os.path.abspath(path))
    for tmp in glob.glob(os.path.join(glob.escape(folder), f".{glob.escape(base)}.*.tmp")):
        try:
            os.remove(tmp)
        except OSError:
            pass  # a read-only folder: left for a writer to clean


def _remove(tmp):
    try:
        os.remove(tmp)
    except FileNotFoundError:
        pass


def _check_space(path: str, need: int, doing: str) -> None:
    folder = os.path.dirname(os.path.abspath(path))
    need = int(need) + _META_BYTES
    try:
        free = shutil.disk_usage(folder).free
    except OSError:
        return  # no such folder yet: the write itself reports it
    if free < need:
        raise StateFileError(
            f"{doing}: not enough free disk space for '{path}' ({free} bytes free, about "
            f"{need} needed); the file is unchanged. Free some space and try again."
        )


def _check_index(index, path):
    if isinstance(index, (bool, np.bool_)):
        index = None
    try:
        return operator.index(index)
    except TypeError:
        raise StateFileError(
            f"'{path}': the sample index must be an integer, got {index!r}."
        ) from None


# -- samples -----------------------------------------------------------------------------------
def _numeric_values(f):
    """Every numeric ``value`` dataset in the file (each hard-linked one once)."""
    out, seen = [], set()

    def visit(name, obj):
        if (
            isinstance(obj, h5py.Dataset)
            and name.rsplit("/", 1)[-1] == "value"
            and not _is_string(obj)
            and obj.id not in seen
        ):
            seen.add(obj.id)
            out.append(obj)

    f.visititems(visit)
    return out


def _sample_count(f, path):
    """(committed samples, appendable?) of an open file: the shortest sample axis, less
    the rows of a pending (unfinished) append."""
    data = [ds for ds in _numeric_values(f) if bool(ds.attrs.get("appendable", False))]
    if not data:
        return 1, False
    n = min(ds.shape[0] if ds.ndim else 0 for ds in data)
    pending = int(f.attrs.get(_PENDING, -1))
    if pending >= 0:
        n = min(n, pending)
    return n, True


def _resolve_index(index: int, n: int, appendable: bool, path: str) -> int:
    if not -n <= index < n:
        if not appendable:
            raise StateFileError(
                f"'{path}' is not appendable and holds one sample: index must be 0 or -1, "
                f"got {index}."
            )
        raise StateFileError(
            f"'{path}': sample index {index} is out of range; the file holds {n} "
            f"sample(s) (valid: {-n} to {n - 1})."
        )
    return index % n


# -- appending in place ------------------------------------------------------------------------
def _chunk_rows(row_nbytes: int) -> int:
    # At least _MIN_CHUNK_ROWS rows, so that big params do not make a chunk (and an
    # entry in HDF5's chunk index) per sample.
    return max(_MIN_CHUNK_ROWS, _CHUNK_BYTES // max(int(row_nbytes), 1))


def _chunk_nbytes(value) -> int:
    return _chunk_rows(value.nbytes) * value.nbytes


def _plan_appends(f, module, values, path):
    """[(dataset, value or None)] for every param, after checking the file against the
    model; the number of committed samples; and whether the file takes appends in place
    (it has the pending mark, and every sample axis is in unfiltered chunks, which
    never move when written)."""
    root = _root_group(f, module, path)
    layout = _check_structure(root, module, path)
    plan = []
    for where, p in _unique_params(layout):
        ds = root[where]["value"]
        plan.append(_plan_append(ds, p, values[p.uid], f"{module.name}/{where}", path))
    data = [ds for ds, value in plan if value is not None]
    n = min((ds.shape[0] for ds in data), default=1)
    pending = int(f.attrs.get(_PENDING, -1))
    if pending >= 0:
        n = min(n, pending)
    ready = _PENDING in f.attrs and all(
        ds.chunks is not None
        and ds.maxshape[0] is None
        and not ds.id.get_create_plist().get_nfilters()
        for ds in data
    )
    return plan, n, ready


def _append_in_place(f, plan, n: int, path: str) -> None:
    """Write sample ``n`` and commit it (rows past it are an unfinished append's, and
    are overwritten)."""
    rows = [(ds, value) for ds, value in plan if value is not None]
    grow = sum(ds.chunks[0] * value.nbytes for ds, value in rows if not _row_allocated(ds, n))
    _check_space(path, grow, "append_state")
    try:
        f.attrs.modify(_PENDING, np.int64(n))
        f.flush()
        if grow:
            # HDF5 writes the superblock's new end-of-file before it extends the file, and
            # a file shorter than that is refused as truncated: extend it first (sparse,
            # so this needs no disk yet) so that neither a kill nor a failed write can
            # leave it shorter. The headroom is given back once the sample is committed.
            os.truncate(path, os.path.getsize(path) + grow + _META_BYTES)
        for ds, value in rows:
            ds.resize(n + 1, axis=0)
            ds[n] = value
        f.flush()
        f.attrs.modify(_PENDING, np.int64(-1))
        f.flush()
        if grow:
            os.truncate(path, f.id.get_filesize())
    except (OSError, RuntimeError, ValueError) as err:
        if isinstance(err, CaskaxError):
            raise
        raise StateFileError(
            f"append_state: writing sample {n} to '{path}' failed ({err}); the file keeps "
            f"its {n} earlier sample(s), and the next append writes over the unfinished one."
        ) from err


def _row_allocated(ds, n: int) -> bool:
    """Whether the chunk holding row ``n`` of ``ds`` exists in the file already."""
    rows = ds.chunks[0]
    if n % rows and n <= ds.shape[0]:
        return True  # row n - 1, committed, shares its chunk
    if n >= ds.shape[0]:
        return False
    start = (n - n % rows,) + (0,) * (ds.ndim - 1)
    return ds.id.get_chunk_info_by_coord(start).byte_offset is not None


def _convert(path: str, n: int) -> None:
    """Rewrite ``path`` (atomically) in the in-place layout: its first ``n`` samples in
    unfiltered chunks, every other object, attr and hard link as it was."""
    need = os.path.getsize(path)
    with _open(path, "r") as src:
        need += sum(
            _chunk_rows(ds.dtype.itemsize * int(np.prod(ds.shape[1:])))
            * ds.dtype.itemsize
            * int(np.prod(ds.shape[1:]))
            for ds in _numeric_values(src)
        )
    _check_space(path, need, "append_state")
    tmp = _tmp_name(path)
    try:
        with _open(path, "r") as src, h5py.File(tmp, "w-") as dst:
            _copy_attrs(src, dst)
            dst.attrs.create(_PENDING, np.int64(-1))
            copied = {src.id: dst}
            _copy_group(src, dst, copied, n)
        os.replace(tmp, path)
    except BaseException:
        _remove(tmp)
        raise


def _copy_attrs(src, dst):
    for key in src.attrs:
        dst.attrs.create(key, src.attrs[key], dtype=src.attrs.get_id(key).dtype)


def _copy_group(src, dst, copied, n):
    for key in src:
        link = src.get(key, getlink=True)
        if isinstance(link, (h5py.SoftLink, h5py.ExternalLink)):
            dst[key] = link
            continue
        obj = src[key]
        if obj.id in copied:
            dst[key] = copied[obj.id]  # a hard link stays a hard link
            continue
        if isinstance(obj, h5py.Group):
            new = dst.create_group(key)
            copied[obj.id] = new
            _copy_attrs(obj, new)
            _copy_group(obj, new, copied, n)
        elif isinstance(obj, h5py.Dataset):
            if bool(obj.attrs.get("appendable", False)) and not _is_string(obj) and obj.ndim:
                row = obj.shape[1:]
                rows = _chunk_rows(obj.dtype.itemsize * int(np.prod(row)))
                new = dst.create_dataset(
                    key,
                    data=obj[:n],
                    chunks=(rows,) + row,
                    maxshape=(None,) + row,
                    fillvalue=np.zeros((), obj.dtype),
                )
            else:
                new = dst.create_dataset(
                    key,
                    data=obj[()],
                    dtype=obj.dtype,
                    chunks=obj.chunks,
                    maxshape=obj.maxshape,
                    compression=obj.compression,
                    compression_opts=obj.compression_opts,
                    shuffle=obj.shuffle,
                )
            copied[obj.id] = new
            _copy_attrs(obj, new)
        else:
            raise StateFileError(
                f"append_state: cannot rewrite '{src.file.filename}': '{obj.name}' is "
                "neither a group nor a dataset."
            )


# -- values ----------------------------------------------------------------------------------
def _state_values(module) -> dict:
    """uid -> numpy value (or None) for every param below ``module``; a pointer holds
    its computed value, or None when it cannot be computed yet (caskade does the same)."""
    w = graph.walk(module)
    graph.check_cycles(w)  # as compile does: a cyclic model would write an unloadable file
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
            _write_saveattrs(g, c)
            visit(c, g)

    _write_saveattrs(root, module)
    visit(module, root)


def _write_saveattrs(group, node):
    """caskade's ``saveattrs``: the attributes a node's class names (dotted paths
    allowed) are written as HDF5 attrs of its group; ``None`` as the string "NONE"."""
    for attr in getattr(type(node), "saveattrs", ()):
        try:
            value = operator.attrgetter(attr)(node)
        except AttributeError as err:
            warnings.warn(f"saveattrs of '{node.name}': {err}", CaskaxWarning, stacklevel=4)
            continue
        try:
            group.attrs[attr] = "NONE" if value is None else value
        except (TypeError, ValueError) as err:
            warnings.warn(
                f"'{node.name}.{attr}' of type {type(value).__name__} cannot be saved as an "
                f"HDF5 attribute ({err}); it is left out.",
                CaskaxWarning,
                stacklevel=4,
            )


def _write_value(group, p: Param, value, appendable):
    if value is None:
        ds = group.create_dataset("value", data="None")
    elif appendable:
        # Unfiltered chunks: an append writes its row into place without moving the
        # committed rows (a rewritten gzip chunk moves, see append_state).
        ds = group.create_dataset(
            "value",
            data=value[None],
            chunks=(_chunk_rows(value.nbytes),) + value.shape,
            maxshape=(None,) + value.shape,
            fillvalue=np.zeros((), value.dtype),  # a new chunk is written whole: no sparse holes
        )
    else:
        ds = group.create_dataset("value", data=value)
    ds.attrs["node_type"] = _node_type(p)
    ds.attrs["appendable"] = appendable
    ds.attrs["cyclic"] = p.cyclic
    if p.valid is not None and p.valid[0] is not None:
        ds.attrs["valid_left"] = np.asarray(p.valid[0], dtype=np.float64)
    if p.valid is not None and p.valid[1] is not None:
        ds.attrs["valid_right"] = np.asarray(p.valid[1], dtype=np.float64)
    ds.attrs["units"] = p.units if p.units is not None else "None"


# -- structure -------------------------------------------------------------------------------
def _module_layout(module) -> dict:
    """path (relative to the root group) -> node or None (an intermediate group such as a
    list field), along every path through the tree, in visiting order."""
    out: dict = {}
    if "/" in module.name or module.name in ("", ".", ".."):
        raise GraphError(f"cannot name an HDF5 root group {module.name!r}: rename the root module.")

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
            parts.append(
                f"{len(extra)} in the file but not in the model, first '{name}/{extra[0]}'"
            )
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
        raise StateFileError(
            f"'{path}' is not an HDF5 file (state files are written by save_state)."
        )


def _root_group(f, module, path):
    obj = f.get(module.name)
    if not isinstance(obj, h5py.Group) and module.name in f:
        raise StateFileError(
            f"'{path}': '{module.name}' is not a readable group; the file is corrupt or "
            "not a state file."
        )
    if obj is None:
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
def _read_value(ds, row, where, path):
    """The value in ``ds`` at sample ``row`` (non-negative, below the committed count)."""
    if _is_string(ds):
        raw = ds[()]
        text = raw.decode() if isinstance(raw, bytes) else str(raw)
        if text != "None":
            raise StateFileError(
                f"'{path}': '{where}/value' holds the string {text!r}, not a value."
            )
        return None
    if bool(ds.attrs.get("appendable", False)):
        return np.asarray(ds[row])
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
    if "node_type" not in ds.attrs:
        raise StateFileError(
            f"'{path}': '{where}/value' has no 'node_type' attr (expected one of "
            f"{', '.join(_NODE_TYPES)}); was the file written by caskax or caskade?"
        )
    node_type = _attr_str(ds, "node_type", "")
    if node_type not in _NODE_TYPES:
        raise StateFileError(
            f"'{path}': '{where}/value' has node_type {node_type!r}; expected one of "
            f"{', '.join(_NODE_TYPES)}."
        )
    units = _attr_str(ds, "units", "None")
    left = ds.attrs.get("valid_left", None)
    right = ds.attrs.get("valid_right", None)
    valid = None
    if left is not None or right is not None:
        # scalars or arrays (caskade writes array bounds as arrays)
        valid = (
            None if left is None else np.asarray(left, dtype=np.float64),
            None if right is None else np.asarray(right, dtype=np.float64),
        )
    cyclic = bool(ds.attrs.get("cyclic", False))
    valid = _normalise_valid(p.name, valid, cyclic)
    changes = dict(units=None if units == "None" else units, valid=valid, cyclic=cyclic)
    if not p.pointer:
        if node_type != "pointer":  # a pointer in the file: caskade keeps the model's value
            # a former pointer keeps its inputs (caskade keeps its links)
            changes.update(node_kind=node_type, value=_as_array(value, p))
            _check_valid(where, changes["value"], valid, cyclic)  # warns, as set does
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
