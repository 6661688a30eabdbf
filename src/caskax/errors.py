"""The caskax error hierarchy.

Every error names the param path involved and what was expected, so that a user can
fix the model without reading caskax's source.
"""


class CaskaxError(Exception):
    """Base class of every error caskax raises on purpose.

    Example:
        >>> import caskax as cx
        >>> try:
        ...     cx.Param("q", 0.5, valid=(1, 0))
        ... except cx.CaskaxError as err:
        ...     print(type(err).__name__, err)
        ParamError Param 'q': valid=(1.0, 0.0) needs lo < hi.
    """


class ParamError(CaskaxError, ValueError):
    """A param was given a value it cannot hold, or read when it has none.

    Example:
        >>> import caskax as cx
        >>> cx.Param("p", None).to_static()  # no value: a live param
        Param('p', kind=live, value=-)
        >>> class M(cx.Module):
        ...     p: cx.Param
        ...     def __init__(self):
        ...         super().__init__("m"); self.p = cx.Param("p", None, dynamic=True)
        >>> M().get_values()
        Traceback (most recent call last):
        caskax.errors.ParamError: dynamic param 'p' has no value: give it one (Param(..., value) or set_values) or pass the flat vector explicitly.
    """


class ParamIndexError(CaskaxError, IndexError):
    """An index outside the flat vector (`Module.find_param`).

    Example:
        >>> import caskax as cx
        >>> from caskax.examples import Gaussian1D
        >>> Gaussian1D("lc", t0=1.0, sigma=1.0, peak_flux=1.0).to_dynamic().find_param(3)
        Traceback (most recent call last):
        caskax.errors.ParamIndexError: index 3 is outside the flat vector of length 3.
    """


class ModuleError(CaskaxError, AttributeError, TypeError):
    """A Module subclass is declared or used in a way caskax cannot follow: a field
    without an annotation, ``super().__init__`` not called first, attribute
    assignment or deletion after construction.

    Example:
        >>> import caskax as cx
        >>> class Bad(cx.Module):
        ...     def __init__(self):
        ...         super().__init__("bad")
        ...         self.a = cx.Param("a", 1.0)  # no `a: cx.Param` annotation
        >>> Bad()
        Traceback (most recent call last):
        caskax.errors.ModuleError: Bad.a is not a declared field: add the annotation `a: cx.Param` (or the field's type) to the class body. caskax modules are dataclasses, so every field is declared.
    """


class GraphError(CaskaxError, ValueError):
    """The module graph is inconsistent: a pointer cycle, conflicting copies of one
    node, or a target that is not in the tree.

    Example:
        >>> import caskax as cx
        >>> from caskax.examples import Gaussian1D
        >>> Gaussian1D("lc", t0=1.0).set("nope", 2.0)
        Traceback (most recent call last):
        caskax.errors.GraphError: target path 'nope': no 'nope' in lc. Fields here: t0, sigma, peak_flux.
    """


class ShapeError(CaskaxError, ValueError):
    """An array does not have the shape (or dtype) the layout expects.

    Example:
        >>> import caskax as cx
        >>> cx.Param("x0", [1.0, 2.0, 3.0], shape=(2,))
        Traceback (most recent call last):
        caskax.errors.ShapeError: Param 'x0': value of shape (3,) does not match shape=(2,) (extra leading axes are allowed as batch axes; None matches any length).
    """


class FillError(CaskaxError, ValueError):
    """Values given to fill a module's dynamic params do not match its layout.

    Example:
        >>> import caskax as cx
        >>> from caskax.examples import Gaussian1D
        >>> Gaussian1D("lc", t0=1.0, sigma=1.0, peak_flux=1.0).to_dynamic().set_values([1.0])
        Traceback (most recent call last):
        caskax.errors.FillError: params array of shape (1,) for 'lc'; expected (3,) laid out as t0[], sigma[], peak_flux[].
    """


class InferenceError(CaskaxError, ValueError):
    """An inference call cannot run as asked: a non-finite log-density at the start, a
    Hessian that is not negative definite, chains that do not match the Program, or an
    option that does not fit the machine (say, chains not divisible by devices).

    Example:
        >>> import caskax as cx, jax.numpy as jnp
        >>> cx.laplace(lambda x: jnp.sum(x**2), jnp.zeros(1))  # a minimum, not a maximum
        Traceback (most recent call last):
        caskax.errors.InferenceError: ...
    """


class DepthError(CaskaxError, RecursionError):
    """A model nested (or pointers chained) more deeply than Python's stack allows.

    JAX flattens pytrees and traces forward methods recursively, so each level of a
    nested model or pointer chain takes Python stack frames. The message gives the
    limit and the ways out: `sys.setrecursionlimit`, or a flatter model (many similar
    components in a list, or `cx.stack`).
    """


def depth_error(what: str) -> DepthError:
    import sys

    return DepthError(
        f"{what} is nested more deeply than Python's stack allows (sys.getrecursionlimit() "
        f"= {sys.getrecursionlimit()}): each level of nested modules, pointer chains or "
        "forward calls takes several frames in JAX's tree flattening and tracing. Raise the "
        "limit (sys.setrecursionlimit(10_000) before building), or keep the model flatter: "
        "repeated components side by side in a list, or stacked with cx.stack."
    )


class ToolError(CaskaxError, RuntimeError):
    """An external program caskax calls is missing (graphviz's ``dot``); the message
    says how to install it."""


class CaskaxWarning(UserWarning):
    """A suspicious but legal input, such as a value outside a param's valid range.

    Example:
        >>> import warnings, caskax as cx
        >>> with warnings.catch_warnings(record=True) as caught:
        ...     warnings.simplefilter("always")
        ...     p = cx.Param("q", 1.5, valid=(0, 1))
        >>> caught[0].category.__name__
        'CaskaxWarning'
    """


class StateFileError(CaskaxError, OSError):
    """An HDF5 state file cannot be used as asked: not HDF5, no group for the model,
    not appendable, or a sample index out of range.

    Example:
        >>> import os, tempfile
        >>> from caskax.examples import Gaussian1D
        >>> path = os.path.join(tempfile.mkdtemp(), "not.h5")
        >>> with open(path, "w") as fh:
        ...     _ = fh.write("plain text")
        >>> Gaussian1D("lc", t0=1.0).load_state(path)  # doctest: +ELLIPSIS
        Traceback (most recent call last):
        caskax.errors.StateFileError: ...
    """
