"""Showing a model: the text tree (``str(m)``), HTML for notebooks, graphviz.

All three walk the tree once in field order. A node reachable along several paths
(a shared galaxy, a pointer's target) is shown in full at its first place only; later
places refer back to it by path.
"""

import html
import os
import shutil

from . import graph
from .errors import ToolError
from .param import Param, _short

__all__ = ["tree_str", "tree_html", "graphviz", "describe_param"]


def _node_path(w, node) -> str:
    return w.paths.get(node.uid) or node.name


def _target(w, inp, first_under) -> str:
    """How a pointer names one input: by path when it is shown elsewhere, by name when
    it is shown right under the pointer."""
    if not graph.is_node(inp):
        return _short(inp) if hasattr(inp, "shape") else repr(inp)
    return inp.name if first_under else _node_path(w, inp)


def describe_param(p: Param, w=None, shown_under=frozenset()) -> str:
    """One line about ``p``: kind, value (or shape for large arrays), batch axes, units,
    valid range, group, pointer targets.

    Example:
        >>> import caskax as cx
        >>> describe_param(cx.Param("q", 0.5, valid=(0, 1), units="none"))
        'static 0.5 [none] valid=(0.0, 1.0)'
    """
    parts = [p.kind]
    if p.pointer:
        ins = [
            _target(w, i, i.uid in shown_under)
            if (w is not None and graph.is_node(i))
            else getattr(i, "name", None) or _target(None, i, True)
            for i in p.ptr.inputs
        ]
        if p.ptr.is_link:
            parts.append("-> " + ", ".join(ins))
        else:
            parts.append(f"= {getattr(p.ptr.fn, '__name__', 'fn')}({', '.join(ins)})")
    elif p.value is not None:
        parts.append(_short(p.value))
    elif p.dynamic:
        shape = p.batch_shape + tuple(p.shape or ())
        parts.append(f"(no value, shape {shape})")
    else:
        parts.append("(unset)")
    if p.batched:
        parts.append(f"batch {p.batch_shape}")
    if p.units:
        parts.append(f"[{p.units}]")
    if p.valid is not None:
        parts.append(f"valid={p.valid}" + (" cyclic" if p.cyclic else ""))
    if p.group:
        parts.append(f"group {p.group}")
    return " ".join(parts)


def _rows(root):
    """(depth, label, node, first, w, shown_under) rows of the tree: each node expanded
    at its first place; pointer inputs already shown elsewhere are not repeated."""
    w = graph.walk(root, check=False)  # a stale tree still prints
    seen = set()
    rows = []

    def visit(node, label, depth, under_pointer):
        first = node.uid not in seen
        if not first and under_pointer:
            return  # the pointer's line already names it by path
        seen.add(node.uid)
        kids = graph.children(node)
        shown_under = frozenset(c.node.uid for c in kids if c.node.uid not in seen)
        rows.append((depth, label, node, first, w, shown_under))
        if not first:
            return
        is_ptr = isinstance(node, Param)
        for child in kids:
            lab = child.node.name if is_ptr else child.path.lstrip(".")
            visit(child.node, lab, depth + 1, is_ptr)

    visit(root, root.name, 0, False)
    return rows


def tree_str(root) -> str:
    """An indented tree, one line per node: name, kind, value or shape, units, valid,
    pointer targets. A shared node is shown once; later lines refer to its path.

    Example:
        >>> import caskax as cx
        >>> from caskax.examples.models import Gaussian1D
        >>> print(tree_str(Gaussian1D("lc", t0=-3.0, sigma=2.0, peak_flux=0.25).to_dynamic("t0")))
        lc (Gaussian1D)
            t0: dynamic -3.
            sigma: static 2. valid=(0.0, None)
            peak_flux: static 0.25
    """
    out = []
    for depth, label, node, first, w, shown_under in _rows(root):
        pad = "    " * depth
        if isinstance(node, Param):
            desc = (
                describe_param(node, w, shown_under)
                if first
                else f"shared, see {_node_path(w, node)}"
            )
            out.append(f"{pad}{label}: {desc}")
        elif depth == 0:
            out.append(f"{node.name} ({type(node).__name__})")
        else:
            head = f"{pad}{label} ({type(node).__name__} '{node.name}')"
            out.append(head if first else f"{head}: shared, see {_node_path(w, node)}")
    return "\n".join(out)


_COLOURS = {"dynamic": "#1565c0", "static": "#444444", "pointer": "#2e7d32", "live": "#9e9e9e"}


def tree_html(root) -> str:
    """A collapsible HTML tree for notebooks: modules as ``<details>`` blocks, params
    coloured by kind (dynamic ones bold on a light background), each param's path in
    its tooltip.

    Example:
        >>> from caskax.examples.models import Gaussian1D
        >>> "t0" in tree_html(Gaussian1D("lc", t0=-3.0, sigma=2.0, peak_flux=0.25))
        True
    """
    rows = _rows(root)
    parts = ['<div class="caskax-tree" style="font-family:monospace">']
    stack = []  # depths of open <details>

    def close_to(depth):
        while stack and stack[-1] >= depth:
            stack.pop()
            parts.append("</ul></details></li>" if stack else "</ul></details>")

    for depth, label, node, first, w, shown_under in rows:
        close_to(depth)
        esc_label = html.escape(label)
        if isinstance(node, Param):
            path = html.escape(_node_path(w, node), quote=True)
            if not first:
                parts.append(
                    f'<li data-path="{path}">{esc_label}: <em>shared, see {path}</em></li>'
                )
                continue
            colour = _COLOURS[node.kind]
            style = f"color:{colour}"
            if node.dynamic:
                style += ";font-weight:bold;background:#e3f2fd"
            desc = html.escape(describe_param(node, w, shown_under))
            line = (
                f'<span title="{path}" style="{style}">{esc_label}</span>: {desc} '
                f'<small style="color:#888">{path}</small>'
            )
            if any(c.node.uid in shown_under for c in graph.children(node)):
                parts.append(
                    f'<li data-path="{path}"><details><summary>{line}</summary>'
                    '<ul style="list-style:none;padding-left:1.2em">'
                )
                stack.append(depth)
            else:
                parts.append(f'<li data-path="{path}">{line}</li>')
            continue
        kind = html.escape(type(node).__name__)
        path = html.escape(_node_path(w, node) if depth else node.name, quote=True)
        if not first:
            parts.append(
                f'<li data-path="{path}">{esc_label} <em>{kind}: shared, see {path}</em></li>'
            )
            continue
        title = (
            esc_label if depth == 0 else f"{esc_label} <em>{kind}</em> '{html.escape(node.name)}'"
        )
        if depth == 0:
            title = f"<b>{esc_label}</b> <em>{kind}</em>"
        opener = "<details open>" if depth < 2 else "<details>"
        prefix = "" if depth == 0 else f'<li data-path="{path}">'
        parts.append(
            f"{prefix}{opener}<summary>{title}</summary>"
            '<ul style="list-style:none;padding-left:1.2em">'
        )
        stack.append(depth)
    close_to(0)
    parts.append("</div>")
    return "".join(parts)


# caskade's graphviz styles (Module, Param kinds, NodeList/NodeTuple/NodeDict).
_MODULE_STYLE = {"style": "solid", "color": "black", "shape": "ellipse"}
_PARAM_STYLES = {
    "pointer": {
        "style": "filled",
        "color": "lightgrey",
        "fillcolor": "lightgrey",
        "shape": "rarrow",
    },
    "dynamic": {"style": "solid", "color": "black", "fillcolor": "white", "shape": "box"},
    "live": {"style": "filled", "color": "black", "fillcolor": "grey90", "shape": "box"},
    "static": {"style": "filled", "color": "lightgrey", "fillcolor": "lightgrey", "shape": "box"},
}
_COLLECTION_STYLES = {
    list: ("NodeList", {"style": "solid", "color": "black", "shape": "folder"}),
    tuple: ("NodeTuple", {"style": "solid", "color": "black", "shape": "tab"}),
    dict: ("NodeDict", {"style": "solid", "color": "black", "shape": "component"}),
}


def _collection_kind(value):
    for typ, spec in _COLLECTION_STYLES.items():
        if isinstance(value, typ):
            return spec
    return None


def graphviz(root, saveto=None):
    """A ``graphviz.Digraph`` in caskade's visual language: modules as ellipses
    (labelled ``Class(name)``), list/tuple/dict fields as caskade's collection shapes,
    dynamic params as white boxes, static params shaded, live params grey, pointers
    as arrows pointing to their inputs; batched params are boxed together. With
    ``saveto="graph.pdf"`` (any format graphviz knows, by extension) the graph is also
    rendered to that file, which needs graphviz's ``dot`` program.

    Example:
        >>> from caskax.examples.models import Gaussian1D
        >>> dot = graphviz(Gaussian1D("lc", t0=-3.0, sigma=2.0, peak_flux=0.25))
        >>> "Gaussian1D(lc)" in dot.source
        True
    """
    try:
        import graphviz as gv
    except ImportError:
        raise ImportError("m.graphviz() needs the graphviz package: pip install graphviz") from None
    dot = gv.Digraph(strict=True)
    w = graph.walk(root, check=False)  # a stale tree still prints
    batched = []
    for uid, node in w.nodes.items():
        if isinstance(node, Param):
            if node.batched:
                batched.append(node)
                continue
            dot.node(str(uid), node.name, **_PARAM_STYLES[node.kind])
        else:
            dot.node(str(uid), f"{type(node).__name__}({node.name})", **_MODULE_STYLE)
    if batched:
        with dot.subgraph(name="cluster_batched") as sub:
            sub.attr(label="batched", style="rounded", color="black")
            for p in batched:
                sub.node(str(p.uid), p.name, **_PARAM_STYLES[p.kind])
    for uid, node in w.nodes.items():
        if isinstance(node, Param):
            for child in graph.children(node):
                dot.edge(str(uid), str(child.node.uid))
            continue
        for name in graph.node_fields(node):
            value = getattr(node, name)
            if graph.is_node(value):
                dot.edge(str(uid), str(value.uid))
                continue
            spec = _collection_kind(value)
            members = [c for c in graph.children(node) if c.key[0] == name]
            if spec is None or not members:
                continue
            cname, style = spec
            cid = f"{uid}_{name}"  # no colon: graphviz reads "a:b" as node a, port b
            dot.node(cid, f"{cname}({name})[{len(value)}]", **style)
            dot.edge(str(uid), cid)
            for child in members:
                dot.edge(cid, str(child.node.uid))
    if saveto is not None:
        render(dot, saveto)
    return dot


def render(dot, saveto) -> str:
    """Render a graphviz ``Digraph`` to ``saveto`` (format from the extension, png when
    there is none); a clear error when graphviz's ``dot`` program is missing."""
    if shutil.which("dot") is None:
        raise ToolError(
            f"cannot render '{saveto}': graphviz's 'dot' program is not on PATH. Install "
            "graphviz itself (apt-get install graphviz, brew install graphviz or conda "
            "install graphviz); the Python package alone only writes the DOT source "
            "(m.graphviz().source)."
        )
    saveto = os.fspath(saveto)
    ext = os.path.splitext(saveto)[1].lstrip(".") or "png"
    dot.render(outfile=saveto, format=ext, cleanup=True)
    return saveto
