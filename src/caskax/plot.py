"""Matplotlib helpers for the figures a caskax analysis draws again and again: images
with model and residuals, light curves with 1σ/2σ bands, corner and trace plots of
samples, and Laplace ellipses.

matplotlib is imported inside each function, so ``import caskax`` stays light. Each
function returns the ``Figure``; save it with ``fig.savefig(path)``.

Samples may be given as an object with ``.samples`` (``[chains, draws, size]``, e.g. the
``Chains`` of `caskax.nuts`) and optional ``.names``, as an array ``[chains, draws, size]``
or as an array ``[n, size]``.
"""

import math

import numpy as np

__all__ = ["images", "lightcurve", "corner", "trace", "ellipse"]


def _plt():
    import matplotlib.pyplot as plt

    return plt


def _chains(obj, names=None):
    """([chains, draws, d] array, names) from an object with ``.samples`` or an array."""
    arr = np.asarray(obj.samples if hasattr(obj, "samples") else obj, dtype=float)
    if names is None:
        names = getattr(obj, "names", None)
    if arr.ndim == 1:
        arr = arr[None, :, None]
    elif arr.ndim == 2:
        arr = arr[None]
    elif arr.ndim != 3:
        raise ValueError(
            f"samples must be [n, size] or [chains, draws, size], got shape {arr.shape}."
        )
    d = arr.shape[-1]
    names = list(names) if names is not None else []
    if len(names) != d:
        names = [f"x[{i}]" for i in range(d)]
    return arr, [str(n) for n in names]


def _truth(truth, d):
    if truth is None:
        return None
    t = np.ravel(np.asarray(truth, dtype=float))
    if t.size != d:
        raise ValueError(f"truth has {t.size} entries; expected {d} (one per parameter).")
    return t


def images(data, model, residual=None, titles=None, vmin=None, vmax=None, cmap="viridis"):
    """Data, model and residual images side by side: one column per image, rows data /
    model / residual (``data - model`` when ``residual`` is None, drawn on a symmetric
    colour scale).

    **Arguments:** `data`, `model`: arrays ``[H, W]`` or ``[n, H, W]``; `residual`:
    same shape (e.g. the normalised residuals of a likelihood); `titles`: one per image.

    Example:
        >>> import numpy as np, caskax as cx
        >>> fig = cx.plot.images(np.ones((2, 4, 4)), np.zeros((2, 4, 4)), titles=["a", "b"])
        >>> len(fig.axes)  # 6 images and 2 colour bars
        8
        >>> import matplotlib.pyplot as plt; plt.close("all")
    """
    plt = _plt()
    data = np.asarray(data, dtype=float)
    model = np.asarray(model, dtype=float)
    if data.ndim == 2:
        data, model = data[None], model[None] if model.ndim == 2 else model
    if model.shape != data.shape:
        raise ValueError(f"model shape {model.shape} differs from data shape {data.shape}.")
    res = data - model if residual is None else np.asarray(residual, dtype=float)
    res = res.reshape(data.shape)
    n = data.shape[0]
    if titles is not None and len(titles) != n:
        raise ValueError(f"{len(titles)} titles for {n} images.")
    lo = np.nanmin(data) if vmin is None else vmin
    hi = np.nanmax(data) if vmax is None else vmax
    r = float(np.nanmax(np.abs(res))) or 1.0
    fig, axes = plt.subplots(3, n, figsize=(2.6 * n + 0.6, 7.5), squeeze=False)
    for i in range(n):
        for row, (img, label) in enumerate(((data[i], "data"), (model[i], "model"), (res[i], "residual"))):
            ax = axes[row, i]
            if row < 2:
                im = ax.imshow(img, origin="lower", vmin=lo, vmax=hi, cmap=cmap)
            else:
                im = ax.imshow(img, origin="lower", vmin=-r, vmax=r, cmap="RdBu_r")
            ax.set_xticks([])
            ax.set_yticks([])
            if i == 0:
                ax.set_ylabel(label)
            if row == 0 and titles is not None:
                ax.set_title(str(titles[i]))
        if i == n - 1:
            fig.colorbar(axes[0, i].images[0], ax=axes[:2, :].ravel().tolist(), shrink=0.8)
            fig.colorbar(im, ax=axes[2, :].ravel().tolist(), shrink=0.8)
    return fig


def lightcurve(t, samples_or_fit, truth=None, points=None, ax=None, xlabel="time",
               ylabel="flux", label="model"):
    """A light curve with its uncertainty.

    ``samples_or_fit`` is either an array of curve samples ``[n, len(t)]`` (drawn as the
    median with 1σ and 2σ bands: the 16–84 % and 2.5–97.5 % ranges), or a pair
    ``(mean, sigma)`` of arrays ``[len(t)]`` (drawn as points with 1σ and 2σ error
    bars). ``truth`` (an array ``[len(t)]`` or a function of ``t``) is drawn as a line;
    ``points=(t, y, yerr)`` adds measured points with error bars.

    Example:
        >>> import numpy as np, caskax as cx
        >>> t = np.linspace(0, 6, 5)
        >>> curves = np.exp(-(t - 3) ** 2) + 0.01 * np.random.default_rng(0).normal(size=(50, 5))
        >>> fig = cx.plot.lightcurve(t, curves, truth=np.exp(-(t - 3) ** 2))
        >>> fig = cx.plot.lightcurve(t, (np.ones(5), 0.1 * np.ones(5)))
        >>> import matplotlib.pyplot as plt; plt.close("all")
    """
    plt = _plt()
    t = np.asarray(t, dtype=float)
    fig, ax = (ax.figure, ax) if ax is not None else plt.subplots(figsize=(6, 4))
    if isinstance(samples_or_fit, (tuple, list)) and len(samples_or_fit) == 2:
        mean, sigma = (np.asarray(v, dtype=float).reshape(t.shape) for v in samples_or_fit)
        ax.errorbar(t, mean, yerr=2 * sigma, fmt="none", ecolor="C0", alpha=0.4, capsize=0, lw=1)
        ax.errorbar(t, mean, yerr=sigma, fmt="o", color="C0", capsize=3, lw=2, label=f"{label} (1σ, 2σ)")
    else:
        curves = np.asarray(samples_or_fit, dtype=float)
        if curves.ndim == 3:  # [chains, draws, len(t)]
            curves = curves.reshape(-1, curves.shape[-1])
        if curves.ndim != 2 or curves.shape[1] != t.size:
            raise ValueError(
                f"curve samples must be [n, len(t)] = [n, {t.size}], got shape {curves.shape}; "
                "or give (mean, sigma)."
            )
        q = np.percentile(curves, [2.5, 16, 50, 84, 97.5], axis=0)
        ax.fill_between(t, q[0], q[4], color="C0", alpha=0.2, lw=0, label="2σ")
        ax.fill_between(t, q[1], q[3], color="C0", alpha=0.4, lw=0, label="1σ")
        ax.plot(t, q[2], color="C0", label=f"{label} (median)")
    if points is not None:
        pt, py, perr = (np.asarray(v, dtype=float) for v in points)
        ax.errorbar(pt, py, yerr=perr, fmt="s", color="k", capsize=3, label="measured")
    if truth is not None:
        tt = np.linspace(t.min(), t.max(), 200) if callable(truth) else t
        ty = np.asarray(truth(tt) if callable(truth) else truth, dtype=float)
        ax.plot(tt, ty, "--", color="C3", label="truth")
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.legend(frameon=False)
    return fig


def _smooth(h):
    """A [1, 2, 1]/4 blur along both axes, so contours of a histogram are not ragged."""
    for axis in (0, 1):
        p = np.pad(h, [(1, 1) if a == axis else (0, 0) for a in (0, 1)], mode="edge")
        lo = p[:-2] if axis == 0 else p[:, :-2]
        mid = p[1:-1] if axis == 0 else p[:, 1:-1]
        hi = p[2:] if axis == 0 else p[:, 2:]
        h = 0.25 * lo + 0.5 * mid + 0.25 * hi
    return h


def _hist2d_levels(h, fractions):
    """Density thresholds enclosing ``fractions`` of the mass of histogram ``h``."""
    flat = np.sort(h.ravel())[::-1]
    cum = np.cumsum(flat)
    cum /= cum[-1] if cum[-1] > 0 else 1.0
    levels = [flat[min(np.searchsorted(cum, f), flat.size - 1)] for f in fractions]
    levels = sorted(set(levels))
    return levels


def _lower_triangle(fig, d, **grid):
    """``(i, j, axes)`` for the diagonal and below of a ``d x d`` grid: no axes above
    the diagonal, which halves the drawing time."""
    spec = fig.add_gridspec(d, d, **grid)
    for i in range(d):
        for j in range(i + 1):
            yield i, j, fig.add_subplot(spec[i, j])


def corner(chains_or_samples, names=None, truth=None, bins=30):
    """A corner plot: histograms on the diagonal, 2-D densities with contours enclosing
    39 % and 86 % of the samples (2-D 1σ and 2σ) below it; ``truth`` marked in red.

    Example:
        >>> import numpy as np, caskax as cx
        >>> x = np.random.default_rng(0).normal(size=(500, 3))
        >>> fig = cx.plot.corner(x, names=["a", "b", "c"], truth=[0, 0, 0])
        >>> len(fig.axes)  # the lower triangle: 3 histograms, 3 pairs
        6
        >>> import matplotlib.pyplot as plt; plt.close("all")
    """
    plt = _plt()
    arr, names = _chains(chains_or_samples, names)
    x = arr.reshape(-1, arr.shape[-1])
    d = x.shape[1]
    truth = _truth(truth, d)
    # at most about 1000 points per panel: drawing every sample of long chains made up
    # most of the figure's save time; the contours still use all of them
    thin = max(1, x.shape[0] // 1000)
    size = max(2.0, min(2.5, 12.0 / d))
    fig = plt.figure(figsize=(size * d, size * d))
    lims = []
    for i in range(d):
        lo, hi = np.percentile(x[:, i], [0.5, 99.5])
        if truth is not None:
            lo, hi = min(lo, truth[i]), max(hi, truth[i])
        pad = 0.05 * (hi - lo) or 0.5
        lims.append((lo - pad, hi + pad))
    for i, j, ax in _lower_triangle(fig, d, wspace=0.05, hspace=0.05):
        if i == j:
            ax.hist(x[:, i], bins=bins, range=lims[i], histtype="step", color="k")
            ax.set_yticks([])
            q = np.percentile(x[:, i], [16, 50, 84])
            for v in q:
                ax.axvline(v, color="k", ls="--", lw=0.8)
            ax.set_title(f"{names[i]} = {q[1]:.3g}$^{{+{q[2] - q[1]:.2g}}}_{{-{q[1] - q[0]:.2g}}}$",
                         fontsize=9)
            if truth is not None:
                ax.axvline(truth[i], color="C3")
        else:
            h, xe, ye = np.histogram2d(x[:, j], x[:, i], bins=bins, range=[lims[j], lims[i]])
            h = _smooth(h)
            ax.plot(x[::thin, j], x[::thin, i], ",", color="k", alpha=0.2)
            levels = _hist2d_levels(h, [0.865, 0.393])
            if len(levels) > 1 and np.ptp(h) > 0:
                xc, yc = 0.5 * (xe[1:] + xe[:-1]), 0.5 * (ye[1:] + ye[:-1])
                ax.contour(xc, yc, h.T, levels=levels, colors="k", linewidths=1)
            if truth is not None:
                ax.axvline(truth[j], color="C3")
                ax.axhline(truth[i], color="C3")
                ax.plot(truth[j], truth[i], "s", color="C3", ms=3)
            ax.set_ylim(lims[i])
        ax.set_xlim(lims[j])
        if i < d - 1:
            ax.tick_params(labelbottom=False)  # cheaper than set_xticklabels([])
        else:
            ax.set_xlabel(names[j])
        if j > 0 or i == 0:
            ax.tick_params(labelleft=False)
        else:
            ax.set_ylabel(names[i])
    return fig


def trace(chains_or_samples, names=None, truth=None):
    """Trace plot: one panel per parameter, each chain drawn against its draw index.

    Example:
        >>> import numpy as np, caskax as cx
        >>> fig = cx.plot.trace(np.random.default_rng(0).normal(size=(2, 100, 3)))
        >>> len(fig.axes)
        3
        >>> import matplotlib.pyplot as plt; plt.close("all")
    """
    plt = _plt()
    arr, names = _chains(chains_or_samples, names)
    n_chains, n_draws, d = arr.shape
    truth = _truth(truth, d)
    fig, axes = plt.subplots(d, 1, figsize=(8, 1.6 * d + 0.6), sharex=True, squeeze=False)
    draws = np.arange(n_draws)
    for k in range(d):
        ax = axes[k, 0]
        for c in range(n_chains):
            ax.plot(draws, arr[c, :, k], lw=0.6, alpha=0.8, color=f"C{c % 10}")
        if truth is not None:
            ax.axhline(truth[k], color="k", ls="--", lw=1)
        ax.set_ylabel(names[k])
    axes[-1, 0].set_xlabel("draw")
    return fig


def _ellipse_patch(mean2, cov2, n, **kw):
    from matplotlib.patches import Ellipse

    vals, vecs = np.linalg.eigh(cov2)
    vals = np.clip(vals, 0.0, None)
    angle = math.degrees(math.atan2(vecs[1, 1], vecs[0, 1]))
    return Ellipse(mean2, 2 * n * math.sqrt(vals[1]), 2 * n * math.sqrt(vals[0]), angle=angle, **kw)


def ellipse(mean, cov=None, ax=None, truth=None, names=None):
    """1σ and 2σ ellipses of a Gaussian (e.g. a Laplace approximation): the curves at
    Mahalanobis distance 1 and 2 from ``mean``.

    Two parameters give one panel; more give a lower-triangle grid of pairs with the
    1-D Gaussians on the diagonal. ``mean`` may also be an object with ``.mean`` and
    ``.cov`` (``cx.laplace``'s result). ``ax`` (2 parameters only) draws into an
    existing axes.

    Example:
        >>> import numpy as np, caskax as cx
        >>> fig = cx.plot.ellipse([0.0, 1.0], [[1.0, 0.5], [0.5, 2.0]], truth=[0.1, 0.9])
        >>> fig = cx.plot.ellipse(np.zeros(3), np.eye(3), names=["a", "b", "c"])
        >>> len(fig.axes)  # the lower triangle
        6
        >>> import matplotlib.pyplot as plt; plt.close("all")
    """
    plt = _plt()
    if cov is None:
        mean, cov = getattr(mean, "mean"), getattr(mean, "cov")
    mean = np.ravel(np.asarray(mean, dtype=float))
    cov = np.asarray(cov, dtype=float)
    d = mean.size
    if cov.shape != (d, d):
        raise ValueError(f"cov must be [{d}, {d}] for a mean of {d} entries, got {cov.shape}.")
    if d < 2:
        raise ValueError("ellipse needs at least 2 parameters.")
    names = list(names) if names is not None and len(names) == d else [f"x[{i}]" for i in range(d)]
    truth = _truth(truth, d)
    sig = np.sqrt(np.clip(np.diag(cov), 0.0, None))

    def pair(ax, i, j):  # x: param j, y: param i
        sub = cov[np.ix_([j, i], [j, i])]
        for n, alpha in ((2, 0.25), (1, 0.5)):
            ax.add_patch(_ellipse_patch((mean[j], mean[i]), sub, n, color="C0", alpha=alpha, lw=0))
        ax.plot(mean[j], mean[i], "+", color="C0")
        if truth is not None:
            ax.plot(truth[j], truth[i], "x", color="C3")
        ax.set_xlim(mean[j] - 3 * sig[j], mean[j] + 3 * sig[j])
        ax.set_ylim(mean[i] - 3 * sig[i], mean[i] + 3 * sig[i])

    if d == 2 or ax is not None:
        if d != 2:
            raise ValueError("ax= is for 2 parameters only; with more, a grid is drawn.")
        fig, ax = (ax.figure, ax) if ax is not None else plt.subplots(figsize=(4.5, 4.5))
        pair(ax, 1, 0)
        ax.set_xlabel(names[0])
        ax.set_ylabel(names[1])
        return fig
    fig = plt.figure(figsize=(2.2 * d, 2.2 * d))
    for i, j, ax in _lower_triangle(fig, d):
        if i == j:
            xs = np.linspace(mean[i] - 4 * sig[i], mean[i] + 4 * sig[i], 200)
            s = sig[i] or 1.0
            ax.plot(xs, np.exp(-0.5 * ((xs - mean[i]) / s) ** 2), color="C0")
            if truth is not None:
                ax.axvline(truth[i], color="C3")
            ax.set_yticks([])
        else:
            pair(ax, i, j)
        if i == d - 1:
            ax.set_xlabel(names[j])
        if j == 0 and i > 0:
            ax.set_ylabel(names[i])
    return fig
