"""NUTS on a Program with blackjax: warmup, then blocks of draws.

Layout of a run with the default Laplace metric: ``fit -> Laplace -> warmup blocks ->
draw blocks``, where warmup (step-size dual averaging, the mass matrix fixed) and draws
run through one compiled runner, each step told by a mode whether it adapts. The runner
takes positions, not NUTS states: each block starts by evaluating the log-density at its
first position (one gradient per block), so no separate program builds initial states.
Per-chain inputs travel as host arrays (keys as raw key data), which a sharded runner
places on its devices without compiling a reshard.
With ``inverse_mass_matrix=None`` or an array, warmup is blackjax's window adaptation
instead. Each stage is one jitted function of ``(target, per-chain arrays)``, mapped
over chains by ``jax.vmap`` ("vectorized"), a Python loop ("sequential") or
``jax.shard_map`` over ``jax.devices()`` ("sharded"). The Program travels as a jit
argument, so a second run on the same Program (or one with new data of the same
shapes) reuses compiled code.
"""

import dataclasses
import functools
import math
import threading
import warnings
from typing import NamedTuple

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from ..batch import (
    BatchedProgram,
    _datasets_mesh as datasets_mesh,
    _on_devices as on_devices,
    _run_in_chunks as run_in_chunks,
)
from ..errors import CaskaxWarning, InferenceError, ShapeError
from .chains import _ARRAYS, Chains, _check_layout
from .fit import _fit_impl, _fit_unchecked
from .laplace import _cov, _hessian_of, laplace
from ._target import (
    Target,
    check_finite_start,
    check_program,
    constrained_init,
    group_sizes,
    layout_of,
    names_of,
    start_vector,
)
from ._jit import inference_jit, run_once_jit
from ._lanes import CPU_NUTS_LANES, map_datasets, resolve_lanes

__all__ = ["nuts"]


def _blackjax():
    # Imported on first use: importing blackjax runs a jax op, which starts JAX's
    # backends, and a user may still want to configure them after `import caskax`
    # (jax_num_cpu_devices, for one, must be set before).
    import blackjax
    import blackjax.adaptation.base

    return blackjax


_CHAIN_METHODS = ("vectorized", "sequential", "sharded")
_DENSE_MAX = 50  # dense mass matrix up to this many entries
_SEED_SHRINKAGE = 20.0  # pseudo-count keeping a Laplace seed through the first windows


class _Warmup(NamedTuple):
    """Static settings of the jitted warmup (Python values only)."""

    num_warmup: int
    dense: bool
    seeded: bool
    impl: str  # PRNG implementation of the raw key data


class _Sampling(NamedTuple):
    """Static settings of the jitted sampler (kept apart so that any warmup setting
    reuses one compiled sampler)."""

    thin: int
    impl: str  # PRNG implementation of the raw key data


# -- per-chain stages ----------------------------------------------------------------------
def _warmup_one(target, key_data, z0, imm_seed, cfg: _Warmup):
    """One chain's window adaptation: (position, step size, inverse mass matrix)."""
    logdensity = target.logdensity
    blackjax = _blackjax()
    key = jax.random.wrap_key_data(key_data, impl=cfg.impl)
    if cfg.num_warmup == 0:
        return z0, jnp.ones((), z0.dtype), imm_seed
    warmup = blackjax.window_adaptation(
        blackjax.nuts,
        logdensity,
        is_mass_matrix_diagonal=not cfg.dense,
        initial_inverse_mass_matrix=imm_seed if cfg.seeded else None,
        imm_shrinkage_to_previous=_SEED_SHRINKAGE if cfg.seeded else 0.0,
        adaptation_info_fn=blackjax.adaptation.base.get_filter_adapt_info_fn(),
    )
    (state, params), _ = warmup.run(key, z0, num_steps=cfg.num_warmup)
    # a strong dtype: blackjax's step size is weak-typed, and the runner compiled ahead
    # for a strong one would compile again
    step_size = params["step_size"].astype(z0.dtype)
    return state.position, step_size, params["inverse_mass_matrix"]


class _Draw(NamedTuple):
    x: jax.Array
    log_density: jax.Array
    divergent: jax.Array
    num_steps: jax.Array
    acceptance_rate: jax.Array


# Per-step modes of the shared runner: warmup steps adapt the step size (Stan's fast
# window: dual averaging with a fixed mass matrix), padding steps leave the chain as
# it is, draws use the adapted step size.
_DRAW, _ADAPT, _IDLE = 0, 1, 2


@functools.cache
def _dual_averaging():
    """blackjax's dual averaging of the step size, to an acceptance rate of 0.8:
    ``(init, update, final)``."""
    return _blackjax().adaptation.step_size.dual_averaging_adaptation(0.8)


def _fresh_da(lead, dtype):
    """Host placeholders of the runner's dual-averaging state, ``[*lead, ...]`` (``lead``
    the chain count, or ``(datasets, chains)``); a block with ``fresh`` set replaces
    them with blackjax's initial state."""
    lead = (lead,) if isinstance(lead, (int, np.integer)) else tuple(lead)
    shapes = jax.eval_shape(_dual_averaging()[0], jax.ShapeDtypeStruct((), dtype))
    return jax.tree.map(lambda a: np.zeros(lead + a.shape, a.dtype), shapes)


def _start_state(target, z, fallback):
    """The NUTS state at ``z``, or at ``fallback`` where the log-density at ``z`` is
    not finite (a Gaussian draw as a start can land outside the model's support). A
    loop of at most two evaluations, so the model is traced once."""
    init = functools.partial(_blackjax().nuts.init, logdensity_fn=target.logdensity)
    blank = jax.tree.map(lambda s: jnp.full(s.shape, jnp.nan, s.dtype), jax.eval_shape(init, z))

    def again(carry):
        tries, state = carry
        return (tries < 2) & ~jnp.isfinite(state.logdensity)

    def evaluate(carry):
        tries, _ = carry
        return tries + 1, init(jnp.where(tries == 0, z, fallback))

    return jax.lax.while_loop(again, evaluate, (jnp.zeros((), jnp.int32), blank))[1]


def _run_one(
    target, z, fallback, da, fresh, key_data, first, modes, step_size, imm, cfg: _Sampling
):
    """One chain, one block of ``modes`` ``[draws, thin]`` starting at step ``first``
    from position ``z``: warmup and draws share this compiled function. ``fresh``
    starts a new dual averaging; ``fallback`` replaces a start whose log-density is
    not finite. Step ``i`` uses ``fold_in(key, i)``, so the draws do not depend on the
    blocking. Returns ``((position, da), _Draw)``."""
    da_init, da_update, _ = _dual_averaging()
    state = _start_state(target, z, fallback)
    da = jax.tree.map(lambda a, b: jnp.where(fresh, a, b), da_init(jnp.ones((), z.dtype)), da)
    key = jax.random.wrap_key_data(key_data, impl=cfg.impl)
    steps = first + jnp.arange(modes.size, dtype=jnp.int32).reshape(modes.shape)
    keys = jax.vmap(jax.vmap(lambda i: jax.random.fold_in(key, i)))(steps)

    def transition(carry, km):
        state, da = carry
        key, mode = km
        adapt = mode == _ADAPT
        eps = jnp.where(adapt, jnp.exp(da.log_step_size), step_size)
        new, info = _blackjax().nuts(target.logdensity, eps, imm).step(key, state)
        da = jax.tree.map(
            lambda a, b: jnp.where(adapt, a, b), da_update(da, info.acceptance_rate), da
        )
        state = jax.tree.map(lambda a, b: jnp.where(mode == _IDLE, b, a), new, state)
        return (state, da), info

    def draw(carry, block):
        carry, info = jax.lax.scan(transition, carry, block)
        state = carry[0]
        out = _Draw(
            target.to_x(state.position),
            state.logdensity,
            jnp.any(info.is_divergent),
            jnp.sum(info.num_integration_steps),
            jnp.mean(info.acceptance_rate),
        )
        return carry, out

    (state, da), out = jax.lax.scan(draw, (state, da), (keys, modes))
    return (state.position, da), out


# -- mapping over chains ---------------------------------------------------------------------
def _vectorized(fn, target, args, cfg):
    if jax.tree.leaves(args)[0].shape[0] == 1:
        # one chain (per device, when sharded): no vmap, whose batching of NUTS's while
        # loops was most of the runner's tracing time and a quarter of its compile
        return jax.tree.map(lambda a: a[None], fn(target, *jax.tree.map(lambda a: a[0], args), cfg))
    return jax.vmap(lambda *a: fn(target, *a, cfg))(*args)


def _single(fn, target, args, cfg):
    return fn(target, *args, cfg)


def _sharded(fn, target, args, cfg, mesh):
    dynamic, static = eqx.partition(target, eqx.is_array)

    def body(dynamic, *chunk):
        return _vectorized(fn, eqx.combine(dynamic, static), chunk, cfg)

    spec = PartitionSpec("chains")
    mapped = jax.shard_map(
        body,
        mesh=mesh,
        in_specs=(PartitionSpec(),) + (spec,) * len(args),
        out_specs=spec,
        check_vma=False,
    )
    return mapped(dynamic, *args)


def _over_datasets(fn, target, args, cfg, lanes):
    # a _BatchedTarget: each dataset's chains vectorized, ``lanes`` datasets vmapped
    # around them at a time (all when None)
    F = target.F
    return map_datasets(
        lambda arrays, *a: _vectorized(fn, target.member(arrays), a, cfg),
        F.arrays,
        F.in_axes,
        tuple(args),
        lanes,
    )


# The chain mappers of the programs of many steps (warmup, draws).
_MAPS = {
    "vectorized": inference_jit(_vectorized),
    "sequential": inference_jit(_single),
    "sharded": inference_jit(_sharded),
    "datasets": inference_jit(_over_datasets),
}


def _mapped_call(fn, target, args, cfg, chain_method, mesh, lanes=None):
    """``(jitted, call arguments)`` of ``fn`` mapped over all chains at once."""
    if chain_method == "datasets" and mesh is not None:
        # a batched Program spread over the devices: each device takes its datasets'
        # inputs, all chains of a dataset together, placed alike in every call
        args = jax.device_put(tuple(args), NamedSharding(mesh, PartitionSpec("datasets")))
    if chain_method == "datasets":
        return _MAPS[chain_method], (fn, target, tuple(args), cfg, lanes)
    if chain_method == "vectorized":
        return _MAPS[chain_method], (fn, target, tuple(args), cfg)
    # every call's per-chain inputs placed alike (host arrays and earlier outputs), so
    # that the runner compiles once; from the host this is a plain transfer
    args = jax.device_put(tuple(args), NamedSharding(mesh, PartitionSpec("chains")))
    return _MAPS["sharded"], (fn, target, args, cfg, mesh)


def _map_chains(fn, target, args, cfg, chain_method, mesh, lanes=None):
    """``fn(target, *per_chain_args, cfg)`` for every chain; results stacked on axis 0."""
    if chain_method != "sequential":
        jitted, call_args = _mapped_call(fn, target, args, cfg, chain_method, mesh, lanes)
        return jitted(*call_args)
    n = jax.tree.leaves(args)[0].shape[0]
    outs = [
        _MAPS["sequential"](fn, target, jax.tree.map(lambda a: a[c], tuple(args)), cfg)
        for c in range(n)
    ]
    return jax.tree.map(lambda *xs: jnp.stack(xs), *outs)


# -- helpers ---------------------------------------------------------------------------------
def _block_size(total: int) -> int:
    """Draws per jitted block: a divisor of ``total`` near ``total / 20``, so that every
    block shares one compiled function (with or without a progress bar, so the
    blocking never changes which function produced a draw)."""
    if total <= 20:
        return max(total, 1)
    target = total / 20
    divisors = [b for b in range(1, total + 1) if total % b == 0 and target / 2 <= b <= 2 * target]
    return min(divisors, key=lambda b: abs(b - target)) if divisors else math.ceil(target)


def _progress_bar(enabled: bool, total: int, desc: str):
    if not enabled:
        return None
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=desc, unit="draw")


def _check_key(key) -> None:
    """One PRNG key: a typed key of shape ``()`` (``jax.random.key``) or the raw
    ``uint32`` data of one (``jax.random.PRNGKey``); anything else is an
    `InferenceError` here rather than a message from inside ``jax.random.split``."""
    dtype = getattr(key, "dtype", None)
    shape = getattr(key, "shape", None)
    if dtype is not None and jax.dtypes.issubdtype(dtype, jax.dtypes.prng_key):
        if shape == ():
            return
    elif dtype == np.uint32 and shape is not None and len(shape) == 1:
        return  # raw key data: jax checks its length against the default PRNG
    got = repr(key)[:80] if dtype is None else f"an array of dtype {dtype} and shape {tuple(shape)}"
    raise InferenceError(
        f"nuts: key must be one PRNG key, e.g. jax.random.key(0) or jax.random.PRNGKey(0); "
        f"got {got}. A batched Program also takes one key: dataset k is sampled with "
        "jax.random.split(key, N)[k]."
    )


@run_once_jit
def _keys(key, num_chains):
    """Raw key data of the starts' key and of each chain's warmup and draw keys, in one
    program: eager splits, and unpacking their result, would each compile one of their
    own."""
    k_start, k_warm, k_draw = jax.random.split(key, 3)
    data = jax.random.key_data
    return (
        data(k_start),
        data(jax.random.split(k_warm, num_chains)),
        data(jax.random.split(k_draw, num_chains)),
    )


def _normals(key_data, num_chains, size):
    """Standard normal draws ``[num_chains, size]`` (float64) for the chains' starts,
    made on the host from the key's bits: jax.random.normal compiled a program of its
    own (0.3-0.4 s cold) for a few numbers."""
    return np.random.default_rng(np.asarray(key_data)).standard_normal((num_chains, size))


@run_once_jit
def _to_z(target, x0):
    return jax.vmap(target.to_z)(x0)


def _starts(target, f, x0, num_chains, check=True):
    """Starting points in the sampled space, ``[num_chains, n]``, and whether they
    were given per chain. ``check=False`` leaves the finiteness check to the caller
    (the Laplace path's fit runs it only if the start fails)."""
    if x0 is None:
        x0 = constrained_init(f)
    x0 = start_vector(f, x0, "nuts", lead_ok=True)
    per_chain = x0.ndim == 2
    if per_chain and x0.shape[0] != num_chains:
        raise InferenceError(
            f"nuts: x0 has {x0.shape[0]} rows but num_chains={num_chains}; give one start "
            "for all chains (shape (n,)) or one per chain (shape (num_chains, n))."
        )
    # numpy for the small host-side steps: an eager jnp op is a compile of its own
    x0 = x0 if per_chain else np.broadcast_to(np.asarray(x0), (num_chains, x0.shape[0]))
    z0 = np.asarray(_to_z(target, x0))  # host: the runner takes per-chain host arrays
    if check:
        check_finite_start(
            target, z0 if per_chain else z0[:1], "nuts", x=x0 if per_chain else x0[:1]
        )
    return z0, per_chain


def _laplace_seed(target, z0, per_chain, normals, dense):
    """Fit the log-density from the first start, take its Laplace covariance at the
    mode, and start the chains from draws of that Gaussian (``mode + L @ normals``,
    unless starts were given per chain). Returns ``(starts, seed, fallback)``: the
    runner starts a chain at the mode (``fallback``) if its draw's log-density is not
    finite. Falls back to the plain starts with a warning if either step fails;
    raises if the starts themselves are not finite."""
    res, start_ok, _, _ = _fit_unchecked(target.logdensity, jax.device_put(np.asarray(z0)[0]))
    if not bool(start_ok) or per_chain:
        # compiled only when needed: a bad start, or starts given per chain
        check_finite_start(target, z0 if per_chain else z0[:1], "nuts")
    try:
        if not np.isfinite(float(res.value)):
            raise InferenceError("the fit to the mode returned a non-finite log-density")
        approx = laplace(target.logdensity, res.x)
    except InferenceError as err:
        warnings.warn(
            f"nuts: inverse_mass_matrix='laplace' failed ({err}); adapting from the identity.",
            CaskaxWarning,
            stacklevel=3,
        )
        return z0, None, z0
    cov = np.asarray(approx.cov, np.float64)
    mode = np.broadcast_to(np.asarray(res.x), z0.shape)
    if not per_chain:
        # host arithmetic on an n x n matrix: a jitted draw compiled a program of its own
        try:
            chol = np.linalg.cholesky(cov)
            z0 = (mode + np.asarray(normals, np.float64) @ chol.T).astype(z0.dtype)
        except np.linalg.LinAlgError:  # rounding to float32 can break a near-singular cov
            z0 = mode.astype(z0.dtype)
    seed = (cov if dense else np.diag(cov)).astype(z0.dtype)
    return z0, seed, mode


def _resolve_chain_method(chain_method, num_chains):
    if chain_method not in _CHAIN_METHODS:
        raise InferenceError(
            f"nuts: chain_method must be one of {_CHAIN_METHODS}, got {chain_method!r}."
        )
    if chain_method != "sharded":
        return None
    devices = jax.devices()
    if num_chains % len(devices):
        raise InferenceError(
            f"nuts: chain_method='sharded' spreads chains evenly over {len(devices)} devices, "
            f"but num_chains={num_chains} is not divisible by {len(devices)}. Use a multiple "
            f"of {len(devices)} chains, or chain_method='vectorized'."
        )
    return Mesh(np.array(devices), ("chains",))


class _Runner:
    """Warmup steps and draws through the shared compiled runner, in blocks of
    ``block`` rows of ``thin`` steps."""

    def __init__(self, target, block, cfg: _Sampling, chains_map):
        self.target, self.block, self.cfg, self.chains_map = target, block, cfg, chains_map
        self.compiling = None

    def compile_ahead(self, z, imm, keys):
        """Compile the runner in a background thread, for per-chain positions like
        ``z`` and inverse mass matrices like ``imm`` (shapes and dtypes count), while
        this thread fits the mode and takes the Laplace Hessian: XLA compiles on one
        core, and the runner is the largest program of a run. The compiled program
        lands in the cache that the runner's calls use; if the shapes turn out
        otherwise (the Laplace step failed), the first call compiles as usual."""
        if self.chains_map["chain_method"] == "sequential":
            return
        lead, dtype = z.shape[:-1], z.dtype
        args = (
            z,
            z,
            _fresh_da(lead, dtype),
            np.ones(lead, bool),
            keys,
            np.zeros(lead, np.int32),
            np.zeros(lead + (self.block, self.cfg.thin), np.int32),
            np.ones(lead, dtype),
            imm,
        )

        def work():
            try:
                jitted, call_args = _mapped_call(
                    _run_one, self.target, args, self.cfg, **self.chains_map
                )
                jitted.lower(*call_args).compile()
            except Exception:  # noqa: BLE001 - the first call compiles again and reports it
                pass

        self.compiling = threading.Thread(target=work, name="caskax-nuts-compile", daemon=True)
        self.compiling.start()

    def wait(self):
        """Wait for `compile_ahead` (before a call that would otherwise compile twice)."""
        if self.compiling is not None:
            self.compiling.join()
            self.compiling = None

    def run(self, z, fallback, da, fresh, keys, modes, step_size, imm, bar, keep):
        """``modes`` ``[*lead, rows, thin]`` (numpy; ``lead`` is ``(chains,)`` or
        ``(datasets, chains)``) from positions ``z`` and raw per-chain ``keys``;
        ``fresh`` (per chain) restarts the dual averaging."""
        self.wait()
        done = (z, da, [])  # replaced whole after each block: consistent if interrupted
        try:
            axis = modes.ndim - 2  # the rows of draws
            for start in range(0, modes.shape[axis], self.block):
                z, da, parts = done
                rows = modes[..., start : start + self.block, :]
                first = np.full(modes.shape[:axis], start * modes.shape[-1], np.int32)
                (z, da), out = _map_chains(
                    _run_one,
                    self.target,
                    (z, fallback, da, fresh, keys, first, rows, step_size, imm),
                    self.cfg,
                    **self.chains_map,
                )
                out = jax.tree.map(np.asarray, out) if keep else out
                done = (z, da, parts + [out] if keep else parts)
                # later blocks start where the last one ended, at a finite log-density
                fallback, fresh = z, np.zeros_like(fresh)
                if bar is not None:  # warmup counts steps, sampling counts draws
                    bar.update(
                        min(out.x.shape[axis] * (1 if keep else self.cfg.thin), bar.total - bar.n)
                    )
        except KeyboardInterrupt as err:
            err.caskax_done = done  # the blocks finished before Ctrl-C, for nuts to keep
            raise
        finally:
            if bar is not None:
                bar.close()
        return done

    def adapt_step_size(self, z0, fallback, imm, keys, num_warmup, progress):
        """Dual averaging of the step size with the mass matrix ``imm`` fixed (Stan's
        fast window), padded to whole blocks with idle steps: one compile with draws.
        Returns ``(position, da, step size)``."""
        lead, thin = z0.shape[:-1], self.cfg.thin
        da = _fresh_da(lead, z0.dtype)
        rows = -(-num_warmup // (self.block * thin)) * self.block
        steps = np.arange(rows * thin).reshape(rows, thin)
        modes = np.broadcast_to(
            np.where(steps < num_warmup, _ADAPT, _IDLE).astype(np.int32), lead + (rows, thin)
        )
        unused = np.ones(lead, z0.dtype)  # the step size comes from `da` here
        fresh = np.ones(lead, bool)
        bar = _progress_bar(progress, num_warmup, "warmup")
        z, da, _ = self.run(z0, fallback, da, fresh, keys, modes, unused, imm, bar, keep=False)
        return z, da, np.exp(np.asarray(da.log_step_size_avg)).astype(z0.dtype)


def _window_warmup(target, z0, seeds, keys, num_warmup, progress, chains_map, impl):
    """blackjax's window adaptation (``seeds`` seed its mass matrix when given):
    ``(position, step size, inverse mass matrix)``."""
    seeded = seeds is not None
    if not seeded:
        seeds = np.ones(z0.shape, z0.dtype)
    cfg = _Warmup(int(num_warmup), seeds.ndim == z0.ndim + 1, seeded, impl)
    bar = _progress_bar(progress and num_warmup > 0, 1, "warmup")
    z, step_size, imm = _map_chains(_warmup_one, target, (keys, z0, seeds), cfg, **chains_map)
    if bar is not None:
        jax.block_until_ready(step_size)
        bar.update(1)
        bar.close()
    return z, step_size, imm


def _imm_like(z0, inverse_mass_matrix):
    """Zeros shaped like the per-chain inverse mass matrices the draws will use."""
    n = z0.shape[-1]
    if isinstance(inverse_mass_matrix, str):
        dense = n <= _DENSE_MAX
    else:
        dense = inverse_mass_matrix is not None and np.ndim(inverse_mass_matrix) == 2
    return np.zeros(z0.shape + (n,) if dense else z0.shape, z0.dtype)


def _metric_seed(target, z0, per_chain, normals, inverse_mass_matrix):
    """``(starts, seed, fallback)``: the seed of the inverse mass matrix (``(n,)``,
    ``(n, n)`` or ``None``) from the ``inverse_mass_matrix`` argument; ``"laplace"``
    also moves the starts to draws of the Laplace Gaussian (``fallback``: the mode)."""
    n = z0.shape[-1]
    if isinstance(inverse_mass_matrix, str):
        if inverse_mass_matrix != "laplace":
            raise InferenceError(
                f"nuts: inverse_mass_matrix must be None, an array or 'laplace', got {inverse_mass_matrix!r}."
            )
        return _laplace_seed(target, z0, per_chain, normals, dense=n <= _DENSE_MAX)
    if inverse_mass_matrix is None:
        return z0, None, z0
    try:
        seed = np.asarray(inverse_mass_matrix, dtype=z0.dtype)
    except (TypeError, ValueError):
        raise InferenceError(
            f"nuts: inverse_mass_matrix must be None, 'laplace' or a numeric array of shape "
            f"({n},) or ({n}, {n}), got {inverse_mass_matrix!r}."
        ) from None
    if seed.shape not in ((n,), (n, n)):
        raise InferenceError(
            f"nuts: inverse_mass_matrix has shape {seed.shape}, expected ({n},) or ({n}, {n})."
        )
    _check_metric(seed, seed.ndim == 2, "inverse_mass_matrix")
    return z0, seed, z0


def _check_metric(imm, dense: bool, what: str):
    """Raise unless every inverse mass matrix in ``imm`` (``[..., n]`` diagonals, or
    ``[..., n, n]`` matrices when ``dense``) is positive definite: with one that is
    not, every NUTS trajectory diverges and nothing would say why."""
    imm = np.asarray(imm, np.float64)
    if not np.all(np.isfinite(imm)):
        raise InferenceError(
            f"nuts: {what} has non-finite entries; it must be a positive definite "
            "inverse mass matrix (a variance per entry, or a covariance)."
        )
    if not dense:
        bad = np.argwhere(imm <= 0)
        if bad.size:
            raise InferenceError(
                f"nuts: {what} is not positive definite: entries at {bad[:5].tolist()} are <= 0 "
                f"(first: {float(imm[tuple(bad[0])])!r}). Give variances > 0, one per entry."
            )
        return
    asym = float(np.max(np.abs(imm - np.swapaxes(imm, -1, -2)), initial=0.0))
    if asym > 1e-6 * max(float(np.max(np.abs(imm), initial=0.0)), 1e-300):
        raise InferenceError(
            f"nuts: {what} is not symmetric (largest |M - M.T| = {asym:.3g}); "
            "give a covariance matrix."
        )
    smallest = float(np.min(np.linalg.eigvalsh(imm), initial=np.inf))
    if smallest <= 0:
        raise InferenceError(
            f"nuts: {what} is not positive definite (smallest eigenvalue {smallest:.3g}). "
            "Give a covariance matrix (cx.laplace gives one) or a diagonal of variances > 0."
        )


# -- the public function -------------------------------------------------------------------------
def nuts(
    f,
    key,
    x0=None,
    num_warmup: int | None = None,
    num_samples: int = 1000,
    num_chains: int | None = None,
    progress: bool = True,
    valid: bool = True,
    inverse_mass_matrix="laplace",
    chain_method: str = "vectorized",
    thin: int = 1,
    resume: Chains | bool | None = None,
    *,
    batch_size: int | None = None,
    out=None,
    lanes: int | None = None,
) -> Chains:
    """Sample ``f`` with blackjax NUTS after Stan-style window adaptation.

    The target density is ``f(x) + f.log_prior(x)``. With ``valid=True`` (default) the
    sampler moves in unconstrained space ``u`` (``x = f.from_valid(u)``) and adds
    ``f.log_det_jacobian(u)``, so bounded params are sampled correctly; a Program
    compiled with ``valid=True`` takes ``u`` itself and is always sampled that way. A
    plain function of a flat vector is sampled as is (then ``x0`` is required). A
    Program with several param groups is sampled as one vector, its groups joined in
    order.

    **Arguments:**

    - ``key``: a ``jax.random.key``; the same key gives bit-identical chains.
    - ``x0``: start in constrained space, ``(n,)`` for all chains or
      ``(num_chains, n)``; default ``f``'s current values.
    - ``inverse_mass_matrix``: ``"laplace"`` (the default): fit to the mode, take
      the Laplace covariance there (dense for ``n <= 50``) as the mass matrix, start
      the chains from draws of that Gaussian, and adapt only the step size during
      warmup (dual averaging). For near-Gaussian posteriors whose scales differ a lot
      this makes warmup far cheaper, so ``num_warmup`` defaults to 200 here (500 with
      window adaptation). If the
      fit or the Laplace step fails it warns and falls back to window adaptation.
      ``None``: Stan-style window adaptation from the identity (blackjax's default);
      an array seeds window adaptation (``(n,)`` diagonal or ``(n, n)`` dense, in the
      sampled space).
    - ``chain_method``: ``"vectorized"`` (``vmap``), ``"sequential"`` (one chain at a
      time) or ``"sharded"`` (over ``jax.devices()``; ``num_chains`` must divide evenly).
      A device holding a single chain runs it without ``vmap``, which traces and
      compiles faster: on a CPU, ask for one device per chain
      (``jax_num_cpu_devices``, set before JAX starts). With the Laplace metric or
      window adaptation, the sampler compiles in a background thread while the mode
      is fitted (``"sequential"`` excepted).
    - ``thin``: keep every ``thin``-th draw (``num_samples`` draws are kept).
    - ``progress``: tqdm bars for warmup and draws, advancing per block of steps (no host
      sync per step; window adaptation shows its warmup as one step).
    - ``resume``: `Chains` from an earlier run on the same Program: skip warmup and
      continue from their last state with their adapted step size and mass matrix;
      the result holds the earlier draws followed by the new ones. Its step size
      must be finite and positive and its mass matrix positive definite.
    - ``num_chains``: 4 by default; with ``resume``, the resumed Chains' count (any
      other count is an error).

    An array ``inverse_mass_matrix`` that is not positive definite is refused
    (`InferenceError`): NUTS would diverge on every trajectory.

    **Ctrl-C.** A ``KeyboardInterrupt`` during the draws keeps the blocks that
    finished: the exception carries them as ``err.chains`` (a `Chains`, possibly of
    zero draws, whose kernel and last position are set), so
    ``cx.nuts(f, key2, resume=err.chains)`` continues the run. During warmup there
    is nothing to keep yet: ``err.chains`` is ``None``.

    **Batched Programs** (`cx.batch`): dataset ``k`` is sampled as
    ``nuts(F[k], jax.random.split(key, N)[k], ...)`` samples it (its own fit, Laplace
    metric, step size and mass matrix), all datasets and chains in one vmapped
    program, ``chain_method="vectorized"`` only. ``x0`` is ``(N, n)`` or
    ``(N, num_chains, n)``; every field of the `Chains` leads with the dataset axis
    (``samples`` ``[N, num_chains, num_samples, n]``) and ``resume`` takes such Chains.
    ``lanes`` datasets run side by side, the groups one after another in the same
    compiled call (``None``: 1 on the CPU, where a dataset waits for the longest
    trajectory of its group, and every dataset elsewhere).
    ``batch_size`` samples the datasets in chunks (one progress bar over datasets);
    ``out=path.h5`` writes each finished chunk and, at the end, all chains (read back
    with ``cx.batch_results``); ``resume=True`` with the same ``out`` and
    ``batch_size`` keeps the chunks an interrupted call finished.

    **Returns:** `Chains` (samples constrained, ``[num_chains, num_samples, n]``).

    Example:
        >>> import caskax as cx, jax, jax.numpy as jnp
        >>> logp = lambda x: -0.5 * jnp.sum(x**2)
        >>> chains = cx.nuts(logp, jax.random.key(0), jnp.zeros(2), num_warmup=100,
        ...                  num_samples=100, num_chains=2, progress=False)
        >>> chains.samples.shape
        (2, 100, 2)
    """
    _check_key(key)
    if num_warmup is None:
        # measured (benchmarks/nuts_vs_blackjax.py, three models): with the Laplace
        # metric only the step size adapts, and 200 steps were within 0.83x of the best
        # length on every model (100 and 500 fell to 0.57x and 0.67x on one each);
        # window adaptation learns the metric too and keeps Stan's longer default.
        num_warmup = 200 if isinstance(inverse_mass_matrix, str) else 500
    if isinstance(f, BatchedProgram):
        return _nuts_batched(
            f,
            key,
            x0,
            num_warmup,
            num_samples,
            num_chains,
            progress,
            valid,
            inverse_mass_matrix,
            chain_method,
            thin,
            resume,
            batch_size,
            out,
            resolve_lanes(lanes, "nuts", cpu=CPU_NUTS_LANES),
        )
    if batch_size is not None or out is not None or isinstance(resume, bool) or lanes is not None:
        raise InferenceError(
            "nuts: batch_size, out, lanes and resume=True apply to batched Programs (cx.batch), "
            f"not to {type(f).__name__}; resume one Program's run with resume=chains."
        )
    check_program(f, "nuts")
    num_chains = _checked_counts(num_chains, resume, num_samples, thin, num_warmup)
    target = Target(f, unconstrained=valid)
    mesh = _resolve_chain_method(chain_method, num_chains)
    impl = str(jax.random.key_impl(key))
    chains_map = dict(chain_method=chain_method, mesh=mesh)
    runner = _Runner(target, _block_size(num_samples), _Sampling(int(thin), impl), chains_map)

    if resume is not None:
        size = resume.last_position.shape[-1]
        _check_layout(resume, layout_of(f, size), target.unconstrained)
        z0 = np.asarray(resume.last_position)
        _, _, draw_keys = (np.asarray(a) for a in _keys(key, num_chains))
        step_size = np.asarray(resume.step_size, dtype=z0.dtype)
        imm = np.asarray(resume.inverse_mass_matrix, dtype=z0.dtype)
        _check_resumed_kernel(resume)
        check_finite_start(target, z0, "nuts (resume)")
        z, fallback, da, num_warmup = z0, z0, _fresh_da(num_chains, z0.dtype), 0
    else:
        laplace_path = isinstance(inverse_mass_matrix, str)
        z0, per_chain = _starts(target, f, x0, num_chains, check=not laplace_path)
        start_key, warm_keys, draw_keys = (np.asarray(a) for a in _keys(key, num_chains))
        normals = _normals(start_key, num_chains, z0.shape[-1])
        runner.compile_ahead(z0, _imm_like(z0, inverse_mass_matrix), warm_keys)
        try:
            z0, seed, fallback = _metric_seed(target, z0, per_chain, normals, inverse_mass_matrix)
            # a copy, not a broadcast view: it ends up in Chains.inverse_mass_matrix
            seeds = (
                np.broadcast_to(np.asarray(seed), (num_chains,) + seed.shape).copy()
                if seed is not None
                else None
            )
            if laplace_path and seed is not None and num_warmup > 0:
                z, da, step_size = runner.adapt_step_size(
                    z0, fallback, seeds, warm_keys, num_warmup, progress
                )
                imm = seeds
            else:
                z, step_size, imm = _window_warmup(
                    target, z0, seeds, warm_keys, num_warmup, progress, chains_map, impl
                )
                # the runner's adaptation state is not used for draws: shapes only
                fallback, da = z, _fresh_da(num_chains, z0.dtype)
        except KeyboardInterrupt as err:
            err.chains = None  # no draws and no adapted kernel yet
            raise
        finally:
            runner.wait()  # no compile left running after an error either

    layout = layout_of(f, int(z.shape[-1]))
    return _draw(
        runner,
        z,
        fallback,
        da,
        draw_keys,
        step_size,
        imm,
        num_samples,
        progress,
        layout,
        target.unconstrained,
        num_warmup,
        resume,
    )


def _draw(
    runner,
    z,
    fallback,
    da,
    draw_keys,
    step_size,
    imm,
    num_samples,
    progress,
    layout,
    unconstrained,
    num_warmup,
    resume,
):
    """The draws, in blocks (the per-step keys do not depend on the blocking), as
    `Chains` after ``resume``'s draws. A Ctrl-C keeps the finished blocks as
    ``err.chains``."""
    lead = tuple(np.shape(z)[:-1])  # (chains,) or (datasets, chains)
    axis = len(lead)
    modes = np.full(lead + (num_samples, runner.cfg.thin), _DRAW, np.int32)
    bar = _progress_bar(progress, num_samples, "sampling")
    fresh = np.zeros(lead, bool)

    def chains_of(z, parts):
        z = np.asarray(z)
        empty = _Draw(
            np.zeros(lead + (0, z.shape[-1]), z.dtype),
            *(np.zeros(lead + (0,), t) for t in (z.dtype, bool, np.int32, z.dtype)),
        )
        out = _Draw(*(np.concatenate(p, axis=axis) for p in zip(*parts))) if parts else empty
        chains = Chains(
            samples=out.x,
            log_density=out.log_density,
            divergences=out.divergent.astype(bool),
            num_steps=out.num_steps,
            acceptance_rate=out.acceptance_rate,
            step_size=np.asarray(step_size),
            inverse_mass_matrix=np.asarray(imm),
            last_position=z,
            layout=layout,
            unconstrained=unconstrained,
            num_warmup=int(num_warmup),
        )
        return resume.concatenate(chains) if resume is not None else chains

    try:
        z, _, parts = runner.run(
            z, fallback, da, fresh, draw_keys, modes, step_size, imm, bar, keep=True
        )
    except KeyboardInterrupt as err:
        # Ctrl-C keeps the draws of the blocks that finished, resumable from where they end
        z_done, _, parts = err.caskax_done
        err.chains = chains_of(z_done, parts)
        raise
    return chains_of(z, parts)


def _check_resumed_kernel(resume: Chains):
    """Refuse a resumed kernel that cannot sample: a step size that is not a finite
    positive number, an inverse mass matrix that is not positive definite, or no
    finite last position."""
    step = np.asarray(resume.step_size, np.float64)
    if not np.all(np.isfinite(step) & (step > 0)):
        raise InferenceError(
            f"nuts: the resumed Chains' step_size must be finite and > 0 for every chain, got "
            f"{step.tolist()}. Resume from chains that nuts adapted, or run nuts again without resume."
        )
    imm = np.asarray(resume.inverse_mass_matrix)
    _check_metric(
        imm,
        imm.ndim == np.ndim(resume.last_position) + 1,
        "the resumed Chains' inverse_mass_matrix",
    )
    if not np.all(np.isfinite(np.asarray(resume.last_position, np.float64))):
        raise InferenceError(
            "nuts: the resumed Chains have no finite last_position (the state in the sampled "
            "space to continue from). Chains.from_arrays(..., unconstrained=True) needs f= to "
            "map its last draws there, or last_position= given."
        )


# -- batched Programs: N datasets, each its own chains and kernel --------------------------------------
class _BatchedTarget(eqx.Module):
    """A `BatchedProgram` seen from the sampler: `member` gives one dataset's `Target`
    from that dataset's slice of ``F``'s arrays (inside ``jax.vmap``)."""

    F: BatchedProgram
    unconstrained: bool = eqx.field(static=True)

    def member(self, arrays) -> Target:
        return Target(self.F.member_of(arrays), unconstrained=self.unconstrained)

    def over_datasets(self, fn, *args):
        """``fn(target_k, *args_k)`` for every dataset ``k`` (args with a leading
        dataset axis), vmapped."""
        return jax.vmap(
            lambda a, *xs: fn(self.member(a), *xs), in_axes=(self.F.in_axes,) + (0,) * len(args)
        )(self.F.arrays, *args)


@run_once_jit
def _keys_batched(keys, num_chains):
    return jax.vmap(lambda k: _keys.__wrapped__(k, num_chains))(keys)


@run_once_jit
def _to_z_datasets(bt, x0):
    return bt.over_datasets(lambda t, x: jax.vmap(t.to_z)(x), x0)


@run_once_jit
def _finite_datasets(bt, z):
    def one(t, zs):
        def ok(z):
            value, grad = jax.value_and_grad(t.logdensity)(z)
            return jnp.isfinite(value) & jnp.all(jnp.isfinite(grad))

        return jax.vmap(ok)(zs)

    return bt.over_datasets(one, z)


def _check_finite_datasets(bt, z, what):
    """Name the first dataset whose start (``z`` ``[N, C, n]``) has a non-finite
    log-density or gradient, with its params."""
    ok = np.asarray(_finite_datasets(bt, z))
    bad = np.argwhere(~ok)
    if bad.size:
        k = int(bad[0][0])
        check_finite_start(
            Target(bt.F[k], unconstrained=bt.unconstrained),
            np.asarray(z)[k],
            f"{what} (dataset {k} of {len(bt.F)})",
        )


def _seed_fit_impl(bt, z0, layout):
    # nuts's Laplace path on each dataset: the fit of its log-density from its first
    # start, as `_laplace_seed` runs it (`_fit_unchecked` on `target.logdensity`)
    def one(t, z):
        inner = Target(t.logdensity, unconstrained=False, density=False)
        res, ok = _fit_impl(inner, z, "lbfgs", 1000, 1e-6, None, layout)
        return res.x, res.value, ok

    return bt.over_datasets(one, z0)


_seed_fit = inference_jit(_seed_fit_impl)


@run_once_jit
def _seed_hessians(bt, x):
    return bt.over_datasets(
        lambda t, x: _hessian_of(Target(t.logdensity, unconstrained=False, density=False), x), x
    )


def _laplace_seed_batched(bt, z0, per_chain, normals, dense):
    """`_laplace_seed` for every dataset: ``(starts, seeds, fallback, failed)`` with
    ``failed`` the datasets whose fit or Laplace step failed (sampled on their own)."""
    n = z0.shape[-1]
    layout = tuple((f"x[{i}]", ()) for i in range(n))
    mode, value, start_ok = (np.asarray(a) for a in _seed_fit(bt, z0[:, 0], layout))
    if not np.all(start_ok) or per_chain:
        _check_finite_datasets(bt, z0 if per_chain else z0[:, :1], "nuts")
    hess = np.asarray(_seed_hessians(bt, mode), np.float64)
    names = names_of(layout)
    starts, seeds, fallback, failed = (
        z0.copy(),
        [],
        np.broadcast_to(mode[:, None], z0.shape).copy(),
        [],
    )
    for k in range(z0.shape[0]):
        try:
            if not np.isfinite(value[k]):
                raise InferenceError("the fit to the mode returned a non-finite log-density")
            cov = _cov(hess[k], names)
        except InferenceError:
            failed.append(k)
            seeds.append(np.eye(n) if dense else np.ones(n))
            continue
        if not per_chain:
            try:
                chol = np.linalg.cholesky(cov)
                starts[k] = (mode[k] + np.asarray(normals[k], np.float64) @ chol.T).astype(z0.dtype)
            except np.linalg.LinAlgError:
                starts[k] = fallback[k]
        seeds.append(cov if dense else np.diag(cov))
    seeds = np.stack(seeds).astype(z0.dtype)
    seeds = np.broadcast_to(seeds[:, None], z0.shape[:2] + seeds.shape[1:]).copy()
    return starts, seeds, fallback, failed


def _nuts_batched(
    F,
    key,
    x0,
    num_warmup,
    num_samples,
    num_chains,
    progress,
    valid,
    inverse_mass_matrix,
    chain_method,
    thin,
    resume,
    batch_size=None,
    out=None,
    lanes=None,
) -> Chains:
    """`nuts` on every dataset of a `BatchedProgram`: dataset ``k`` is sampled as
    ``nuts(F[k], jax.random.split(key, N)[k], ...)`` would sample it, all datasets and
    chains in one vmapped program (per chunk of ``batch_size`` datasets). Returns
    `Chains` with a leading dataset axis."""
    N = len(F)
    member = F[0]
    check_program(member, "nuts")
    file_resume = resume is True
    if file_resume and out is None:
        raise InferenceError(
            "nuts: resume=True continues an interrupted run written to out=...; give out."
        )
    resume = None if isinstance(resume, bool) else resume
    if chain_method != "vectorized":
        raise InferenceError(
            f"nuts: a batched Program maps its datasets and chains with jax.vmap; "
            f"chain_method={chain_method!r} is not available for it (use 'vectorized')."
        )
    if resume is not None:
        if resume.samples.ndim != 4 or resume.samples.shape[0] != N:
            raise InferenceError(
                f"nuts: resuming a batched Program of {N} datasets needs Chains with samples "
                f"[{N}, chains, draws, n], got shape {resume.samples.shape}."
            )
    num_chains = _checked_counts(num_chains, resume, num_samples, thin, num_warmup)
    n = int(sum(group_sizes(member)))
    layout = layout_of(member, n)
    unconstrained = Target(member, unconstrained=valid).unconstrained
    if resume is not None:
        _check_layout(resume, layout, unconstrained)
    if x0 is not None:
        x0 = np.asarray(x0)
        if x0.shape not in ((N, n), (N, num_chains, n)) or not np.issubdtype(x0.dtype, np.inexact):
            raise ShapeError(
                f"nuts: x0 has shape {x0.shape} ({x0.dtype}), expected floats of shape ({N}, {n}) "
                f"(one start per dataset) or ({N}, {num_chains}, {n}) (one per chain), laid out "
                f"as {names_of(layout)}."
            )
    if isinstance(inverse_mass_matrix, str) and inverse_mass_matrix != "laplace":
        raise InferenceError(
            f"nuts: inverse_mass_matrix must be None, an array or 'laplace', got {inverse_mass_matrix!r}."
        )
    impl = str(jax.random.key_impl(key))
    dataset_keys = jax.random.split(key, N)
    chunked = batch_size is not None or out is not None
    settings = (
        num_warmup,
        num_samples,
        num_chains,
        progress and not chunked,
        valid,
        inverse_mass_matrix,
        thin,
        impl,
        layout,
        unconstrained,
        lanes,
    )

    def solve(G, idx):
        part = _nuts_datasets(
            G,
            dataset_keys[idx],
            None if x0 is None else x0[idx],
            None if resume is None else resume.take(idx),
            *settings,
        )
        return {k: getattr(part, k) for k in _ARRAYS}

    if not chunked:
        return _nuts_datasets(F, dataset_keys, x0, resume, *settings)
    done = run_in_chunks(
        F,
        solve,
        batch_size=batch_size,
        progress=progress,
        out=out,
        resume=file_resume,
        what="nuts",
        meta={
            "layout": [[k, list(v)] for k, v in layout],
            "unconstrained": unconstrained,
            "key": np.asarray(jax.random.key_data(key)).tolist(),
            "num_warmup": int(num_warmup),
            "num_samples": int(num_samples),
            "num_chains": int(num_chains),
            "thin": int(thin),
        },
        inputs=(x0, None if resume is None else resume.last_position),
        shared=(
            inverse_mass_matrix
            if isinstance(inverse_mass_matrix, str) or inverse_mass_matrix is None
            else np.asarray(inverse_mass_matrix),
        ),
    )
    # each chunk's chains already follow its resumed draws
    return Chains(
        **{k: done[k] for k in _ARRAYS},
        layout=layout,
        unconstrained=unconstrained,
        num_warmup=int(num_warmup if resume is None else resume.num_warmup),
    )


def _checked_counts(num_chains, resume, num_samples, thin, num_warmup) -> int:
    """The number of chains (4, or the resumed run's), with every count checked."""
    if resume is not None:
        if num_chains is not None and num_chains != resume.num_chains:
            raise InferenceError(
                f"nuts: num_chains={num_chains!r} but the resumed Chains hold {resume.num_chains} "
                "chains; a resumed run continues each of its chains. Leave num_chains out."
            )
        num_chains = resume.num_chains
    elif num_chains is None:
        num_chains = 4
    for name, value, low in (
        ("num_samples", num_samples, 1),
        ("num_chains", num_chains, 1),
        ("thin", thin, 1),
        ("num_warmup", num_warmup, 0),
    ):
        if int(value) != value or value < low:
            raise InferenceError(f"nuts: {name} must be an integer >= {low}, got {value!r}.")
    return int(num_chains)


def _nuts_datasets(
    F,
    dataset_keys,
    x0,
    resume,
    num_warmup,
    num_samples,
    num_chains,
    progress,
    valid,
    inverse_mass_matrix,
    thin,
    impl,
    layout,
    unconstrained,
    lanes,
) -> Chains:
    """`_nuts_batched` on one chunk of datasets, each with its own key; with several
    local devices that divide the chunk, each device samples its share of the datasets
    (a dataset's chains stay on one device)."""
    N, n = len(F), len(names_of(layout))
    mesh = datasets_mesh(N)
    (F,) = on_devices(F)
    put = _on_mesh(mesh)
    dataset_keys = put(dataset_keys)
    member = F[0]
    bt = _BatchedTarget(F, unconstrained)
    # spread over devices, every dataset of a device runs side by side (see _lanes)
    chains_map = dict(chain_method="datasets", mesh=mesh, lanes=None if mesh is not None else lanes)
    runner = _Runner(bt, _block_size(num_samples), _Sampling(int(thin), impl), chains_map)
    failed = []

    if resume is not None:
        z0 = np.asarray(resume.last_position)
        _, _, draw_keys = (np.asarray(a) for a in _keys_batched(dataset_keys, num_chains))
        step_size = np.asarray(resume.step_size, dtype=z0.dtype)
        imm = np.asarray(resume.inverse_mass_matrix, dtype=z0.dtype)
        _check_resumed_kernel(resume)
        _check_finite_datasets(bt, z0, "nuts (resume)")
        z, fallback, da, num_warmup = z0, z0, _fresh_da(z0.shape[:-1], z0.dtype), 0
    else:
        laplace_path = isinstance(inverse_mass_matrix, str)
        if x0 is None:
            init = F.init
            init = jnp.concatenate(init, axis=-1) if isinstance(init, tuple) else init
            x0 = F.from_valid(init) if F.valid else init
        x0 = np.asarray(x0)
        per_chain = x0.ndim == 3
        given = x0
        z0 = np.asarray(
            _to_z_datasets(
                bt, put(x0 if per_chain else np.broadcast_to(x0[:, None], (N, num_chains, n)))
            )
        )
        if not laplace_path:
            _check_finite_datasets(bt, z0 if per_chain else z0[:, :1], "nuts")
        start_keys, warm_keys, draw_keys = (
            np.asarray(a) for a in _keys_batched(dataset_keys, num_chains)
        )
        normals = np.stack([_normals(k, num_chains, n) for k in start_keys])
        runner.compile_ahead(z0, _imm_like(z0, inverse_mass_matrix), warm_keys)
        try:
            if laplace_path:
                z0, seeds, fallback, failed = _laplace_seed_batched(
                    bt, z0, per_chain, normals, dense=n <= _DENSE_MAX
                )
            else:
                _, seed, _ = _metric_seed(
                    Target(member, unconstrained=valid),
                    z0[0],
                    per_chain,
                    normals[0],
                    inverse_mass_matrix,
                )
                seeds = (
                    None
                    if seed is None
                    else np.broadcast_to(seed, z0.shape[:2] + seed.shape).copy()
                )
                fallback = z0
            if laplace_path and num_warmup > 0:
                z, da, step_size = runner.adapt_step_size(
                    z0, fallback, seeds, warm_keys, num_warmup, progress
                )
                imm = seeds
            else:
                z, step_size, imm = _window_warmup(
                    bt, z0, seeds, warm_keys, num_warmup, progress, chains_map, impl
                )
                fallback, da = z, _fresh_da(z0.shape[:-1], z0.dtype)
        except KeyboardInterrupt as err:
            err.chains = None  # no draws and no adapted kernel yet
            raise
        finally:
            runner.wait()
    chains = _draw(
        runner,
        z,
        fallback,
        da,
        draw_keys,
        step_size,
        imm,
        num_samples,
        progress,
        layout,
        bt.unconstrained,
        num_warmup,
        resume,
    )
    if failed:
        chains = _sample_alone(
            chains, F, dataset_keys, failed, given, num_warmup, num_samples, num_chains, valid, thin
        )
    return chains


def _on_mesh(mesh):
    """A function placing dataset-leading arrays split over ``mesh``'s ``"datasets"``
    axis (the identity without a mesh)."""
    if mesh is None:
        return lambda tree: tree
    split = NamedSharding(mesh, PartitionSpec("datasets"))
    return lambda tree: jax.device_put(tree, split)


def _sample_alone(
    chains, F, dataset_keys, failed, x0, num_warmup, num_samples, num_chains, valid, thin
):
    """Datasets whose Laplace step failed fall back, as `nuts` on one Program does, to
    window adaptation; they run on their own and replace their rows of ``chains``."""
    warnings.warn(
        f"nuts: inverse_mass_matrix='laplace' failed on datasets {failed[:10]}"
        f"{' ...' if len(failed) > 10 else ''} of {len(F)}; those adapt from the identity, "
        "sampled one by one.",
        CaskaxWarning,
        stacklevel=3,
    )
    fields = {
        k: np.array(getattr(chains, k))
        for k in (
            "samples",
            "log_density",
            "divergences",
            "num_steps",
            "acceptance_rate",
            "step_size",
            "inverse_mass_matrix",
            "last_position",
        )
    }
    for k in failed:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", CaskaxWarning)  # said once above for all
            alone = nuts(
                F[k],
                dataset_keys[k],
                x0[k],
                num_warmup=num_warmup,
                num_samples=num_samples,
                num_chains=num_chains,
                progress=False,
                valid=valid,
                thin=thin,
            )
        for name, dest in fields.items():
            value = np.asarray(getattr(alone, name))
            if dest.ndim == value.ndim + 2:  # a diagonal mass matrix in a dense batch
                value = np.stack([np.diag(v) for v in value])
            dest[k] = value
    return dataclasses.replace(chains, **fields)
