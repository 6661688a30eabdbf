"""caskax: build scientific simulators from immutable modules and params, then run
them as pure JAX functions of one flat vector."""

from . import transforms as transforms
from .errors import (
    CaskaxError as CaskaxError,
    CaskaxWarning as CaskaxWarning,
    FillError as FillError,
    GraphError as GraphError,
    ParamError as ParamError,
    ShapeError as ShapeError,
)
from .module import Module as Module, batch_axes as batch_axes, forward as forward
from .param import Param as Param, Pointer as Pointer
from .program import LayoutRow as LayoutRow, Program as Program, compile as compile

__version__ = "0.1.0"

__all__ = [
    "CaskaxError",
    "CaskaxWarning",
    "FillError",
    "GraphError",
    "LayoutRow",
    "Module",
    "Param",
    "ParamError",
    "Pointer",
    "Program",
    "ShapeError",
    "batch_axes",
    "compile",
    "forward",
    "transforms",
]
