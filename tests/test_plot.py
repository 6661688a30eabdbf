"""cx.plot: each helper returns a Figure that renders to a PNG."""

from types import SimpleNamespace

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402

import caskax as cx  # noqa: E402


@pytest.fixture(autouse=True)
def _close_figures():
    yield
    plt.close("all")


def _save(fig, path):
    assert isinstance(fig, matplotlib.figure.Figure)
    fig.savefig(path, dpi=50)
    assert path.exists() and path.stat().st_size > 3000
    with open(path, "rb") as fh:
        assert fh.read(8) == b"\x89PNG\r\n\x1a\n"


def test_images(tmp_path):
    rng = np.random.default_rng(0)
    data = rng.normal(size=(3, 12, 12))
    _save(cx.plot.images(data, data * 0.9, titles=["a", "b", "c"]), tmp_path / "i.png")
    _save(cx.plot.images(data[0], data[0], residual=rng.normal(size=(12, 12))), tmp_path / "j.png")
    with pytest.raises(ValueError, match="model shape"):
        cx.plot.images(data, data[:2])


def test_lightcurve_samples_and_fit(tmp_path):
    t = np.linspace(0, 6, 5)
    truth = 0.25 * np.exp(-(((t - 3) / 2) ** 2))
    curves = truth + 0.02 * np.random.default_rng(1).normal(size=(200, 5))
    fig = cx.plot.lightcurve(t, curves, truth=truth, points=(t, truth, 0.01 * np.ones(5)))
    _save(fig, tmp_path / "samples.png")
    fig = cx.plot.lightcurve(
        t, (truth, 0.02 * np.ones(5)), truth=lambda s: 0.25 * np.exp(-(((s - 3) / 2) ** 2))
    )
    _save(fig, tmp_path / "fit.png")
    with pytest.raises(ValueError, match=r"\[n, len\(t\)\]"):
        cx.plot.lightcurve(t, np.zeros((10, 4)))


def test_corner_and_trace_accept_chains_objects_and_arrays(tmp_path):
    rng = np.random.default_rng(2)
    chains = SimpleNamespace(samples=rng.normal(size=(2, 300, 3)), names=["t0", "sigma", "peak"])
    fig = cx.plot.corner(chains, truth=[0.0, 0.0, 0.0])
    assert fig.axes[0].get_title().startswith("t0\n")
    _save(fig, tmp_path / "corner.png")
    _save(cx.plot.corner(rng.normal(size=(400, 2))), tmp_path / "corner2.png")
    fig = cx.plot.trace(chains)
    assert [ax.get_ylabel() for ax in fig.axes] == ["t0", "sigma", "peak"]
    assert len(fig.axes[0].lines) == 2  # one line per chain
    _save(fig, tmp_path / "trace.png")
    with pytest.raises(ValueError, match="truth has 2 entries"):
        cx.plot.corner(chains, truth=[0.0, 1.0])


def test_ellipse(tmp_path):
    cov = np.array([[1.0, 0.6, 0.0], [0.6, 2.0, 0.1], [0.0, 0.1, 0.5]])
    _save(cx.plot.ellipse([0.0, 1.0], cov[:2, :2], truth=[0.2, 0.8]), tmp_path / "e2.png")
    laplace = SimpleNamespace(mean=np.zeros(3), cov=cov)
    fig = cx.plot.ellipse(laplace, names=["a", "b", "c"])
    assert len(fig.axes) == 6  # diagonal and below only
    _save(fig, tmp_path / "e3.png")
    fig, ax = plt.subplots()
    assert cx.plot.ellipse([0.0, 0.0], np.eye(2), ax=ax) is fig
    assert len(ax.patches) == 2  # 1-sigma and 2-sigma


# --- pictures: each helper rendered with Agg, checked for size, text on the canvas,
# --- text that does not overlap, and orientation


def _render(fig, path, dpi=50):
    """Save ``fig`` as a PNG and return its pixels; the PNG has the figure's size."""
    fig.savefig(path, dpi=dpi)
    pixels = matplotlib.image.imread(path)
    width, height = fig.get_size_inches() * dpi
    assert abs(pixels.shape[1] - width) <= 1 and abs(pixels.shape[0] - height) <= 1
    return pixels


def _texts(fig):
    """Every piece of text matplotlib draws: titles, labels, tick labels in view,
    legends, colour-bar labels, figure titles."""
    out = [t for t in fig.texts if t.get_visible() and t.get_text().strip()]
    for leg in fig.legends:
        out += leg.get_texts()
    for ax in fig.axes:
        out += [ax.title, ax._left_title, ax._right_title, ax.xaxis.label, ax.yaxis.label]
        out += [t for t in ax.texts]
        lo, hi = sorted(ax.get_xlim())
        out += [t for t in ax.get_xticklabels() if lo <= t.get_position()[0] <= hi]
        lo, hi = sorted(ax.get_ylim())
        out += [t for t in ax.get_yticklabels() if lo <= t.get_position()[1] <= hi]
        if ax.get_legend() is not None:
            out += ax.get_legend().get_texts()
    return [t for t in out if t.get_visible() and t.get_text().strip()]


def _check_layout(fig):
    """All text inside the canvas (the tight bounding box within the figure), and no
    two pieces of text on top of each other."""
    fig.canvas.draw()
    renderer = fig.canvas.get_renderer()
    tight = fig.get_tightbbox(renderer)
    width, height = fig.get_size_inches()
    assert tight.x0 >= -0.02 and tight.y0 >= -0.02, tight
    assert tight.x1 <= width + 0.02 and tight.y1 <= height + 0.02, (tight, width, height)
    boxes = [(t.get_text(), t.get_window_extent(renderer)) for t in _texts(fig)]
    for k, (a, ba) in enumerate(boxes):
        for b, bb in boxes[k + 1 :]:
            w = min(ba.x1, bb.x1) - max(ba.x0, bb.x0)
            h = min(ba.y1, bb.y1) - max(ba.y0, bb.y0)
            assert w <= 1 or h <= 1, f"texts {a!r} and {b!r} overlap"
    return renderer


def _bright_spot(fig, ax, pixels, dpi):
    """(x, y) of the brightest pixel inside ``ax`` as fractions of the axes, y up."""
    box = ax.get_window_extent()  # display pixels at fig.dpi, y up
    scale = dpi / fig.dpi
    h = pixels.shape[0]
    x0, x1 = int(box.x0 * scale) + 1, int(box.x1 * scale) - 1
    y0, y1 = h - int(box.y1 * scale) + 1, h - int(box.y0 * scale) - 1
    crop = pixels[y0:y1, x0:x1, :3].sum(axis=-1)
    row, col = np.unravel_index(np.argmax(crop), crop.shape)
    return col / crop.shape[1], 1 - row / crop.shape[0]


def _asymmetric(nx=12, ny=8):
    """An image indexed [x, y] (meshgrid indexing="ij") that is bright at large x and
    small y only: drawn with x right and y up, its spot sits bottom right."""
    img = np.zeros((nx, ny))
    img[nx - 2, 1] = 1.0
    return img


def test_images_picture_orientation_and_labels(tmp_path):
    img = _asymmetric()
    fig = cx.plot.images(
        img,
        0 * img,
        titles=["t = 0"],
        suptitle="Stage 1: a test",
        residual_label="(data − model)/σ",
        label="brightness",
    )
    pixels = _render(fig, tmp_path / "images.png", dpi=60)
    _check_layout(fig)
    data_ax = fig.axes[0]
    assert data_ax.get_images()[0].get_array().shape == (8, 12)  # rows are y, columns x
    x, y = _bright_spot(fig, data_ax, pixels, 60)
    assert x > 0.75 and y < 0.35, (x, y)
    assert fig.get_suptitle() == "Stage 1: a test"
    labels = {ax.get_ylabel() for ax in fig.axes}
    assert {"brightness", "(data − model)/σ", "data", "model", "residual"} <= labels
    # indexing="xy": an array [y, x] drawn as given
    fig = cx.plot.images(img.T, 0 * img.T, indexing="xy")
    pixels = _render(fig, tmp_path / "images_xy.png", dpi=60)
    x, y = _bright_spot(fig, fig.axes[0], pixels, 60)
    assert x > 0.75 and y < 0.35, (x, y)
    with pytest.raises(ValueError, match="indexing"):
        cx.plot.images(img, img, indexing="yx")


def test_animation_shares_the_orientation_and_has_a_colour_bar_and_time(tmp_path):
    frames = np.stack([_asymmetric(), 2 * _asymmetric()])
    anim = cx.plot.animate(frames, times=[0.0, 1.5], label="brightness")
    fig = anim._fig
    pixels = _render(fig, tmp_path / "frame.png", dpi=60)
    _check_layout(fig)
    x, y = _bright_spot(fig, fig.axes[0], pixels, 60)
    assert x > 0.75 and y < 0.35, (x, y)
    assert fig.axes[1].get_ylabel() == "brightness"  # the colour bar
    assert fig.axes[0].texts[0].get_text() == "t = 0.00"
    from PIL import Image

    anim = cx.plot.animate(frames, times=[0.0, 1.5], saveto=tmp_path / "movie.gif", dpi=40)
    with Image.open(tmp_path / "movie.gif") as gif:
        assert gif.n_frames == 2
        assert gif.size == tuple(int(v * 40) for v in anim._fig.get_size_inches())
        gif.seek(1)  # the second frame is the brighter one: its spot is bottom right too
        second = np.asarray(gif.convert("RGB"), dtype=float) / 255
    x, y = _bright_spot(anim._fig, anim._fig.axes[0], second, 40)
    assert x > 0.75 and y < 0.35, (x, y)


def _eleven(seed=0):
    names = [
        "SN.x0[0]",
        "SN.x0[1]",
        "Galaxy.x0[0]",
        "Galaxy.x0[1]",
        "Galaxy.q",
        "Galaxy.phi",
        "Galaxy.sigma",
        "Galaxy.flux",
        "lightcurve.t0",
        "lightcurve.sigma",
        "lightcurve.peak_flux",
    ]
    mean = np.array([-0.35, -0.2, 0.2, 0.2, 0.6, 0.49, 0.3, 1.0, -2.93, 1.95, 0.285])
    sd = np.array([0.0023, 0.002, 0.0016, 0.0022, 0.005, 0.008, 0.0018, 0.007, 0.085, 0.11, 0.019])
    samples = mean + sd * np.random.default_rng(seed).normal(size=(4, 500, 11))
    return SimpleNamespace(samples=samples, names=names), mean


def test_corner_picture_readable_at_eleven_params(tmp_path):
    chains, mean = _eleven()
    fig = cx.plot.corner(chains, truth=mean)
    width, height = fig.get_size_inches()
    assert width * fig.dpi >= 1500 and height * fig.dpi >= 1500  # reads on a slide
    _render(fig, tmp_path / "corner.png", dpi=40)
    _check_layout(fig)
    diagonal = [ax for ax in fig.axes if ax.get_title()]
    assert [ax.get_title().split("\n")[0] for ax in diagonal] == chains.names
    assert all(ax.get_title(loc="center") for ax in diagonal)
    assert min(t.get_fontsize() for t in _texts(fig)) >= 8
    truths = sum(1 for ax in fig.axes for line in ax.lines if line.get_color() == "C3")
    assert truths >= 11


def test_trace_picture_has_a_chain_legend(tmp_path):
    chains, mean = _eleven()
    fig = cx.plot.trace(chains, truth=mean)
    _render(fig, tmp_path / "trace.png", dpi=40)
    _check_layout(fig)
    legend = [t.get_text() for t in fig.legends[0].get_texts()]
    assert legend == ["chain 0", "chain 1", "chain 2", "chain 3", "truth"]


def test_ellipse_picture_has_a_legend_and_uncut_labels(tmp_path):
    cov = np.array([[0.0117, 0.0015], [0.0015, 0.00036]])
    fig = cx.plot.ellipse(
        [1.94, 0.286], cov, truth=[2.0, 0.25], names=["lightcurve.sigma", "lightcurve.peak_flux"]
    )
    assert min(fig.get_size_inches()) >= 4.5
    _render(fig, tmp_path / "ellipse.png", dpi=80)
    _check_layout(fig)
    ax = fig.axes[0]
    assert [t.get_text() for t in ax.get_legend().get_texts()] == ["mode", "truth", "1σ", "2σ"]
    x0, x1 = ax.get_xlim()
    y0, y1 = ax.get_ylim()
    assert x0 < 2.0 < x1 and y0 < 0.25 < y1  # the truth stays in view
    fig = cx.plot.ellipse(np.zeros(4), np.eye(4), truth=np.zeros(4))
    _render(fig, tmp_path / "ellipse4.png", dpi=40)
    _check_layout(fig)


def test_lightcurve_picture(tmp_path):
    t = np.linspace(0, 6, 5)
    truth = 0.25 * np.exp(-(((t - 3) / 2) ** 2))
    curves = truth + 0.02 * np.random.default_rng(1).normal(size=(200, 5))
    fig = cx.plot.lightcurve(t, curves, truth=truth, points=(t, truth, 0.01 * np.ones(5)))
    _render(fig, tmp_path / "lc.png", dpi=60)
    _check_layout(fig)
    labels = [t.get_text() for t in fig.axes[0].get_legend().get_texts()]
    assert {"model, 2σ", "model, 1σ", "model, median", "truth", "measured"} <= set(labels)


def test_graph_picture_without_graphviz(tmp_path):
    from caskax.examples.models import Combined, Gaussian, Gaussian1D

    lc = Gaussian1D("lightcurve", t0=-3.0, sigma=2.0, peak_flux=0.25)
    galaxy = Gaussian("galaxy", x0=[0.2, 0.2], q=0.6, phi=0.5, sigma=0.3, flux=1.0)
    grid = np.zeros((4, 4))
    sn = Gaussian(
        "sn", x0=[0.0, 0.0], q=1.0, phi=0.0, sigma=0.05, flux=cx.Pointer(lambda m: m.peak_flux, lc)
    )
    model = Combined("image", grid, grid, [sn, galaxy])
    fig = cx.plot.graph(model)
    _render(fig, tmp_path / "graph.png", dpi=60)
    _check_layout(fig)
    texts = [t.get_text() for t in fig.axes[0].texts]
    for label in (
        "Combined(image)",
        "Gaussian(sn)",
        "Gaussian(galaxy)",
        "Gaussian1D\n(lightcurve)",
        "peak_flux",
        "flux",
    ):
        assert label in texts, (label, texts)
    # one arrow per pointer input or shared node; the lists under modules are lines
    assert len(fig.axes[0].patches) >= 1
