"""The seed's models, built three ways for the benchmarks.

* caskax: the tutorial's modules from `caskax.examples.models`, assembled as the seed
  assembles them (stage 2: five image models sharing one galaxy, SN positions linked;
  stage 3: each SN flux a function pointer to one light curve; likelihood3: the
  hierarchical model vmapped over epochs).
* hand JAX: the same models written as plain JAX functions of one flat vector, in the
  order of caskax's `Program.names`. ``hand_*`` repeat the module tree's arithmetic
  (likelihood2's `Combined` evaluates the shared galaxy once per image), which is what
  measures caskax's own overhead; ``hand_*_opt`` are what a JAX author would write
  from scratch (galaxy and SN profile once, fluxes broadcast): the absolute floor.
* caskade: the tutorial's own code (caskade 1.1.5), written against `caskade.backend` so
  that one definition serves its torch and its jax backend. caskade picks its backend
  when it is imported (``CASKADE_BACKEND``), so each backend runs in its own process.

Two scaling families sit beside the seed's models: the joint model with more epochs
(`caskax_stage2(mock_data(n_epochs=...))`) and `*_nodes(nodes_data(k))`, one image
holding ``k`` point sources that share one PSF-width param (``k - 1`` links to source
0's) and read their fluxes through ``k`` function pointers to one light curve.

Imports of jax, caskax and caskade happen inside the builders, so a caskade-torch
process never loads jax and a jax process never loads torch.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

__all__ = [
    "TRUTH",
    "Data",
    "mock_data",
    "nodes_data",
    "stage3_names",
    "hier_names",
    "stage2_names",
    "nodes_names",
    "caskax_stage2",
    "caskax_stage3",
    "caskax_hier",
    "caskax_nodes",
    "hand_stage2",
    "hand_stage2_opt",
    "hand_stage3",
    "hand_stage3_opt",
    "hand_hier",
    "hand_nodes",
    "hand_nodes_opt",
    "caskade_stage2",
    "caskade_stage3",
    "caskade_hier",
    "caskade_nodes",
]

# The tutorial's truth and starting values.
TRUTH = dict(
    sn_x0=(-0.35, -0.2),
    sn_q=1.0,
    sn_phi=0.0,
    sn_sigma=0.05,
    t0=-3.0,
    lc_sigma=2.0,
    peak_flux=0.25,
    galaxy=dict(x0=(0.2, 0.2), q=0.6, phi=0.5, sigma=0.3, flux=1.0),
)
FLUX0 = 0.2  # stage-2 starting flux of every epoch
LC_SIGMA0 = 2.5  # stages 3 and likelihood3 start the light-curve width here
SIGMA_READ = 0.1
EXP_TIME = 25.0


class Data(NamedTuple):
    """Mock observations as float32 numpy arrays (shared by every backend)."""

    x: np.ndarray  # [n, n] pixel centres, ``ij`` indexing on [-1, 1]^2
    y: np.ndarray
    times: np.ndarray  # [epochs]
    images: np.ndarray  # [epochs, n, n]
    sigma_read: float
    exp_time: float


def _np_gauss(x, y, x0, q, phi, sigma, flux):
    dx, dy = x - x0[0], y - x0[1]
    s, c = np.sin(phi), np.cos(phi)
    u, v = c * dx - s * dy, s * dx + c * dy
    r = np.sqrt(u**2 + (v * q) ** 2)
    return flux * np.exp(-(r**2) / sigma**2) / np.sqrt(2 * np.pi * sigma**2)


def _np_lightcurve(t, t0, sigma, peak_flux):
    return peak_flux * np.exp(-(((t + t0) / sigma) ** 2))


def _noisy(rng, clean, sigma_read, exp_time):
    read = sigma_read * rng.standard_normal(clean.shape)
    poisson = np.sqrt(clean * exp_time) / exp_time * rng.standard_normal(clean.shape)
    return (clean + read + poisson).astype(np.float32)


def _grid(n_pix):
    axis = np.linspace(-1.0, 1.0, n_pix, dtype=np.float32)
    x, y = np.meshgrid(axis, axis, indexing="ij")
    return x, y


def mock_data(n_epochs: int = 5, n_pix: int = 50, seed: int = 1123) -> Data:
    """The tutorial's mock data: a static galaxy plus an SN following a Gaussian light
    curve, observed at ``linspace(0, 6, n_epochs)`` with read and Poisson-like noise."""
    x, y = _grid(n_pix)
    times = np.linspace(0.0, 6.0, n_epochs, dtype=np.float32)
    g = TRUTH["galaxy"]
    galaxy = _np_gauss(x, y, g["x0"], g["q"], g["phi"], g["sigma"], g["flux"])
    flux = _np_lightcurve(times, TRUTH["t0"], TRUTH["lc_sigma"], TRUTH["peak_flux"])
    sn = _np_gauss(x, y, TRUTH["sn_x0"], 1.0, 0.0, TRUTH["sn_sigma"], 1.0)
    clean = galaxy[None] + flux[:, None, None] * sn[None]
    rng = np.random.default_rng(seed)
    return Data(x, y, times, _noisy(rng, clean, SIGMA_READ, EXP_TIME), SIGMA_READ, EXP_TIME)


class NodesData(NamedTuple):
    x: np.ndarray
    y: np.ndarray
    positions: np.ndarray  # [k, 2]
    times: np.ndarray  # [k]
    image: np.ndarray  # [n, n]
    sigma_read: float
    exp_time: float


PSF0 = 0.08


def nodes_data(k: int, n_pix: int = 32, seed: int = 7) -> NodesData:
    """One image of ``k`` point sources at fixed positions whose fluxes follow the light
    curve at ``k`` times (the node-count scaling family)."""
    x, y = _grid(n_pix)
    rng = np.random.default_rng(seed)
    positions = rng.uniform(-0.8, 0.8, size=(k, 2)).astype(np.float32)
    times = np.linspace(0.0, 6.0, k, dtype=np.float32)
    flux = _np_lightcurve(times, TRUTH["t0"], TRUTH["lc_sigma"], TRUTH["peak_flux"])
    clean = np.zeros_like(x)
    for (px, py), f in zip(positions, flux):
        clean = clean + _np_gauss(x, y, (px, py), 1.0, 0.0, PSF0, f)
    return NodesData(
        x, y, positions, times, _noisy(rng, clean, SIGMA_READ, EXP_TIME), SIGMA_READ, EXP_TIME
    )


# ---------------------------------------------------------------------------------------
# Flat-vector labels, in caskax's order (depth-first, a shared node at its first visit,
# a pointer's inputs right after the pointer). The hand functions read x by these labels,
# so they follow whatever order a caskax Program reports.
_GAL = ["Galaxy.x0[0]", "Galaxy.x0[1]", "Galaxy.q", "Galaxy.phi", "Galaxy.sigma", "Galaxy.flux"]
_LC = ["lightcurve.t0", "lightcurve.sigma", "lightcurve.peak_flux"]


def stage2_names(n_epochs: int) -> list[str]:
    return (
        ["SN0.x0[0]", "SN0.x0[1]", "SN0.flux"] + _GAL + [f"SN{i}.flux" for i in range(1, n_epochs)]
    )


def stage3_names() -> list[str]:
    return ["SN0.x0[0]", "SN0.x0[1]"] + _LC + _GAL


def hier_names() -> list[str]:
    return ["SN.x0[0]", "SN.x0[1]"] + _GAL + _LC


def nodes_names() -> list[str]:
    return ["src0.sigma"] + _LC


def _init_values(names, n_epochs=0):
    g = TRUTH["galaxy"]
    table = {
        "Galaxy.x0[0]": g["x0"][0],
        "Galaxy.x0[1]": g["x0"][1],
        "Galaxy.q": g["q"],
        "Galaxy.phi": g["phi"],
        "Galaxy.sigma": g["sigma"],
        "Galaxy.flux": g["flux"],
        "lightcurve.t0": TRUTH["t0"],
        "lightcurve.sigma": LC_SIGMA0,
        "lightcurve.peak_flux": TRUTH["peak_flux"],
        "src0.sigma": PSF0,
    }
    out = []
    for n in names:
        if n.endswith(".x0[0]") and n.startswith("SN"):
            out.append(TRUTH["sn_x0"][0])
        elif n.endswith(".x0[1]") and n.startswith("SN"):
            out.append(TRUTH["sn_x0"][1])
        elif n.startswith("SN") and n.endswith(".flux"):
            out.append(FLUX0)
        else:
            out.append(table[n])
    return np.asarray(out, dtype=np.float32)


# ---------------------------------------------------------------------------------------
# caskax
def _cx_galaxy():
    from caskax.examples.models import Gaussian

    g = TRUTH["galaxy"]
    return Gaussian(
        "Galaxy", x0=list(g["x0"]), q=g["q"], phi=g["phi"], sigma=g["sigma"], flux=g["flux"]
    ).to_dynamic()


def caskax_stage2(data: Data):
    """likelihood2 at stage 2: one shared galaxy node, SN x0 of images 1.. linked to
    image 0's, one dynamic flux per epoch."""
    from caskax.examples.models import Combined, Gaussian, Likelihood, Stack

    galaxy = _cx_galaxy()
    images = []
    for i in range(len(data.times)):
        sn = Gaussian(
            f"SN{i}", x0=list(TRUTH["sn_x0"]), q=1.0, phi=0.0, sigma=TRUTH["sn_sigma"], flux=FLUX0
        ).to_dynamic("x0", "flux")
        if i > 0:
            sn = sn.set("x0", images[0].models[0].x0)
        images.append(Combined(f"image{i}", data.x, data.y, [sn, galaxy]))
    return Likelihood(
        "likelihood2", Stack("images", images), data.images, data.sigma_read, data.exp_time
    )


def caskax_stage3(data: Data):
    """likelihood2 at stage 3: the stage-2 tree with each SN flux a function pointer
    to one light-curve module at that epoch's time."""
    import caskax as cx
    from caskax.examples.models import Gaussian1D

    like = caskax_stage2(data)
    lc = Gaussian1D(
        "lightcurve", t0=TRUTH["t0"], sigma=LC_SIGMA0, peak_flux=TRUTH["peak_flux"]
    ).to_dynamic()
    for i, t in enumerate(data.times):
        like = like.set(
            f"model.models[{i}].models[0].flux",
            cx.Pointer(lambda lc, t: lc.flux(t), lc, np.float32(t)),
        )
    return like


def caskax_hier(data: Data):
    """likelihood3: one SN + galaxy model vmapped over epochs, the SN flux live."""
    from caskax.examples.models import Gaussian, Gaussian1D, Hierarchical, Likelihood

    sn = Gaussian("SN", x0=list(TRUTH["sn_x0"]), q=1.0, phi=0.0, sigma=TRUTH["sn_sigma"])
    sn = sn.to_static("flux").to_dynamic("x0")
    lc = Gaussian1D(
        "lightcurve", t0=TRUTH["t0"], sigma=LC_SIGMA0, peak_flux=TRUTH["peak_flux"]
    ).to_dynamic()
    model = Hierarchical("hierarchical", sn, _cx_galaxy(), lc, data.x, data.y, data.times)
    return Likelihood("likelihood3", model, data.images, data.sigma_read, data.exp_time)


def caskax_nodes(data: NodesData):
    """``k`` point sources in one image: source 0's sigma is dynamic and every other
    source's sigma points to it (one shared node); each flux is a function pointer to
    one light curve at time t_k (``k`` pointer nodes)."""
    import caskax as cx
    from caskax.examples.models import Combined, Gaussian, Gaussian1D, Likelihood

    lc = Gaussian1D(
        "lightcurve", t0=TRUTH["t0"], sigma=LC_SIGMA0, peak_flux=TRUTH["peak_flux"]
    ).to_dynamic()
    sources = []
    for i, ((px, py), t) in enumerate(zip(data.positions, data.times)):
        g = Gaussian(f"src{i}", x0=[float(px), float(py)], q=1.0, phi=0.0, sigma=PSF0, flux=0.0)
        g = g.set("sigma", sources[0].sigma) if i else g.to_dynamic("sigma")
        g = g.set("flux", cx.Pointer(lambda lc, t: lc.flux(t), lc, np.float32(t)))
        sources.append(g)
    image = Combined("image", data.x, data.y, sources)
    return Likelihood("likelihood", image, data.image, data.sigma_read, data.exp_time)


# ---------------------------------------------------------------------------------------
# hand-written JAX: the floor
def _index(names, order):
    """Position of each label of ``names`` in ``order`` (a Program's names)."""
    if order is None:
        order = names
    missing = set(names) - set(order)
    if missing or len(order) != len(names):
        raise ValueError(f"hand model expects labels {names}, got {list(order)}")
    return {n: order.index(n) for n in names}


def _jx_gauss(x, y, x0, x1, q, phi, sigma, flux):
    import jax.numpy as jnp

    dx, dy = x - x0, y - x1
    s, c = jnp.sin(phi), jnp.cos(phi)
    u, v = c * dx - s * dy, s * dx + c * dy
    r = jnp.sqrt(u**2 + (v * q) ** 2)
    return flux * jnp.exp(-(r**2) / sigma**2) / jnp.sqrt(2 * jnp.pi * sigma**2)


def _jx_loglike(model, data, sigma_read, exp_time):
    import jax.numpy as jnp

    sigma = jnp.sqrt(sigma_read**2 + model / exp_time)
    res = (data - model) / sigma
    return -0.5 * jnp.sum(res**2) - jnp.sum(jnp.log(sigma))


def _jx_galaxy(x, i, X, Y):
    return _jx_gauss(
        X,
        Y,
        x[i["Galaxy.x0[0]"]],
        x[i["Galaxy.x0[1]"]],
        x[i["Galaxy.q"]],
        x[i["Galaxy.phi"]],
        x[i["Galaxy.sigma"]],
        x[i["Galaxy.flux"]],
    )


def hand_stage2(data: Data, order=None):
    """Stage-2 likelihood2 as a plain function of x, with the module tree's arithmetic
    (each image sums its SN and the galaxy); returns ``(f, x0)``."""
    import jax.numpy as jnp

    names = stage2_names(len(data.times))
    i = _index(names, order)
    X, Y, D = jnp.asarray(data.x), jnp.asarray(data.y), jnp.asarray(data.images)
    sr, et, n = data.sigma_read, data.exp_time, len(data.times)
    s = TRUTH["sn_sigma"]

    def f(x):
        sx, sy = x[i["SN0.x0[0]"]], x[i["SN0.x0[1]"]]
        imgs = [
            0 + _jx_gauss(X, Y, sx, sy, 1.0, 0.0, s, x[i[f"SN{e}.flux"]]) + _jx_galaxy(x, i, X, Y)
            for e in range(n)
        ]
        return _jx_loglike(jnp.stack(imgs), D, sr, et)

    return f, jnp.asarray(_init_values(order or names))


def hand_stage2_opt(data: Data, order=None):
    """Stage-2 likelihood2 as a JAX author would write it: galaxy and SN profile once,
    the per-epoch fluxes broadcast; returns ``(f, x0)``."""
    import jax.numpy as jnp

    names = stage2_names(len(data.times))
    i = _index(names, order)
    X, Y, D = jnp.asarray(data.x), jnp.asarray(data.y), jnp.asarray(data.images)
    fi = jnp.asarray([i[f"SN{e}.flux"] for e in range(len(data.times))])
    sr, et = data.sigma_read, data.exp_time
    s = TRUTH["sn_sigma"]

    def f(x):
        gal = _jx_galaxy(x, i, X, Y)
        sn = _jx_gauss(X, Y, x[i["SN0.x0[0]"]], x[i["SN0.x0[1]"]], 1.0, 0.0, s, 1.0)
        return _jx_loglike(gal + x[fi][:, None, None] * sn, D, sr, et)

    return f, jnp.asarray(_init_values(order or names))


def hand_stage3(data: Data, order=None):
    """Stage-3 likelihood2 as a plain function of x with the module tree's arithmetic:
    one image per epoch summing its SN (flux from the light curve at that epoch's time)
    and the galaxy, as `Combined` does; returns ``(f, x0)``."""
    import jax.numpy as jnp

    names = stage3_names()
    i = _index(names, order)
    X, Y, D = jnp.asarray(data.x), jnp.asarray(data.y), jnp.asarray(data.images)
    T = [np.float32(t) for t in data.times]
    sr, et = data.sigma_read, data.exp_time
    s = TRUTH["sn_sigma"]

    def f(x):
        t0, ls, pk = x[i["lightcurve.t0"]], x[i["lightcurve.sigma"]], x[i["lightcurve.peak_flux"]]
        sx, sy = x[i["SN0.x0[0]"]], x[i["SN0.x0[1]"]]
        imgs = []
        for t in T:
            flux = pk * jnp.exp(-(((t + t0) / ls) ** 2))
            imgs.append(0 + _jx_gauss(X, Y, sx, sy, 1.0, 0.0, s, flux) + _jx_galaxy(x, i, X, Y))
        return _jx_loglike(jnp.stack(imgs), D, sr, et)

    return f, jnp.asarray(_init_values(order or names))


def hand_stage3_opt(data: Data, order=None):
    """Stage-3 likelihood2 as a JAX author would write it: the galaxy and the SN profile
    computed once, the light-curve fluxes broadcast over epochs; returns ``(f, x0)``."""
    import jax.numpy as jnp

    names = stage3_names()
    i = _index(names, order)
    X, Y, D = jnp.asarray(data.x), jnp.asarray(data.y), jnp.asarray(data.images)
    T = jnp.asarray(data.times)
    sr, et = data.sigma_read, data.exp_time
    s = TRUTH["sn_sigma"]

    def f(x):
        gal = _jx_galaxy(x, i, X, Y)
        t0, ls, pk = x[i["lightcurve.t0"]], x[i["lightcurve.sigma"]], x[i["lightcurve.peak_flux"]]
        flux = pk * jnp.exp(-(((T + t0) / ls) ** 2))
        sn = _jx_gauss(X, Y, x[i["SN0.x0[0]"]], x[i["SN0.x0[1]"]], 1.0, 0.0, s, 1.0)
        return _jx_loglike(gal + flux[:, None, None] * sn, D, sr, et)

    return f, jnp.asarray(_init_values(order or names))


def hand_hier(data: Data, order=None):
    """likelihood3 (galaxy once, SN vmapped over the epochs' light-curve fluxes) as a
    plain function of x; returns ``(f, x0)``."""
    import jax.numpy as jnp

    names = hier_names()
    i = _index(names, order)
    X, Y, D = jnp.asarray(data.x), jnp.asarray(data.y), jnp.asarray(data.images)
    T = jnp.asarray(data.times)
    sr, et = data.sigma_read, data.exp_time
    s = TRUTH["sn_sigma"]

    def f(x):
        gal = _jx_galaxy(x, i, X, Y)
        t0, ls, pk = x[i["lightcurve.t0"]], x[i["lightcurve.sigma"]], x[i["lightcurve.peak_flux"]]
        flux = pk * jnp.exp(-(((T + t0) / ls) ** 2))
        sn = _jx_gauss(X, Y, x[i["SN.x0[0]"]], x[i["SN.x0[1]"]], 1.0, 0.0, s, flux[:, None, None])
        return _jx_loglike(gal + sn, D, sr, et)

    return f, jnp.asarray(_init_values(order or names))


def hand_nodes(data: NodesData, order=None):
    """The node-count family with the module tree's arithmetic: one Gaussian per source,
    summed in order (unrolled, as `Combined` sums its models); returns ``(f, x0)``."""
    import jax.numpy as jnp

    names = nodes_names()
    i = _index(names, order)
    X, Y, D = jnp.asarray(data.x), jnp.asarray(data.y), jnp.asarray(data.image)
    P = [(np.float32(a), np.float32(b)) for a, b in data.positions]
    T = [np.float32(t) for t in data.times]
    sr, et = data.sigma_read, data.exp_time

    def f(x):
        t0, ls, pk = x[i["lightcurve.t0"]], x[i["lightcurve.sigma"]], x[i["lightcurve.peak_flux"]]
        s = x[i["src0.sigma"]]
        img = 0
        for (px, py), t in zip(P, T):
            img = img + _jx_gauss(X, Y, px, py, 1.0, 0.0, s, pk * jnp.exp(-(((t + t0) / ls) ** 2)))
        return _jx_loglike(img, D, sr, et)

    return f, jnp.asarray(_init_values(order or names))


def hand_nodes_opt(data: NodesData, order=None):
    """The node-count family vectorised over sources, as a JAX author would write it."""
    import jax.numpy as jnp

    names = nodes_names()
    i = _index(names, order)
    X, Y, D = jnp.asarray(data.x), jnp.asarray(data.y), jnp.asarray(data.image)
    P, T = jnp.asarray(data.positions), jnp.asarray(data.times)
    sr, et = data.sigma_read, data.exp_time

    def f(x):
        t0, ls, pk = x[i["lightcurve.t0"]], x[i["lightcurve.sigma"]], x[i["lightcurve.peak_flux"]]
        flux = pk * jnp.exp(-(((T + t0) / ls) ** 2))
        img = _jx_gauss(
            X[None],
            Y[None],
            P[:, 0, None, None],
            P[:, 1, None, None],
            1.0,
            0.0,
            x[i["src0.sigma"]],
            flux[:, None, None],
        )
        return _jx_loglike(jnp.sum(img, axis=0), D, sr, et)

    return f, jnp.asarray(_init_values(order or names))


# ---------------------------------------------------------------------------------------
# caskade (the tutorial's code, on caskade's active backend)
_CK = {}


def _caskade_classes():
    if _CK:
        return _CK
    import caskade as ck

    xp = ck.backend.module

    class Gaussian(ck.Module):
        def __init__(self, name, x0=None, q=None, phi=None, sigma=None, flux=None):
            super().__init__(name)
            self.x0 = ck.Param("x0", x0, shape=(2,), description="x/y-axis position")
            self.q = ck.Param("q", q, shape=(), description="axis ratio a/b")
            self.phi = ck.Param("phi", phi, shape=(), description="orientation")
            self.sigma = ck.Param("sigma", sigma, shape=(), description="standard deviation")
            self.flux = ck.Param("flux", flux, shape=(), description="total flux")

        @ck.forward
        def _r(self, x, y, x0=None, q=None, phi=None):
            x, y = x - x0[0], y - x0[1]
            s, c = xp.sin(phi), xp.cos(phi)
            x, y = c * x - s * y, s * x + c * y
            return xp.sqrt(x**2 + (y * q) ** 2)

        @ck.forward
        def brightness(self, x, y, sigma=None, flux=None):
            return flux * xp.exp(-(self._r(x, y) ** 2) / sigma**2) / xp.sqrt(2 * xp.pi * sigma**2)

    class Gaussian1D(ck.Module):
        def __init__(self, name, t0=None, sigma=None, peak_flux=None):
            super().__init__(name)
            self.t0 = ck.Param("t0", t0, shape=(), description="peak flux time")
            self.sigma = ck.Param("sigma", sigma, shape=(), description="light curve width")
            self.peak_flux = ck.Param("peak_flux", peak_flux, shape=(), description="peak")

        @ck.forward
        def flux(self, t, peak_flux, t0, sigma):
            return peak_flux * xp.exp(-(((t + t0) / sigma) ** 2))

    class Combined(ck.Module):
        def __init__(self, name, x, y, models):
            super().__init__(name)
            self.x = x
            self.y = y
            self.models = models

        @ck.forward
        def __call__(self):
            return sum(model.brightness(self.x, self.y) for model in self.models)

    class Stack(ck.Module):
        def __init__(self, name, models):
            super().__init__(name)
            self.models = models

        @ck.forward
        def __call__(self):
            return xp.stack([model() for model in self.models], 0)

    class Likelihood(ck.Module):
        def __init__(self, name, model, data, sigma_read=0.05, exp_time=25):
            super().__init__(name)
            self.model = model
            self.data = data
            self.sigma_read = sigma_read
            self.exp_time = exp_time

        @ck.forward
        def residuals(self):
            model_output = self.model()
            sigma = xp.sqrt(self.sigma_read**2 + model_output / self.exp_time)
            return (self.data - model_output) / sigma, sigma

        @ck.forward
        def __call__(self):
            residuals, sigma = self.residuals()
            return -0.5 * xp.sum(residuals**2) - xp.sum(xp.log(sigma))

    class HierarchicalModel(ck.Module):
        def __init__(self, name, SN, Galaxy, LightCurve, times, x, y, vmap):
            super().__init__(name)
            self.hierarchical_link("sn", SN)
            self.galaxy = Galaxy
            self.sn.lightcurve = LightCurve
            self.times = times
            self.imgx, self.imgy = x, y
            self._vmap = vmap

        @ck.forward
        def get_sn_brightness(self, t):
            self.sn.flux = self.sn.lightcurve.flux(t, ())
            return self.sn.brightness(self.imgx, self.imgy, ())

        @ck.forward
        def __call__(self):
            gal = self.galaxy.brightness(self.imgx, self.imgy)
            sn = self._vmap(self.get_sn_brightness)(self.times)
            return gal + sn

    _CK.update(
        ck=ck,
        xp=xp,
        Gaussian=Gaussian,
        Gaussian1D=Gaussian1D,
        Combined=Combined,
        Stack=Stack,
        Likelihood=Likelihood,
        HierarchicalModel=HierarchicalModel,
    )
    return _CK


def _ck_array(a):
    ck = _caskade_classes()["ck"]
    return ck.backend.make_array(np.asarray(a, dtype=np.float32))


def _ck_vmap():
    ck = _caskade_classes()["ck"]
    if ck.backend.backend == "torch":
        import torch

        return torch.vmap
    import jax

    return jax.vmap


def caskade_stage2(data: Data):
    C = _caskade_classes()
    g = TRUTH["galaxy"]
    X, Y = _ck_array(data.x), _ck_array(data.y)
    galaxy = C["Gaussian"](
        "Galaxy", x0=list(g["x0"]), q=g["q"], phi=g["phi"], sigma=g["sigma"], flux=g["flux"]
    )
    galaxy.to_dynamic()
    models = []
    for i in range(len(data.times)):
        sn = C["Gaussian"](
            f"SN{i}", x0=list(TRUTH["sn_x0"]), q=1.0, phi=0.0, sigma=TRUTH["sn_sigma"], flux=FLUX0
        )
        sn.x0.to_dynamic()
        sn.flux.to_dynamic()
        models.append(C["Combined"](f"image{i}", X, Y, [sn, galaxy]))
        if i > 0:
            sn.x0 = models[0].models[0].x0
    stack = C["Stack"]("secondmodel", models)
    return C["Likelihood"](
        "likelihood2",
        stack,
        _ck_array(data.images),
        sigma_read=data.sigma_read,
        exp_time=data.exp_time,
    )


def caskade_stage3(data: Data):
    """The tutorial's stage 3: each SN flux a function of the light-curve module."""
    C = _caskade_classes()
    like = caskade_stage2(data)
    lc = C["Gaussian1D"](
        "lightcurvemodel", t0=TRUTH["t0"], sigma=LC_SIGMA0, peak_flux=TRUTH["peak_flux"]
    )
    lc.to_dynamic()
    for i, t in enumerate(data.times):
        sn = like.model.models[i].models[0]
        sn.flux = lambda p: p.lightcurvemodel.flux(t=p.eval_t)
        sn.flux.link(lc)
        sn.flux.eval_t = _ck_array(t)
    return like


def caskade_hier(data: Data):
    C = _caskade_classes()
    g = TRUTH["galaxy"]
    sn = C["Gaussian"]("SN", x0=list(TRUTH["sn_x0"]), q=1.0, phi=0.0, sigma=TRUTH["sn_sigma"])
    sn.flux.to_static(None)
    sn.x0.to_dynamic()
    galaxy = C["Gaussian"](
        "Galaxy", x0=list(g["x0"]), q=g["q"], phi=g["phi"], sigma=g["sigma"], flux=g["flux"]
    )
    galaxy.to_dynamic()
    lc = C["Gaussian1D"](
        "lightcurvemodel", t0=TRUTH["t0"], sigma=LC_SIGMA0, peak_flux=TRUTH["peak_flux"]
    )
    lc.to_dynamic()
    model = C["HierarchicalModel"](
        "hierarchical",
        sn,
        galaxy,
        lc,
        _ck_array(data.times),
        _ck_array(data.x),
        _ck_array(data.y),
        _ck_vmap(),
    )
    return C["Likelihood"](
        "likelihood3",
        model,
        _ck_array(data.images),
        sigma_read=data.sigma_read,
        exp_time=data.exp_time,
    )


def caskade_nodes(data: NodesData):
    C = _caskade_classes()
    X, Y = _ck_array(data.x), _ck_array(data.y)
    lc = C["Gaussian1D"](
        "lightcurvemodel", t0=TRUTH["t0"], sigma=LC_SIGMA0, peak_flux=TRUTH["peak_flux"]
    )
    lc.to_dynamic()
    sources = []
    for i, ((px, py), t) in enumerate(zip(data.positions, data.times)):
        g = C["Gaussian"](
            f"src{i}", x0=[float(px), float(py)], q=1.0, phi=0.0, sigma=PSF0, flux=0.0
        )
        if i:
            g.sigma = sources[0].sigma
        else:
            g.sigma.to_dynamic()
        g.flux = lambda p: p.lightcurvemodel.flux(t=p.eval_t)
        g.flux.link(lc)
        g.flux.eval_t = _ck_array(t)
        sources.append(g)
    image = C["Combined"]("image", X, Y, sources)
    return C["Likelihood"](
        "likelihood",
        image,
        _ck_array(data.image),
        sigma_read=data.sigma_read,
        exp_time=data.exp_time,
    )
