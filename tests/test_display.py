"""The text tree, the notebook HTML and the graphviz drawing."""

import shutil
from html.parser import HTMLParser

import jax.numpy as jnp
import pytest

import caskax as cx
from caskax import graph
from caskax.display import tree_html, tree_str
from caskax.examples.models import Combined, Gaussian, Gaussian1D, Likelihood, Stack


def like2(n=3):
    axis = jnp.linspace(-1.0, 1.0, 4)
    x, y = jnp.meshgrid(axis, axis, indexing="ij")
    galaxy = Gaussian("Galaxy", x0=[0.2, 0.2], q=0.6, phi=0.5, sigma=0.3, flux=1.0).to_dynamic()
    images = []
    for i in range(n):
        sn = Gaussian(f"SN{i}", x0=[-0.35, -0.2], q=1.0, phi=0.0, sigma=0.05, flux=0.2)
        sn = sn.to_dynamic("x0", "flux")
        if i > 0:
            sn = sn.set("x0", images[0].models[0].x0)
        images.append(Combined(f"image{i}", x, y, [sn, galaxy]))
    return Likelihood("likelihood2", Stack("secondmodel", images), jnp.zeros((n, 4, 4)))


class Misc(cx.Module):
    """A live param, a function pointer, units, a large array and a batched param."""

    big: cx.Param
    live: cx.Param
    lc: Gaussian1D
    f: cx.Param
    batch: cx.Param

    def __init__(self):
        super().__init__("misc")
        self.big = cx.Param("big", jnp.zeros((10, 10)), units="adu")
        self.live = cx.Param("live", None, shape=(), dynamic=False)
        self.lc = Gaussian1D("lc", t0=-3.0, sigma=2.0, peak_flux=0.25)
        t = cx.Param("t", 1.0)
        self.f = cx.Param("f", cx.Pointer(lambda lc, t: lc.flux(t), self.lc, t))
        self.batch = cx.Param("batch", [1.0, 2.0, 3.0], shape=(), dynamic=True)


def param_paths(m):
    w = graph.walk(m)
    return [w.paths[u] for u, n in w.nodes.items() if isinstance(n, cx.Param)]


def test_tree_text_shows_kinds_values_and_shared_nodes_once():
    m = like2()
    text = str(m)
    assert text == tree_str(m) == repr(m)
    lines = text.splitlines()
    assert lines[0] == "likelihood2 (Likelihood)"
    assert "    model (Stack 'secondmodel')" in lines
    assert sum("q: dynamic 0.6 valid=(0.0, 1.0)" in ln for ln in lines) == 1  # galaxy once
    assert sum("shared, see model.models[0].models[1]" in ln for ln in lines) == 2
    assert sum("x0: pointer -> model.models[0].models[0].x0" in ln for ln in lines) == 2
    assert any("phi: static 0. valid=(0.0, 3.141592653589793) cyclic" in ln for ln in lines)


def test_tree_text_units_live_large_arrays_and_function_pointers():
    text = str(Misc())
    assert "big: static <array (10, 10) float32> [adu]" in text
    assert "live: live (unset)" in text
    assert "f: pointer = <lambda>(lc, t)" in text  # inputs shown right below it, by name
    assert "lc (Gaussian1D 'lc')" in text and "t: static 1." in text
    assert "batch: dynamic [1., 2., 3.] batch (3,)" in text


class _Checker(HTMLParser):
    VOID = {"br", "hr", "img", "input", "meta", "link", "wbr"}

    def __init__(self):
        super().__init__()
        self.stack, self.errors, self.paths = [], [], []

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        if "data-path" in attrs:
            self.paths.append(attrs["data-path"])
        if tag == "li" and (not self.stack or self.stack[-1] != "ul"):
            self.errors.append("li outside ul")
        if tag not in self.VOID:
            self.stack.append(tag)

    def handle_endtag(self, tag):
        if not self.stack or self.stack[-1] != tag:
            self.errors.append(f"unexpected </{tag}> (open: {self.stack[-3:]})")
        else:
            self.stack.pop()


@pytest.mark.parametrize("make", [like2, Misc], ids=["likelihood2", "misc"])
def test_html_is_valid_and_names_every_param(make):
    m = make()
    doc = m._repr_html_()
    assert doc == tree_html(m)
    checker = _Checker()
    checker.feed(doc)
    checker.close()
    assert not checker.errors and not checker.stack
    for path in param_paths(m):
        assert path in checker.paths
    assert "<details" in doc and "<summary>" in doc  # collapsible
    assert "font-weight:bold" in doc  # dynamic params highlighted


def test_graphviz_uses_caskade_styles():
    m = like2()
    src = m.graphviz().source
    assert src.startswith("strict digraph")
    assert src.count('label="Gaussian(Galaxy)"') == 1  # a shared node drawn once
    assert 'label="Likelihood(likelihood2)"' in src and "shape=ellipse" in src
    assert 'label="NodeList(models)[2]"' in src and "shape=folder" in src
    assert "shape=rarrow" in src  # pointers
    assert "fillcolor=white shape=box style=solid" in src  # dynamic
    assert "fillcolor=lightgrey shape=box style=filled" in src  # static
    ptr = m.model.models[1].models[0].x0
    target = m.model.models[0].models[0].x0
    assert f"{ptr.uid} -> {target.uid}" in src


def test_graphviz_live_and_batched():
    src = Misc().graphviz().source
    assert "fillcolor=grey90" in src  # live
    assert "subgraph cluster_batched" in src


def test_graphviz_saveto_without_dot_says_how_to_install(monkeypatch, tmp_path):
    monkeypatch.setattr(shutil, "which", lambda name: None)
    with pytest.raises(RuntimeError, match="apt-get install graphviz"):
        like2().graphviz(saveto=str(tmp_path / "g.png"))
    assert not list(tmp_path.iterdir())


@pytest.mark.skipif(shutil.which("dot") is None, reason="graphviz 'dot' not installed")
def test_graphviz_saveto_renders(tmp_path):
    out = tmp_path / "g.svg"
    like2().graphviz(saveto=str(out))
    assert out.exists() and out.stat().st_size > 100


def test_graphviz_edges_join_declared_nodes(data):
    """Every edge end is a declared node (an id like "12:models" would be read by dot as
    node 12, port "models", leaving collection nodes unconnected)."""
    import re

    from caskax.examples.stages import stage3_model

    dot = stage3_model(data).graphviz()
    declared = set(re.findall(r"^\s*(\S+) \[", "\n".join(dot.body), flags=re.M))
    edges = re.findall(r"^\s*(\S+) -> (\S+)", "\n".join(dot.body), flags=re.M)
    assert edges
    for a, b in edges:
        assert a in declared and b.rstrip(";") in declared, (a, b)
        assert ":" not in a + b, (a, b)
