"""What every inference routine needs from ``f``: its layout, and its log-density in the
space a sampler or optimiser moves in.

``f`` is a caskax `Program` or any plain function of one flat vector. A Program brings
names, shapes, valid ranges and priors; a plain function brings only its values, so
its entries are labelled ``x[0], x[1], ...``. A Program with several param groups is
seen as one vector: its groups' vectors joined in group order.
"""

import math
from typing import Any

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np

from .. import transforms
from ..errors import InferenceError, ShapeError
from ..program import Program
from ._jit import run_once_jit

__all__ = ["Target", "layout_of", "names_of", "check_program", "start_vector"]


def check_program(f, what: str):
    """Refuse inputs inference cannot handle: no dynamic params, or neither a Program
    nor a callable. Plain callables pass through."""
    if isinstance(f, Program):
        if sum(group_sizes(f)) == 0:
            raise InferenceError(
                f"{what}: {f!r} has no dynamic params, so there is nothing to infer. "
                "Make some params dynamic first (module.to_dynamic(...))."
            )
    elif not callable(f):
        raise InferenceError(
            f"{what} needs a caskax Program or a function of a flat vector, got {type(f).__name__}."
        )


def group_sizes(f: Program) -> tuple:
    """Entries per param group, in group order."""
    size = f.size
    return size if isinstance(size, tuple) else (size,)


def joined_rows(f: Program) -> list:
    """``[(row, start, stop), ...]``: the layout rows in the joined vector's order
    (group by group) with their entries' span in it."""
    out, offset = [], 0
    for g in f.groups:
        rows = sorted((r for r in f.layout if r.group == g), key=lambda r: r.slice.start)
        for r in rows:
            out.append((r, offset + r.slice.start, offset + r.slice.stop))
        offset += sum(math.prod(r.shape) for r in rows)
    return out


def layout_of(f, size: int | None = None) -> tuple:
    """``((name, shape), ...)``, one pair per param, in flat-vector order."""
    if isinstance(f, Program):
        return tuple((r.name, tuple(r.shape)) for r, _, _ in joined_rows(f))
    if size is None:
        return ()
    return tuple((f"x[{i}]", ()) for i in range(size))


def names_of(layout: tuple) -> list:
    """One label per entry of the flat vector (``"SN.x0[1]"``)."""
    out = []
    for name, shape in layout:
        if shape == ():
            out.append(name)
        else:
            out.extend(f"{name}[{i}]" for i in range(math.prod(shape)))
    return out


def split_by_name(layout: tuple, flat, lead: tuple) -> dict:
    """Cut ``flat[..., size]`` into ``{name: array[*lead, *shape]}``."""
    out, start = {}, 0
    for name, shape in layout:
        n = math.prod(shape)
        out[name] = flat[..., start : start + n].reshape(tuple(lead) + tuple(shape))
        start += n
    return out


def constrained_init(f):
    """``f.init`` in constrained space (a ``valid=True`` Program's init is ``u``)."""
    if not isinstance(f, Program):
        raise InferenceError(
            "x0 is required when f is a plain function (it has no stored init values)."
        )
    init = _as_tuple(f.init)
    return _join(f.from_valid(*init) if f.valid else init)


def init_vector(f: Program):
    """``f.init`` as one vector (groups joined; ``u`` for a ``valid=True`` Program)."""
    return _join(f.init)


def _as_tuple(v) -> tuple:
    return v if isinstance(v, tuple) else (v,)


def _join(parts):
    parts = _as_tuple(parts)
    return parts[0] if len(parts) == 1 else jnp.concatenate(parts, axis=-1)


def start_vector(f, x0, what: str, lead_ok: bool = False):
    """``x0`` as a float array of the right length (``[n]``, or ``[k, n]`` if allowed)."""
    x0 = jnp.asarray(x0)
    # An explicit dtype drops jax's weak type, so jnp.full(n, 3.0) and f.init share
    # one compiled fit.
    dtype = x0.dtype if jnp.issubdtype(x0.dtype, jnp.inexact) else jnp.zeros(()).dtype
    x0 = jnp.asarray(x0, dtype=dtype)
    n = sum(group_sizes(f)) if isinstance(f, Program) else None
    ndim_ok = x0.ndim == 1 or (lead_ok and x0.ndim == 2)
    if not ndim_ok or (n is not None and x0.shape[-1] != n):
        listing = (
            ", ".join(f"{r.name}{list(r.shape)}" for r, _, _ in joined_rows(f))
            if isinstance(f, Program)
            else "a flat vector"
        )
        want = f"({n},)" if n is not None else "(n,)"
        if lead_ok:
            want += f" or (num_chains, {n if n is not None else 'n'})"
        raise ShapeError(
            f"{what}: x0 has shape {tuple(x0.shape)}, expected {want} laid out as [{listing}]."
        )
    return x0


class Target(eqx.Module):
    """``f`` seen from a sampler: a log-density of ``z`` plus the maps ``z <-> x``.

    ``z`` is unconstrained ``u`` when ``unconstrained`` (always for a Program compiled
    with ``valid=True``, which takes ``u``), else ``x`` itself. The density is
    ``f(x) + log_prior(x) [+ log_det_jacobian(u)]``; a plain function is used as is.
    With ``prior=False`` (fits) only ``f`` is used, without prior or Jacobian.
    """

    f: Any
    unconstrained: bool = eqx.field(static=True)
    density: bool = eqx.field(static=True)
    sizes: tuple = eqx.field(static=True)  # entries per param group; () for a function

    def __init__(self, f, unconstrained: bool, density: bool = True):
        self.f = f
        is_program = isinstance(f, Program)
        self.unconstrained = bool(is_program and (unconstrained or f.valid))
        self.density = bool(density)
        self.sizes = group_sizes(f) if is_program else ()

    def split(self, v) -> tuple:
        """One joined vector -> the Program's arguments, one per param group."""
        if len(self.sizes) < 2:
            return (v,)
        return tuple(jnp.split(v, np.cumsum(self.sizes)[:-1].tolist(), axis=-1))

    @property
    def is_program(self) -> bool:
        return isinstance(self.f, Program)

    def _value(self, v):
        v = jnp.asarray(v)
        if v.shape != ():
            raise InferenceError(
                f"f must return a scalar log-density, got an array of shape {v.shape}. "
                "Compile the method that returns the log-likelihood (e.g. Likelihood)."
            )
        return v

    def to_x(self, z):
        """Sampling space -> constrained space."""
        return _join(self.f.from_valid(*self.split(z))) if self.unconstrained else z

    def to_z(self, x):
        """Constrained space -> sampling space."""
        return _join(self.f.to_valid(*self.split(x))) if self.unconstrained else x

    def logdensity(self, z):
        f = self.f
        if not self.is_program:
            return self._value(f(z))
        zs = self.split(z)
        if not self.unconstrained:
            out = self._value(f(*zs))
            return out + f.log_prior(*zs) if self.density else out
        # f.valid Programs take u themselves (and so does their log_prior).
        args = zs if f.valid else _as_tuple(f.from_valid(*zs))
        out = self._value(f(*args))
        if self.density:
            out = out + f.log_prior(*args) + f.log_det_jacobian(*zs)
        return out


@run_once_jit
def _value_and_grad(target, z):
    return jax.value_and_grad(target.logdensity)(z)


def check_finite_start(target: Target, z, what: str, x=None):
    """Raise `InferenceError` naming the params if the log-density or its gradient is
    not finite at ``z`` (a concrete ``[n]`` or ``[k, n]`` array; ``x`` the same points
    in constrained space, if known)."""
    zs = np.asarray(z).reshape(-1, np.shape(z)[-1])
    xs = None if x is None else np.asarray(x).reshape(zs.shape)
    for k, zk in enumerate(zs):
        value, grad = _value_and_grad(target, jnp.asarray(zk))
        value, grad = float(value), np.asarray(grad)
        if np.isfinite(value) and np.all(np.isfinite(grad)):
            continue
        f = target.f
        layout = layout_of(f, zs.shape[-1])
        names = names_of(layout)
        x = xs[k] if xs is not None else np.asarray(target.to_x(jnp.asarray(zk)))
        bad = []
        rows = [r for r, _, _ in joined_rows(f)] if target.is_program else [None] * len(layout)
        start = 0
        for (name, shape), row in zip(layout, rows):
            n = math.prod(shape)
            sl = slice(start, start + n)
            start += n
            reason = None
            if not np.all(np.isfinite(x[sl])):
                reason = "value not finite"
            elif row is not None and row.valid is not None and not row.cyclic:
                lo, hi = transforms.bounds(row.valid, shape=shape)
                if (lo is not None and np.any(x[sl] <= lo)) or (
                    hi is not None and np.any(x[sl] >= hi)
                ):
                    reason = f"outside valid range {row.valid}"
            if reason is None and not np.all(np.isfinite(grad[sl])):
                reason = "gradient not finite"
            if reason is not None:
                bad.append(f"{name} = {x[sl].tolist() if shape else float(x[sl][0])} ({reason})")
        which = f" (start {k})" if len(zs) > 1 else ""
        detail = (
            "; ".join(bad)
            if bad
            else ("every param is finite and in range: f itself returns a non-finite value here")
        )
        raise InferenceError(
            f"{what}: the log-density is {value} at x0{which}, its gradient finite: "
            f"{bool(np.all(np.isfinite(grad)))}. Offending params: {detail}. "
            f"Entries: {names}. Start from values where f is finite."
        )
