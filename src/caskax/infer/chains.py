"""MCMC chains: draws, sampler diagnostics, the adapted kernel, and HDF5 files."""

import dataclasses
import json
import math
import os

import jax
import numpy as np

from ..errors import InferenceError
from ._target import Target, layout_of, names_of, split_by_name

__all__ = ["Chains", "Summary"]

_ARRAYS = (
    "samples",
    "log_density",
    "divergences",
    "num_steps",
    "acceptance_rate",
    "step_size",
    "inverse_mass_matrix",
    "last_position",
)


@dataclasses.dataclass(frozen=True, eq=False)
class Chains:
    """Draws from `nuts` and what is needed to continue them.

    **Fields** (numpy arrays, ``C`` chains of ``D`` draws of ``n`` entries):

    - ``samples`` ``[C, D, n]``: draws in constrained space (the Program's ``x``).
    - ``log_density`` ``[C, D]``: the sampled log-density at each draw (in the space
      sampled: it includes ``log_prior`` and, with ``valid=True``, the Jacobian).
    - ``divergences`` ``[C, D]`` (bool), ``num_steps`` ``[C, D]`` (leapfrog steps),
      ``acceptance_rate`` ``[C, D]``.
    - ``step_size`` ``[C]``, ``inverse_mass_matrix`` ``[C, n]`` or ``[C, n, n]``,
      ``last_position`` ``[C, n]``: the adapted kernel and the last state, in the
      sampled space (``u`` when ``unconstrained``), used by ``nuts(..., resume=chains)``.
    - ``layout``: ``((name, shape), ...)`` per param; ``unconstrained``: the space
      sampled; ``num_warmup``: warmup steps run.

    Example:
        >>> import caskax as cx, numpy as np
        >>> c = cx.Chains.from_arrays(np.zeros((2, 3, 1)), layout=(("a", ()),))
        >>> c.by_name()["a"].shape
        (2, 3)
    """

    samples: np.ndarray
    log_density: np.ndarray
    divergences: np.ndarray
    num_steps: np.ndarray
    acceptance_rate: np.ndarray
    step_size: np.ndarray
    inverse_mass_matrix: np.ndarray
    last_position: np.ndarray
    layout: tuple
    unconstrained: bool = True
    num_warmup: int = 0

    @classmethod
    def from_arrays(cls, samples, layout=None, f=None, **fields) -> "Chains":
        """Chains from a ``[C, D, n]`` array of constrained draws; other fields may be
        given by keyword and default to zeros (unit step size and mass matrix).

        ``last_position`` lies in the sampled space: with ``unconstrained=True`` (the
        default, as `nuts` samples a Program) it is ``f.to_valid`` of each chain's last
        draw, so pass the Program as ``f`` to resume from these chains (its layout is
        then the default ``layout``). Without ``f`` it is the last draw itself when
        ``unconstrained=False``, and NaN (refused by ``nuts(..., resume=)``) when the
        map is unknown.

        Example:
            >>> import caskax as cx, numpy as np
            >>> from caskax.examples import Gaussian1D
            >>> f = cx.compile(Gaussian1D("lc", t0=0.0, sigma=1.0, peak_flux=1.0).to_dynamic("sigma"),
            ...                "flux", 0.0)
            >>> c = cx.Chains.from_arrays(np.full((2, 3, 1), np.e), f=f)   # sigma: valid (0, inf)
            >>> c.last_position.round(4).tolist(), c.names
            ([[1.0], [1.0]], ['lc.sigma'])
        """
        samples = np.asarray(samples)
        c, d, n = samples.shape
        if layout is None:
            layout = layout_of(f, n) if f is not None else tuple((f"x[{i}]", ()) for i in range(n))
        unconstrained = bool(fields.get("unconstrained", True))
        last = samples[:, -1] if d else np.zeros((c, n), samples.dtype)
        if unconstrained and "last_position" not in fields:
            last = _to_sampled_space(f, last) if f is not None else np.full((c, n), np.nan)
        defaults = dict(
            log_density=np.zeros((c, d)),
            divergences=np.zeros((c, d), bool),
            num_steps=np.zeros((c, d), np.int32),
            acceptance_rate=np.ones((c, d)),
            step_size=np.ones(c),
            inverse_mass_matrix=np.ones((c, n)),
            last_position=last,
        )
        defaults.update(fields)
        return cls(samples=samples, layout=tuple(layout), **defaults)

    # -- shape and names ---------------------------------------------------------------
    @property
    def num_chains(self) -> int:
        return self.samples.shape[-3]

    @property
    def num_draws(self) -> int:
        return self.samples.shape[-2]

    @property
    def num_datasets(self) -> int | None:
        """``N`` for chains of a batched Program (every field then leads with a dataset
        axis: ``samples`` ``[N, C, D, n]``), None for one Program's."""
        return self.samples.shape[0] if self.samples.ndim == 4 else None

    def take(self, indices) -> "Chains":
        """The datasets at ``indices`` of chains from a batched Program, as such chains."""
        if self.num_datasets is None:
            raise InferenceError(
                "Chains.take selects datasets of a batched run; these chains have no dataset axis."
            )
        idx = np.asarray(indices)
        return dataclasses.replace(self, **{f: np.asarray(getattr(self, f))[idx] for f in _ARRAYS})

    def __getitem__(self, k) -> "Chains":
        """Dataset ``k``'s chains (of chains from a batched Program).

        Example:
            >>> import caskax as cx, numpy as np
            >>> c = cx.Chains.from_arrays(np.zeros((2, 3, 1)))
            >>> batched = cx.Chains(**{**{f: np.stack([getattr(c, f)] * 5) for f in
            ...     ("samples", "log_density", "divergences", "num_steps", "acceptance_rate",
            ...      "step_size", "inverse_mass_matrix", "last_position")}, "layout": c.layout})
            >>> batched.num_datasets, batched[4].samples.shape
            (5, (2, 3, 1))
        """
        if self.num_datasets is None:
            raise InferenceError(
                "Chains[k] selects dataset k of a batched run; these chains have no dataset axis."
            )
        k = int(k)
        if not -self.num_datasets <= k < self.num_datasets:
            raise InferenceError(
                f"Chains: dataset {k} out of range for {self.num_datasets} datasets."
            )
        return dataclasses.replace(self, **{f: np.asarray(getattr(self, f))[k] for f in _ARRAYS})

    @property
    def names(self) -> list:
        """One label per entry (``"SN.x0[1]"``)."""
        return names_of(self.layout)

    def __repr__(self):
        datasets = f"{self.num_datasets} datasets x " if self.num_datasets is not None else ""
        return (
            f"Chains({datasets}{self.num_chains} chains x {self.num_draws} draws, "
            f"{self.samples.shape[-1]} entries, {int(np.sum(self.divergences))} divergences)"
        )

    def by_name(self) -> dict:
        """``{param name: array[C, D, *param shape]}``.

        Example:
            >>> import caskax as cx, numpy as np
            >>> c = cx.Chains.from_arrays(np.zeros((2, 3, 3)), layout=(("x0", (2,)), ("q", ())))
            >>> {k: v.shape for k, v in c.by_name().items()}
            {'x0': (2, 3, 2), 'q': (2, 3)}
        """
        return split_by_name(self.layout, self.samples, self.samples.shape[:-1])

    def concatenate(self, later: "Chains") -> "Chains":
        """These draws followed by ``later``'s (same chains); the kernel and last
        position are ``later``'s.

        Example:
            >>> import caskax as cx, numpy as np
            >>> a = cx.Chains.from_arrays(np.zeros((2, 3, 1)))
            >>> a.concatenate(cx.Chains.from_arrays(np.ones((2, 4, 1)))).samples.shape
            (2, 7, 1)
        """
        if (
            later.layout != self.layout
            or later.num_chains != self.num_chains
            or later.num_datasets != self.num_datasets
        ):
            raise InferenceError(
                "Chains.concatenate: the chains differ in layout, count or datasets."
            )
        joined = {
            k: np.concatenate(
                [getattr(self, k), getattr(later, k)], axis=-2 if k == "samples" else -1
            )
            for k in ("samples", "log_density", "divergences", "num_steps", "acceptance_rate")
        }
        return dataclasses.replace(later, num_warmup=self.num_warmup, **joined)

    # -- diagnostics --------------------------------------------------------------------
    def summary(self, prob: float = 0.90) -> "Summary":
        """Per-entry mean, sd, central ``prob`` interval, bulk and tail ESS and
        rank-normalised split R-hat (Vehtari et al. 2021, as in ArviZ and Stan), with
        numpyro's ESS and split-R-hat estimators.

        Returns a `Summary`: ``str()`` is a table, ``summary[name]`` a dict of floats.
        Chains of a batched Program give one table with a dataset column, rows keyed
        ``(dataset, name)``; ``summary[k]`` is dataset ``k``'s own `Summary`.

        Example:
            >>> import caskax as cx, numpy as np
            >>> draws = np.random.default_rng(0).normal(size=(4, 500, 1))
            >>> row = cx.Chains.from_arrays(draws, layout=(("a", ()),)).summary()["a"]
            >>> abs(row["mean"]) < 0.1, row["r_hat"] < 1.01, row["ess_bulk"] > 1000
            (True, True, True)
        """
        if self.num_datasets is not None:
            per = [self[k].summary(prob) for k in range(self.num_datasets)]
            rows = {(k, name): row for k, s in enumerate(per) for name, row in s.rows.items()}
            return Summary(rows, int(np.sum(self.divergences)), datasets=per)
        x = np.asarray(self.samples, np.float64)
        lo, hi = (1 - prob) / 2, 1 - (1 - prob) / 2
        cols = {
            "mean": x.mean(axis=(0, 1)),
            "sd": x.std(axis=(0, 1), ddof=1)
            if x.shape[0] * x.shape[1] > 1
            else np.zeros(x.shape[2]),
            f"{100 * lo:g}%": np.quantile(x, lo, axis=(0, 1)),
            f"{100 * hi:g}%": np.quantile(x, hi, axis=(0, 1)),
            **_diagnostics(x),
        }
        rows = {
            name: {k: float(v[i]) for k, v in cols.items()} for i, name in enumerate(self.names)
        }
        return Summary(rows, int(np.sum(self.divergences)))

    def to_arviz(self):
        """An ``arviz.InferenceData`` with one posterior variable per param (shaped like
        the param) and sample stats ``lp``, ``diverging``, ``n_steps``,
        ``acceptance_rate``, ``step_size``.

        Example:
            >>> import caskax as cx, numpy as np
            >>> idata = cx.Chains.from_arrays(np.zeros((2, 5, 1)), layout=(("a", ()),)).to_arviz()
            >>> dict(idata.posterior["a"].sizes)
            {'chain': 2, 'draw': 5}
        """
        if self.num_datasets is not None:
            raise InferenceError("to_arviz takes one dataset's chains: chains[k].to_arviz().")
        import arviz as az

        steps = np.broadcast_to(self.step_size[:, None], self.log_density.shape)
        return az.from_dict(
            posterior=self.by_name(),
            sample_stats={
                "lp": self.log_density,
                "diverging": self.divergences,
                "n_steps": self.num_steps,
                "acceptance_rate": self.acceptance_rate,
                "step_size": np.asarray(steps),
            },
        )

    # -- files --------------------------------------------------------------------------
    def save(self, path) -> None:
        """Write the chains to an HDF5 file, with the guarantees of `caskax.io`: written
        beside ``path`` and renamed over it under the file's lock, so a crash leaves the
        old file or the new one; refused with `StateFileError` when the disk has no room.
        Read back with ``Chains.load(path)``.

        Example:
            >>> import os, tempfile, caskax as cx, numpy as np
            >>> path = os.path.join(tempfile.mkdtemp(), "chains.h5")
            >>> cx.Chains.from_arrays(np.arange(6.0).reshape(2, 3, 1)).save(path)
            >>> cx.Chains.load(path).samples[:, :, 0].tolist()
            [[0.0, 1.0, 2.0], [3.0, 4.0, 5.0]]
        """
        from .. import io

        arrays = {k: np.asarray(getattr(self, k)) for k in _ARRAYS}

        def write(h5):
            group = h5.create_group("chains")
            for k, v in arrays.items():
                group.create_dataset(k, data=v)
            group.attrs["layout"] = json.dumps([[n, list(s)] for n, s in self.layout])
            group.attrs["unconstrained"] = bool(self.unconstrained)
            group.attrs["num_warmup"] = int(self.num_warmup)
            group.attrs["format"] = "caskax.Chains/1"

        io._replace_file(os.fspath(path), write, sum(v.nbytes for v in arrays.values()))

    @classmethod
    def load(cls, path) -> "Chains":
        """Read chains written by `save`; any problem with the file (missing, not HDF5,
        truncated, without the chains) is a `StateFileError` naming the path."""
        import h5py

        from .. import io
        from ..errors import StateFileError

        path = os.fspath(path)
        with io._reading(path, "Chains.load") as h5:
            group = h5.get("chains")
            if not isinstance(group, h5py.Group):
                raise StateFileError(
                    f"'{path}' holds no caskax chains (no 'chains' group); write them with "
                    "Chains.save(path)."
                )
            missing = [
                k
                for k in (*_ARRAYS, "layout", "unconstrained", "num_warmup")
                if k not in group and k not in group.attrs
            ]
            if missing:
                raise StateFileError(
                    f"'{path}': the 'chains' group lacks {', '.join(missing)}; was it "
                    "written by Chains.save?"
                )
            arrays = {k: group[k][()] for k in _ARRAYS}
            try:
                layout = tuple((n, tuple(s)) for n, s in json.loads(group.attrs["layout"]))
            except (TypeError, ValueError):
                raise StateFileError(
                    f"'{path}': the chains' 'layout' attr is not the JSON list of "
                    "[name, shape] pairs that Chains.save writes."
                ) from None
            return cls(
                **arrays,
                layout=layout,
                unconstrained=bool(group.attrs["unconstrained"]),
                num_warmup=int(group.attrs["num_warmup"]),
            )


def _to_sampled_space(f, x):
    """Constrained draws ``[C, n]`` -> the space `nuts` samples ``f`` in (``u``)."""
    target = Target(f, unconstrained=True)
    return np.asarray(jax.vmap(target.to_z)(np.asarray(x)))


def _split(x):
    """[C, D, n] -> [2C, D // 2, n]: each chain cut in halves (the first draw dropped
    when D is odd)."""
    half = x.shape[1] // 2
    x = x[:, x.shape[1] - 2 * half :]
    return np.concatenate([x[:, :half], x[:, half:]], axis=0)


def _average_ranks(flat):
    """Ranks 1..N down each column of ``flat`` [N, n], tied values sharing the mean of
    their ranks (scipy.stats.rankdata's "average", without importing scipy.stats: that
    took 0.5 s, half the worked example's summary). NUTS repeats a draw when it
    rejects, so ties do occur."""
    order = np.argsort(flat, axis=0, kind="stable")
    ordered = np.take_along_axis(flat, order, axis=0)
    size = flat.shape[0]
    ranks = np.empty(flat.shape)
    for j in range(flat.shape[1]):
        starts = np.flatnonzero(np.r_[True, ordered[1:, j] != ordered[:-1, j]])
        ends = np.r_[starts[1:], size]  # each run of equal values holds ranks start+1..end
        ranks[order[:, j], j] = np.repeat(0.5 * (starts + 1 + ends), ends - starts)
    return ranks


def _rank_normal(x):
    """Pooled ranks mapped through the normal quantile function (Vehtari et al. 2021)."""
    from scipy.special import ndtri  # imported by jax already

    flat = x.reshape(-1, x.shape[-1])
    return ndtri((_average_ranks(flat) - 0.375) / (flat.shape[0] + 0.25)).reshape(x.shape)


def _diagnostics(x) -> dict:
    """ess_bulk, ess_tail and r_hat of ``x`` [C, D, n], with numpyro's estimators."""
    from numpyro.diagnostics import effective_sample_size, split_gelman_rubin

    n = x.shape[-1]
    if x.shape[1] < 4:
        nan = np.full(n, np.nan)
        return {"ess_bulk": nan, "ess_tail": nan, "r_hat": nan}
    with np.errstate(divide="ignore", invalid="ignore"):
        ess_bulk = effective_sample_size(_rank_normal(_split(x)))
        lo, hi = np.quantile(x, [0.05, 0.95], axis=(0, 1))
        tails = [effective_sample_size(_split((x <= q).astype(np.float64))) for q in (lo, hi)]
        ess_tail = np.minimum(*tails)
        folded = np.abs(x - np.median(x, axis=(0, 1)))
        if x.shape[0] * (x.shape[1] // 2) > 1:
            r_hat = np.maximum(
                split_gelman_rubin(_rank_normal(x)), split_gelman_rubin(_rank_normal(folded))
            )
        else:
            r_hat = np.full(n, np.nan)
    # numpyro's estimator can exceed any sensible value, or turn negative, when short
    # chains are anticorrelated; cap it as arviz does, at draws * log10(draws)
    total = x.shape[0] * x.shape[1]
    cap = total * np.log10(total)
    ess_bulk, ess_tail = (np.where((e < 0) | (e > cap), cap, e) for e in (ess_bulk, ess_tail))
    return {
        "ess_bulk": np.reshape(ess_bulk, n),
        "ess_tail": np.reshape(ess_tail, n),
        "r_hat": np.reshape(r_hat, n),
    }


class Summary:
    """A summary table of chains: ``str(summary)`` prints it, ``summary[name]`` is a
    dict of the columns for one entry, ``summary.rows`` all of them.

    For chains of a batched Program, one table with a dataset column: ``rows`` is keyed
    ``(dataset, name)`` and ``summary[k]`` is dataset ``k``'s own `Summary`.
    """

    def __init__(self, rows: dict, divergences: int = 0, datasets: list | None = None):
        self.rows = rows
        self.divergences = divergences
        self.datasets = datasets  # per-dataset Summaries of a batched run

    def __getitem__(self, name):
        if self.datasets is not None and isinstance(name, (int, np.integer)):
            return self.datasets[name]
        return self.rows[name]

    def __iter__(self):
        return iter(self.rows)

    @property
    def columns(self) -> list:
        return list(next(iter(self.rows.values())).keys()) if self.rows else []

    def __str__(self):
        batched = self.datasets is not None
        labels = {key: key[1] if batched else key for key in self.rows}
        width = max([len("name")] + [len(n) for n in labels.values()])
        head = (
            (f"{'dataset':>7}  " if batched else "")
            + f"{'name':<{width}}"
            + "".join(f"{c:>11}" for c in self.columns)
        )
        lines = [head]
        for key, row in self.rows.items():
            cells = "".join(
                f"{v:>11.1f}" if c.startswith("ess") else f"{v:>11.4g}" for c, v in row.items()
            )
            lines.append((f"{key[0]:>7}  " if batched else "") + f"{labels[key]:<{width}}{cells}")
        lines.append(f"divergences: {self.divergences}")
        return "\n".join(lines)

    __repr__ = __str__


def _check_layout(chains: Chains, layout: tuple, unconstrained: bool):
    """Raise unless ``chains`` were drawn from a Program with this layout."""
    if tuple(chains.layout) != tuple(layout) or bool(chains.unconstrained) != bool(unconstrained):
        raise InferenceError(
            "nuts: resume chains do not match this Program: chains have layout "
            f"{list(chains.layout)} (unconstrained={chains.unconstrained}), the Program has "
            f"{list(layout)} (unconstrained={unconstrained}). Resume only with chains from "
            "the same model and the same valid= setting."
        )
    n = sum(math.prod(s) for _, s in layout)
    if chains.last_position.shape[-1] != n:
        raise InferenceError(
            f"nuts: resume chains hold {chains.last_position.shape[-1]} entries, expected {n}."
        )
