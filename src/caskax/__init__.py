"""caskax: build scientific simulators from immutable modules and params, then run
them as pure JAX functions of one flat vector."""

from . import plot as plot, transforms as transforms
from .batch import BatchedProgram as BatchedProgram, batch as batch, read_results as batch_results
from .collection import NodeDict as NodeDict, NodeList as NodeList, NodeTuple as NodeTuple
from .errors import (
    CaskaxError as CaskaxError,
    CaskaxWarning as CaskaxWarning,
    DepthError as DepthError,
    ToolError as ToolError,
    FillError as FillError,
    GraphError as GraphError,
    InferenceError as InferenceError,
    ModuleError as ModuleError,
    ParamError as ParamError,
    ParamIndexError as ParamIndexError,
    ShapeError as ShapeError,
    StateFileError as StateFileError,
)
from .infer import (
    Chains as Chains,
    FitResult as FitResult,
    Laplace as Laplace,
    fit as fit,
    laplace as laplace,
    numpyro_model as numpyro_model,
    nuts as nuts,
)
from .module import Module as Module, batch_axes as batch_axes, forward as forward
from .param import Param as Param, Pointer as Pointer
from .program import LayoutRow as LayoutRow, Program as Program, compile as compile
from .stack import (
    stack as stack,
    stack_map as stack_map,
    stack_permutation as stack_permutation,
    stack_size as stack_size,
    unstack as unstack,
)

__version__ = "0.1.0"


def __getattr__(name):
    # ``cx.io`` imports h5py; load it on first use so ``import caskax`` stays light.
    if name == "io":
        import importlib

        return importlib.import_module(".io", __name__)
    raise AttributeError(f"module 'caskax' has no attribute {name!r}")


__all__ = [
    "BatchedProgram",
    "CaskaxError",
    "CaskaxWarning",
    "DepthError",
    "ToolError",
    "Chains",
    "FillError",
    "FitResult",
    "GraphError",
    "InferenceError",
    "Laplace",
    "LayoutRow",
    "Module",
    "NodeDict",
    "NodeList",
    "NodeTuple",
    "ModuleError",
    "Param",
    "ParamError",
    "ParamIndexError",
    "Pointer",
    "Program",
    "ShapeError",
    "StateFileError",
    "batch",
    "batch_axes",
    "batch_results",
    "compile",
    "fit",
    "forward",
    "laplace",
    "numpyro_model",
    "nuts",
    "stack",
    "stack_map",
    "stack_permutation",
    "stack_size",
    "unstack",
    "io",
    "plot",
    "transforms",
]
