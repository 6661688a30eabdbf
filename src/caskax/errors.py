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
    """A param was given a value it cannot hold, or read when it has none."""


class GraphError(CaskaxError):
    """The module graph is inconsistent: a pointer cycle, conflicting copies of one
    node, or a target that is not in the tree."""


class ShapeError(CaskaxError, ValueError):
    """An array does not have the shape (or dtype) the layout expects."""


class FillError(CaskaxError, ValueError):
    """Values given to fill a module's dynamic params do not match its layout."""


class InferenceError(CaskaxError, ValueError):
    """An inference call cannot run as asked: a non-finite log-density at the start, a
    Hessian that is not negative definite, chains that do not match the Program, or an
    option that does not fit the machine (say, chains not divisible by devices)."""


class CaskaxWarning(UserWarning):
    """A suspicious but legal input, such as a value outside a param's valid range."""


class StateFileError(CaskaxError, OSError):
    """An HDF5 state file cannot be used as asked: not HDF5, no group for the model,
    not appendable, or a sample index out of range."""
