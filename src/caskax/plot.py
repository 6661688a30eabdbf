"""Matplotlib helpers for the figures a caskax analysis draws again and again: images
with model and residuals, an animation of a simulator, light curves with 1σ/2σ bands,
corner and trace plots of samples, Laplace ellipses, and a model's graph.

matplotlib is imported inside each function, so ``import caskax`` stays light. Each
function returns the ``Figure`` (``animate``: the animation); save it with
``fig.savefig(path)``. Figures lay themselves out so that every label stays on the
canvas, at sizes that read on a slide.

**Images** are arrays indexed ``[x, y]``, as the tutorials' grids made with
``jnp.meshgrid(xs, ys, indexing="ij")``: they are drawn with x to the right and y up,
in every helper. Pass ``indexing="xy"`` for arrays indexed ``[y, x]`` (rows are y).

Samples may be given as an object with ``.samples`` (``[chains, draws, size]``, e.g. the
``Chains`` of `caskax.nuts`) and optional ``.names``, as an array ``[chains, draws, size]``
or as an array ``[n, size]``.
"""

import math

import numpy as np

from .errors import ShapeError

__all__ = ["images", "animate", "lightcurve", "corner", "trace", "ellipse", "graph"]


def _plt():
    import matplotlib.pyplot as plt

    return plt


def _oriented(img, indexing):
    """``img`` as ``imshow`` wants it with ``origin="lower"``: rows are y, columns x."""
    img = np.asarray(img, dtype=float)
    if indexing == "ij":
        return img.T
    if indexing == "xy":
        return img
    raise ShapeError(
        f"indexing must be 'ij' (arrays [x, y]) or 'xy' (arrays [y, x]), got {indexing!r}."
    )


def _show(ax, img, indexing, **kw):
    """Draw one image with x to the right and y up."""
    return ax.imshow(_oriented(img, indexing), origin="lower", interpolation="nearest", **kw)


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
        raise ShapeError(
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
        raise ShapeError(f"truth has {t.size} entries; expected {d} (one per parameter).")
    return t


def images(
    data,
    model,
    residual=None,
    titles=None,
    vmin=None,
    vmax=None,
    cmap="viridis",
    suptitle=None,
    label=None,
    residual_label=None,
    indexing="ij",
):
    """Data, model and residual images side by side: one column per image, rows data /
    model / residual (``data - model`` when ``residual`` is None), the residuals on a
    symmetric colour scale, each scale with a labelled colour bar.

    **Arguments:** `data`, `model`: arrays ``[X, Y]`` or ``[n, X, Y]`` (see the module
    doc on orientation); `residual`: same shape (e.g. the normalised residuals of a
    likelihood); `titles`: one per image; `suptitle`: a title over the figure (e.g. the
    stage of an analysis); `label`, `residual_label`: the colour bars' labels (defaults
    "data, model" and "data − model", or "residual" when `residual` is given);
    `indexing`: ``"ij"`` (arrays ``[x, y]``, the default) or ``"xy"``.

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
        raise ShapeError(f"model shape {model.shape} differs from data shape {data.shape}.")
    res = data - model if residual is None else np.asarray(residual, dtype=float)
    res = res.reshape(data.shape)
    n = data.shape[0]
    if titles is not None and len(titles) != n:
        raise ShapeError(f"{len(titles)} titles for {n} images.")
    if residual_label is None:
        residual_label = "data − model" if residual is None else "residual"
    lo = np.nanmin(data) if vmin is None else vmin
    hi = np.nanmax(data) if vmax is None else vmax
    r = float(np.nanmax(np.abs(res))) or 1.0
    _, nx, ny = data.shape
    aspect = (ny / nx) if indexing == "ij" else (nx / ny)  # height / width of one image
    panel = 1.9
    fig, axes = plt.subplots(
        3,
        n,
        figsize=(panel * n + 1.3, 3 * panel * aspect + 0.5 + (0.35 if suptitle else 0.0)),
        squeeze=False,
        layout="constrained",
    )
    rows = ((data, "data"), (model, "model"), (res, "residual"))
    for i in range(n):
        for row, (imgs, name) in enumerate(rows):
            ax = axes[row, i]
            if row < 2:
                _show(ax, imgs[i], indexing, vmin=lo, vmax=hi, cmap=cmap)
            else:
                _show(ax, imgs[i], indexing, vmin=-r, vmax=r, cmap="RdBu_r")
            ax.set_xticks([])
            ax.set_yticks([])
            if i == 0:
                ax.set_ylabel(name)
            if row == 0 and titles is not None:
                ax.set_title(str(titles[i]), fontsize=10)
    bar = fig.colorbar(axes[0, 0].images[0], ax=axes[:2, :].ravel().tolist(), shrink=0.85)
    bar.set_label("data, model" if label is None else label)
    bar = fig.colorbar(axes[2, 0].images[0], ax=axes[2, :].ravel().tolist(), shrink=0.85)
    bar.set_label(residual_label)
    if suptitle:
        fig.suptitle(suptitle)
    return fig


def animate(
    frames,
    times=None,
    vmin=None,
    vmax=None,
    cmap="viridis",
    label="brightness",
    time_label="t",
    indexing="ij",
    interval=60,
    saveto=None,
    fps=15,
    dpi=None,
):
    """An animation of images (a simulator over time): one frame per image, a colour
    bar, and the time of each frame above it.

    **Arguments:** `frames`: array ``[n, X, Y]`` (see the module doc on orientation);
    `times`: ``n`` values shown as ``"{time_label} = {t:.2f}"``; `vmin`, `vmax`: the
    colour scale (default: the range of all frames); `label`: the colour bar's label;
    `interval`: milliseconds between frames in an interactive display; `saveto`: a
    ``.gif`` path to write, at `fps` frames per second and `dpi` (default the figure's).
    Returns a ``matplotlib.animation.FuncAnimation``.

    Writing with `saveto` draws the colour bar and the frame once and then only the
    image and the time label, several times faster than ``anim.save``, which redraws
    the whole figure for every frame.

    Example:
        >>> import os, tempfile
        >>> import numpy as np, caskax as cx
        >>> path = os.path.join(tempfile.mkdtemp(), "movie.gif")
        >>> anim = cx.plot.animate(np.random.default_rng(0).random((3, 8, 8)), times=[0, 1, 2],
        ...                        saveto=path)
        >>> anim._fig.axes[0].texts[0].get_text(), os.path.exists(path)
        ('t = 0.00', True)
        >>> import matplotlib.pyplot as plt; plt.close("all")
    """
    plt = _plt()
    from matplotlib import animation

    frames = np.asarray(frames, dtype=float)
    if frames.ndim != 3:
        raise ShapeError(f"frames must be [n, X, Y], got shape {frames.shape}.")
    n = frames.shape[0]
    times = np.arange(n, dtype=float) if times is None else np.asarray(times, dtype=float)
    if times.shape != (n,):
        raise ShapeError(f"{times.size} times for {n} frames.")
    lo = float(np.nanmin(frames)) if vmin is None else vmin
    hi = float(np.nanmax(frames)) if vmax is None else vmax
    fig, ax = plt.subplots(figsize=(4.2, 3.6), layout="constrained")
    img = _show(ax, frames[0], indexing, vmin=lo, vmax=hi, cmap=cmap)
    ax.set_xticks([])
    ax.set_yticks([])
    fig.colorbar(img, ax=ax, shrink=0.9).set_label(label)
    # a text artist rather than a title: per frame, a title's layout costs more than
    # drawing the image
    text = ax.text(0.5, 1.02, "", transform=ax.transAxes, ha="center", va="bottom")

    def update(i):
        img.set_data(_oriented(frames[i], indexing))
        text.set_text(f"{time_label} = {times[i]:.2f}")
        return (img, text)

    if dpi is not None:
        fig.set_dpi(dpi)
    update(0)
    fig.canvas.draw()  # lay the figure out once; the frames only change the image and text
    fig.set_layout_engine("none")
    if saveto is not None:
        _write_gif(fig, ax, (img, text), update, n, saveto, fps, img.get_cmap())
        update(0)
    anim = animation.FuncAnimation(fig, update, frames=n, interval=interval, blit=False)
    anim._draw_was_started = True  # a figure that was only saved is not a forgotten animation
    return anim


def _write_gif(fig, ax, artists, update, n, path, fps, cmap):
    """Frames by blitting: the figure without ``artists`` is drawn once, then each frame
    restores it and draws only ``artists``. One palette for all frames: 200 colours of
    the colour map and 56 greys (text, lines, antialiasing)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from PIL import Image

    canvas = fig.canvas if isinstance(fig.canvas, FigureCanvasAgg) else FigureCanvasAgg(fig)
    for a in artists:
        a.set_visible(False)
    canvas.draw()
    background = canvas.copy_from_bbox(fig.bbox)
    for a in artists:
        a.set_visible(True)
    colours = np.concatenate(
        [
            np.asarray(cmap(np.linspace(0, 1, 200)))[:, :3] * 255,
            np.repeat(np.linspace(0, 255, 56)[:, None], 3, axis=1),
        ]
    )
    palette = Image.new("P", (1, 1))
    palette.putpalette(np.round(colours).astype(np.uint8).ravel().tolist())
    images = []
    for i in range(n):
        canvas.restore_region(background)
        update(i)
        for a in artists:
            ax.draw_artist(a)
        w, h = canvas.get_width_height()
        rgb = Image.frombuffer(
            "RGBA", (w, h), bytes(canvas.buffer_rgba()), "raw", "RGBA", 0, 1
        ).convert("RGB")
        images.append(rgb.quantize(palette=palette, dither=Image.Dither.NONE))
    images[0].save(path, save_all=True, append_images=images[1:], duration=int(1000 / fps), loop=0)


def lightcurve(
    t, samples_or_fit, truth=None, points=None, ax=None, xlabel="time", ylabel="flux", label="model"
):
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
    fig, ax = (
        (ax.figure, ax)
        if ax is not None
        else plt.subplots(figsize=(6.4, 4.2), layout="constrained")
    )
    if isinstance(samples_or_fit, (tuple, list)) and len(samples_or_fit) == 2:
        mean, sigma = (np.asarray(v, dtype=float).reshape(t.shape) for v in samples_or_fit)
        ax.errorbar(t, mean, yerr=2 * sigma, fmt="none", ecolor="C0", alpha=0.4, capsize=0, lw=1)
        ax.errorbar(
            t, mean, yerr=sigma, fmt="o", color="C0", capsize=3, lw=2, label=f"{label}, 1σ and 2σ"
        )
    else:
        curves = np.asarray(samples_or_fit, dtype=float)
        if curves.ndim == 3:  # [chains, draws, len(t)]
            curves = curves.reshape(-1, curves.shape[-1])
        if curves.ndim != 2 or curves.shape[1] != t.size:
            raise ShapeError(
                f"curve samples must be [n, len(t)] = [n, {t.size}], got shape {curves.shape}; "
                "or give (mean, sigma)."
            )
        q = np.percentile(curves, [2.5, 16, 50, 84, 97.5], axis=0)
        ax.fill_between(t, q[0], q[4], color="C0", alpha=0.2, lw=0, label=f"{label}, 2σ")
        ax.fill_between(t, q[1], q[3], color="C0", alpha=0.4, lw=0, label=f"{label}, 1σ")
        ax.plot(t, q[2], color="C0", label=f"{label}, median")
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


def _short(name, width=14):
    """A long dotted name on two lines (``lightcurve.peak_flux`` -> ``lightcurve.\npeak_flux``)."""
    name = str(name)
    if len(name) <= width or "." not in name:
        return name
    head, _, tail = name.rpartition(".")
    return f"{head}.\n{tail}"


def _few_ticks(ax, x=True, y=True, size=7, n=(3, 4)):
    """A few ticks per axis (at most ``n = (x, y)`` intervals), away from the axis ends
    (so that the labels of neighbouring panels never meet), without an offset."""
    from matplotlib.ticker import FixedLocator, MaxNLocator, ScalarFormatter

    for on, axis, limits, bins in (
        (x, ax.xaxis, ax.get_xlim(), n[0]),
        (y, ax.yaxis, ax.get_ylim(), n[1]),
    ):
        if not on:
            continue
        lo, hi = sorted(limits)
        margin = 0.1 * (hi - lo)
        ticks = [
            t for t in MaxNLocator(bins).tick_values(lo, hi) if lo + margin <= t <= hi - margin
        ]
        axis.set_major_locator(FixedLocator(ticks))
        fmt = ScalarFormatter(useOffset=False)
        fmt.set_powerlimits((-3, 4))
        axis.set_major_formatter(fmt)
    ax.tick_params(labelsize=size)


def _grid_margins(fig, d, panel):
    """Margins (in figure fractions) that leave room for the labels of a corner grid."""
    w = panel * d
    left, bottom, top = 1.05 / (w + 1.3), 1.05 / (w + 1.5), 0.45 / (w + 1.5)
    fig.subplots_adjust(
        left=left, right=1 - 0.15 / (w + 1.3), bottom=bottom, top=1 - top, wspace=0.08, hspace=0.08
    )


def corner(chains_or_samples, names=None, truth=None, bins=30):
    """A corner plot: histograms on the diagonal, 2-D densities with contours enclosing
    39 % and 86 % of the samples (2-D 1σ and 2σ) below it; ``truth`` marked in red.

    Each diagonal panel is titled with its median and the 16–84 % range. The figure's
    size grows with the number of parameters and its fonts are set for a slide (11
    parameters: about 18 x 18 inches at 100 dpi).

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
    panel = max(1.5, min(2.5, 12.0 / d))
    fig = plt.figure(figsize=(panel * d + 1.3, panel * d + 1.5), dpi=100)
    _grid_margins(fig, d, panel)
    lims = []
    for i in range(d):
        lo, hi = np.percentile(x[:, i], [0.5, 99.5])
        if truth is not None:
            lo, hi = min(lo, truth[i]), max(hi, truth[i])
        pad = 0.05 * (hi - lo) or 0.5
        lims.append((lo - pad, hi + pad))
    for i, j, ax in _lower_triangle(fig, d):
        if i == j:
            ax.hist(x[:, i], bins=bins, range=lims[i], histtype="step", color="k")
            ax.set_yticks([])
            q = np.percentile(x[:, i], [16, 50, 84])
            for v in q:
                ax.axvline(v, color="k", ls="--", lw=0.8)
            ax.set_title(
                f"{names[i]}\n{q[1]:.3g}$^{{+{q[2] - q[1]:.2g}}}_{{-{q[1] - q[0]:.2g}}}$",
                fontsize=9,
            )
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
        _few_ticks(ax, y=i != j, size=8)
        if i < d - 1:
            ax.tick_params(labelbottom=False)  # cheaper than set_xticklabels([])
        else:
            ax.set_xlabel(_short(names[j]), fontsize=9)
        if j > 0 or i == 0:
            ax.tick_params(labelleft=False)
        else:
            ax.set_ylabel(_short(names[i]), fontsize=9)
    return fig


def trace(chains_or_samples, names=None, truth=None):
    """Trace plot: one panel per parameter, each chain drawn against its draw index in
    its own colour (named in the legend), ``truth`` as a dashed line.

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
    fig, axes = plt.subplots(
        d, 1, figsize=(8, 1.25 * d + 1.0), sharex=True, squeeze=False, layout="constrained"
    )
    draws = np.arange(n_draws)
    for k in range(d):
        ax = axes[k, 0]
        for c in range(n_chains):
            ax.plot(draws, arr[c, :, k], lw=0.6, alpha=0.8, color=f"C{c % 10}", label=f"chain {c}")
        if truth is not None:
            ax.axhline(truth[k], color="k", ls="--", lw=1, label="truth")
        ax.set_ylabel(_short(names[k]), fontsize=9)
        _few_ticks(ax, x=False, size=8)
    axes[-1, 0].set_xlabel("draw")
    leg = fig.legend(
        *axes[0, 0].get_legend_handles_labels(),
        loc="outside upper center",
        ncols=min(n_chains + (truth is not None), 8),
        frameon=False,
        fontsize=9,
    )
    for handle in leg.legend_handles:
        handle.set_linewidth(2.0)
        handle.set_alpha(1.0)
    return fig


def _ellipse_patch(mean2, cov2, n, **kw):
    from matplotlib.patches import Ellipse

    vals, vecs = np.linalg.eigh(cov2)
    vals = np.clip(vals, 0.0, None)
    angle = math.degrees(math.atan2(vecs[1, 1], vecs[0, 1]))
    return Ellipse(mean2, 2 * n * math.sqrt(vals[1]), 2 * n * math.sqrt(vals[0]), angle=angle, **kw)


def ellipse(mean, cov=None, ax=None, truth=None, names=None):
    """1σ and 2σ ellipses of a Gaussian (e.g. a Laplace approximation): the curves at
    Mahalanobis distance 1 and 2 from ``mean``, with the mode and ``truth`` marked and
    named in a legend.

    Two parameters give one panel; more give a lower-triangle grid of pairs with the
    1-D Gaussians on the diagonal. ``mean`` may also be an object with ``.mean`` and
    ``.cov`` (``cx.laplace``'s result). ``ax`` (2 parameters only) draws into an
    existing axes.

    Example:
        >>> import numpy as np, caskax as cx
        >>> fig = cx.plot.ellipse([0.0, 1.0], [[1.0, 0.5], [0.5, 2.0]], truth=[0.1, 0.9])
        >>> sorted(t.get_text() for t in fig.axes[0].get_legend().get_texts())
        ['1σ', '2σ', 'mode', 'truth']
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
        raise ShapeError(f"cov must be [{d}, {d}] for a mean of {d} entries, got {cov.shape}.")
    if d < 2:
        raise ShapeError("ellipse needs at least 2 parameters.")
    names = list(names) if names is not None and len(names) == d else [f"x[{i}]" for i in range(d)]
    truth = _truth(truth, d)
    sig = np.sqrt(np.clip(np.diag(cov), 0.0, None))

    def pair(ax, i, j):  # x: param j, y: param i
        sub = cov[np.ix_([j, i], [j, i])]
        for n, alpha in ((2, 0.25), (1, 0.5)):
            ax.add_patch(
                _ellipse_patch(
                    (mean[j], mean[i]), sub, n, color="C0", alpha=alpha, lw=0, label=f"{n}σ"
                )
            )
        ax.plot(mean[j], mean[i], "+", color="C0", ms=10, mew=2, label="mode")
        if truth is not None:
            ax.plot(truth[j], truth[i], "x", color="C3", ms=8, mew=2, label="truth")
        lo_x, hi_x = mean[j] - 3 * sig[j], mean[j] + 3 * sig[j]
        lo_y, hi_y = mean[i] - 3 * sig[i], mean[i] + 3 * sig[i]
        if truth is not None:  # keep the truth in view
            pad_x, pad_y = 0.3 * sig[j], 0.3 * sig[i]
            lo_x, hi_x = min(lo_x, truth[j] - pad_x), max(hi_x, truth[j] + pad_x)
            lo_y, hi_y = min(lo_y, truth[i] - pad_y), max(hi_y, truth[i] + pad_y)
        ax.set_xlim(lo_x, hi_x)
        ax.set_ylim(lo_y, hi_y)

    def legend(ax, **kw):
        handles, labels = ax.get_legend_handles_labels()
        order = sorted(
            range(len(labels)), key=lambda k: ["mode", "truth", "1σ", "2σ"].index(labels[k])
        )
        return ax.legend([handles[k] for k in order], [labels[k] for k in order], **kw)

    if d == 2 or ax is not None:
        if d != 2:
            raise ShapeError("ax= is for 2 parameters only; with more, a grid is drawn.")
        fig, ax = (
            (ax.figure, ax)
            if ax is not None
            else plt.subplots(figsize=(5.5, 5), layout="constrained")
        )
        pair(ax, 1, 0)
        ax.set_xlabel(names[0])
        ax.set_ylabel(names[1])
        _few_ticks(ax, size=9, n=(5, 5))
        legend(ax, fontsize=9, loc="best")
        return fig
    panel = max(1.6, min(2.5, 12.0 / d))
    fig = plt.figure(figsize=(panel * d + 1.3, panel * d + 1.5), dpi=100)
    _grid_margins(fig, d, panel)
    for i, j, ax in _lower_triangle(fig, d):
        if i == j:
            xs = np.linspace(mean[i] - 4 * sig[i], mean[i] + 4 * sig[i], 200)
            s = sig[i] or 1.0
            ax.plot(xs, np.exp(-0.5 * ((xs - mean[i]) / s) ** 2), color="C0")
            if truth is not None:
                ax.axvline(truth[i], color="C3")
            ax.set_yticks([])
            ax.set_xlim(xs[0], xs[-1])
        else:
            pair(ax, i, j)
            ax.set_xlim(mean[j] - 4 * sig[j], mean[j] + 4 * sig[j])
        _few_ticks(ax, y=i != j)
        if i == d - 1:
            ax.set_xlabel(_short(names[j]), fontsize=9)
        else:
            ax.tick_params(labelbottom=False)
        if j == 0 and i > 0:
            ax.set_ylabel(_short(names[i]), fontsize=9)
        else:
            ax.tick_params(labelleft=False)
    legend(
        fig.axes[1],
        loc="upper left",
        bbox_to_anchor=(1.05 + d // 2, 1.0),
        fontsize=9,
        frameon=False,
    )
    return fig


_KIND_STYLE = {  # face colour of each kind of node
    "module": "#dbe8f6",
    "dynamic": "white",
    "static": "#d3d3d3",
    "pointer": "#f6dfb0",
    "live": "#eeeeee",
}


def _graph_layers(root):
    """Nodes (uid -> label, kind), edges (parent uid, child uid) and a layered layout of
    a module tree: each node one layer below its deepest parent."""
    from . import graph as _graph
    from .param import Param

    w = _graph.walk(root, check=False)
    nodes, edges = {}, []
    for uid, node in w.nodes.items():
        if isinstance(node, Param):
            nodes[uid] = (node.name, node.kind)
        else:
            nodes[uid] = (f"{type(node).__name__}({node.name})", "module")
        for child in _graph.children(node):
            edges.append((uid, child.node.uid))
    edges = list(dict.fromkeys(edges))
    depth = {uid: 0 for uid in nodes}
    for _ in range(len(nodes)):  # longest path from the root (the graph is acyclic)
        changed = False
        for a, b in edges:
            if depth[b] < depth[a] + 1:
                depth[b], changed = depth[a] + 1, True
        if not changed:
            break
    layers = {}
    for uid in nodes:  # walk order: children of one parent stay together
        layers.setdefault(depth[uid], []).append(uid)
    return nodes, edges, layers


def graph(root, max_width=6):
    """The graph of a module tree drawn with matplotlib (no graphviz needed): modules as
    rounded boxes, params as square boxes coloured by kind (named in a legend). A module's own params hang below it as a list; arrows go from a node to
    the nodes it shares with others or points to (a link, a function pointer's inputs).
    One layer per depth; a layer wider than ``max_width`` modules wraps onto several
    rows. ``m.graphviz()`` draws the same graph with graphviz's ``dot``.

    Example:
        >>> import caskax as cx
        >>> from caskax.examples.models import Gaussian1D
        >>> fig = cx.plot.graph(Gaussian1D("lc", t0=-3.0, sigma=2.0, peak_flux=0.25))
        >>> sorted(t.get_text() for t in fig.axes[0].texts)
        ['Gaussian1D(lc)', 'peak_flux', 'sigma', 't0']
        >>> import matplotlib.pyplot as plt; plt.close("all")
    """
    plt = _plt()
    from matplotlib.patches import FancyArrowPatch

    nodes, edges, layers = _graph_layers(root)
    parents = {}
    for a, b in edges:
        parents.setdefault(b, []).append(a)
    # a param held by one module only is listed under it; every other node is laid out
    # by depth, under the mean position of its parents (fewer crossings)
    owned = {}
    for uid, (_, kind) in nodes.items():
        ps = parents.get(uid, [])
        if kind != "module" and len(ps) == 1 and nodes[ps[0]][1] == "module":
            owned.setdefault(ps[0], []).append(uid)
    listed = {u for us in owned.values() for u in us}
    step, dx = 0.42, 1.9  # one listed param's height; distance between columns
    pos, y = {}, 0.0
    for depth in sorted(layers):
        row = [u for u in layers[depth] if u not in listed]
        row.sort(
            key=lambda u: np.mean([pos[p][0] for p in parents.get(u, []) if p in pos] or [0.0])
        )
        for start in range(0, len(row), max_width):
            chunk = row[start : start + max_width]
            longest = 0
            for k, uid in enumerate(chunk):
                x = (k - (len(chunk) - 1) / 2) * dx
                pos[uid] = (x, -y)
                for m, p in enumerate(owned.get(uid, [])):
                    pos[p] = (x - 0.45, -y - step * (m + 1.3))
                longest = max(longest, len(owned.get(uid, [])))
            y += 1.0 + step * (longest + 0.6 if longest else 0)
    xs = [x for x, _ in pos.values()]
    span = max(xs) - min(xs) + 2.4
    fig, ax = plt.subplots(
        figsize=(max(4.0, 0.95 * span), max(2.5, 0.72 * y + 0.4)), layout="constrained"
    )
    for a, b in edges:
        if b in listed and owned.get(a) and b in owned[a]:
            (xa, ya), (xb, yb) = pos[a], pos[b]  # the list's bracket
            ax.plot([xb - 0.12, xb - 0.12, xb - 0.02], [ya - 0.2, yb, yb], color="0.35", lw=0.8)
            continue
        (xa, ya), (xb, yb) = pos[a], pos[b]
        start = (xa + 0.2, ya) if a in listed else (xa, ya - 0.2)
        ax.add_patch(
            FancyArrowPatch(
                start,
                (xb, yb + 0.2),
                arrowstyle="-|>",
                mutation_scale=10,
                color="0.35",
                lw=0.8,
                connectionstyle="arc3,rad=0.08",
            )
        )
    for uid, (label, kind) in nodes.items():
        x, yy = pos[uid]
        if uid in listed:
            ax.text(
                x,
                yy,
                label,
                ha="left",
                va="center",
                fontsize=8,
                bbox=dict(
                    boxstyle="square,pad=0.25", fc=_KIND_STYLE.get(kind, "white"), ec="k", lw=0.6
                ),
            )
            continue
        ax.text(
            x,
            yy,
            label.replace("(", "\n(", 1) if len(label) > 18 else label,
            ha="center",
            va="center",
            fontsize=8,
            bbox=dict(
                boxstyle="round,pad=0.35" if kind == "module" else "square,pad=0.3",
                fc=_KIND_STYLE.get(kind, "white"),
                ec="k",
                lw=0.8,
            ),
        )
    from matplotlib.patches import Patch

    kinds = [k for k in _KIND_STYLE if any(kind == k for _, kind in nodes.values())]
    ax.legend(
        [Patch(fc=_KIND_STYLE[k], ec="k", lw=0.6) for k in kinds],
        [k if k == "module" else f"{k} param" for k in kinds],
        loc="lower right",
        fontsize=8,
        frameon=False,
    )
    ax.set_xlim(min(xs) - 1.0, max(xs) + 1.4)
    ax.set_ylim(-y + 0.3, 0.5)
    ax.axis("off")
    return fig
