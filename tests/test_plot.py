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
    fig = cx.plot.lightcurve(t, (truth, 0.02 * np.ones(5)),
                             truth=lambda s: 0.25 * np.exp(-(((s - 3) / 2) ** 2)))
    _save(fig, tmp_path / "fit.png")
    with pytest.raises(ValueError, match=r"\[n, len\(t\)\]"):
        cx.plot.lightcurve(t, np.zeros((10, 4)))


def test_corner_and_trace_accept_chains_objects_and_arrays(tmp_path):
    rng = np.random.default_rng(2)
    chains = SimpleNamespace(samples=rng.normal(size=(2, 300, 3)), names=["t0", "sigma", "peak"])
    fig = cx.plot.corner(chains, truth=[0.0, 0.0, 0.0])
    assert fig.axes[0].get_title().startswith("t0 =")
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
