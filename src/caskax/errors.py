"""The caskax error hierarchy.

Every error names the param path involved and what was expected, so that a user can
fix the model without reading caskax's source.
"""


class CaskaxError(Exception):
    """Base class of every error caskax raises on purpose."""


class ParamError(CaskaxError, ValueError):
    """A param was given a value it cannot hold, or read when it has none."""


class GraphError(CaskaxError):
    """The module graph is inconsistent: a pointer cycle, conflicting copies of one
    node, or a target that is not in the tree."""


class ShapeError(CaskaxError, ValueError):
    """An array does not have the shape (or dtype) the layout expects."""


class FillError(CaskaxError, ValueError):
    """Values given to fill a module's dynamic params do not match its layout."""


class CaskaxWarning(UserWarning):
    """A suspicious but legal input, such as a value outside a param's valid range."""
