"""Showing a model: the text tree (``str(m)``), HTML for notebooks, graphviz."""

import html

import numpy as np

from . import graph
from .param import Param, _short

__all__ = ["tree_str", "tree_html", "graphviz"]


def _describe(p: Param) -> str:
    parts = [p.kind]
    if p.pointer:
        ins = [getattr(i, "name", type(i).__name__) for i in p.link.inputs]
        arrow = "-> " + ", ".join(ins) if p.link.is_link else f"= {getattr(p.link.fn, '__name__', 'fn')}({', '.join(ins)})"
        parts.append(arrow)
    elif p.value is not None:
        parts.append(_short(p.value))
    elif p.dynamic:
        parts.append(f"shape {p.shape or ()}")
    if p.batched:
        parts.append(f"batch {p.batch_shape}")
    if p.units:
        parts.append(f"[{p.units}]")
    if p.valid is not None:
        parts.append(f"valid {p.valid}" + (" cyclic" if p.cyclic else ""))
    if p.group:
        parts.append(f"group {p.group}")
    return " ".join(parts)


def _lines(root):
    """(depth, key, node, first_time) rows of the tree, shared nodes expanded once."""
    seen = set()
    rows = []

    def visit(node, key, depth):
        first = node.uid not in seen
        rows.append((depth, key, node, first))
        if not first:
            return
        seen.add(node.uid)
        for child in graph.children(node):
            visit(child.node, child.path.lstrip("."), depth + 1)

    visit(root, root.name, 0)
    return rows


def tree_str(root) -> str:
    """An indented tree, one line per node: name, kind, value or shape, units, valid,
    pointer targets. A shared node is shown once, later lines refer back to it."""
    out = []
    for depth, key, node, first in _lines(root):
        pad = "    " * depth
        if isinstance(node, Param):
            desc = _describe(node) if first else "(shared, shown above)"
            out.append(f"{pad}{key}: {desc}")
        else:
            label = f"{key} ({type(node).__name__} '{node.name}')" if depth else f"{node.name} ({type(node).__name__})"
            out.append(pad + label + ("" if first else " (shared, shown above)"))
    return "\n".join(out)


_COLOURS = {"dynamic": "#1f77b4", "static": "#555", "pointer": "#2ca02c", "live": "#999"}


def tree_html(root) -> str:
    """A collapsible HTML tree for notebooks (dynamic params highlighted)."""
    w = graph.walk(root)
    seen = set()

    def render(node, key):
        if isinstance(node, Param):
            path = html.escape(w.paths.get(node.uid) or node.name)
            colour = _COLOURS[node.kind]
            weight = "bold" if node.dynamic else "normal"
            text = html.escape(_describe(node))
            return (
                f'<li title="{path}"><span style="color:{colour};font-weight:{weight}">'
                f"{html.escape(key)}</span>: {text}</li>"
            )
        if node.uid in seen:
            return f"<li>{html.escape(key)} ({html.escape(node.name)}, shared)</li>"
        seen.add(node.uid)
        inner = "".join(render(c.node, c.path.lstrip(".")) for c in graph.children(node))
        return (
            f"<li><details open><summary>{html.escape(key)} "
            f"<em>{html.escape(type(node).__name__)}</em></summary><ul>{inner}</ul></details></li>"
        )

    return f'<ul style="list-style:none">{render(root, root.name)}</ul>'


def graphviz(root, saveto=None):
    """A ``graphviz.Digraph`` in caskade's visual language: modules as ellipses,
    dynamic params as boxes, static shaded, live grey, pointers as arrows to inputs."""
    try:
        import graphviz as gv
    except ImportError:
        raise ImportError("m.graphviz() needs the graphviz package: pip install graphviz") from None
    dot = gv.Digraph(strict=True)
    w = graph.walk(root)
    for uid, node in w.nodes.items():
        label = node.name
        if isinstance(node, Param):
            style = {
                "dynamic": dict(shape="box"),
                "static": dict(shape="box", style="filled", fillcolor="lightgrey"),
                "live": dict(shape="box", style="filled", fillcolor="grey"),
                "pointer": dict(shape="cds"),
            }[node.kind]
        else:
            style = dict(shape="ellipse")
            label = f"{node.name}|{type(node).__name__}"
        dot.node(str(uid), label, **style)
    for uid, node in w.nodes.items():
        for child in graph.children(node):
            dot.edge(str(uid), str(child.node.uid))
    if saveto is not None:
        import shutil

        if shutil.which("dot") is None:
            raise RuntimeError(
                "rendering needs the graphviz 'dot' binary: apt-get install graphviz "
                "(or conda install graphviz)."
            )
        fmt = saveto.rsplit(".", 1)[-1] if "." in saveto else "png"
        dot.render(outfile=saveto, format=fmt, cleanup=True)
    return dot
