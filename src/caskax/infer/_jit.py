"""The jit of caskax's inference programs: ``eqx.filter_jit`` with XLA:CPU settings
under which they compile in about 0.5x-0.7x the time.

NUTS's tree building, the fit's loop and the Laplace Hessian are programs of many
small ops. On the CPU, XLA's newer fusion emitters and LLVM's ``-O2`` spend most of a
cold run compiling them, while the programs run little or no faster for it. The
settings below are scoped to these programs (``jax.jit(..., compiler_options=...)``);
a user's own ``jax.jit`` and a Program's direct call keep XLA's defaults. They are XLA
debug options, so each process checks once that its jaxlib still knows them and falls
back to the defaults otherwise. Programs that each call runs once (the Laplace Hessian,
start checks, NUTS keys) go further, to LLVM's ``-O0`` (`run_once_jit`).
``benchmarks/compile_options.py`` measures both sides.
"""

import functools

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np

__all__ = ["CPU_COMPILER_OPTIONS", "CPU_RUN_ONCE_OPTIONS", "inference_jit", "run_once_jit"]

CPU_COMPILER_OPTIONS = (
    ("xla_cpu_use_fusion_emitters", False),
    ("xla_backend_optimization_level", 1),
)
# For programs a call runs once (a Hessian, start checks): at LLVM's -O0 the Hessians
# compiled in 0.2x-0.3x of XLA's default time and ran about 7x slower, a few ms once.
CPU_RUN_ONCE_OPTIONS = (
    ("xla_cpu_use_fusion_emitters", False),
    ("xla_backend_optimization_level", 0),
)


@functools.cache
def options_known(options: tuple) -> bool:
    """Whether this jaxlib compiles with ``options`` (a tuple of (name, value) pairs)."""
    try:
        jax.jit(jnp.negative, compiler_options=dict(options)).lower(
            np.zeros((), np.float32)
        ).compile()
    except Exception:  # noqa: BLE001 - jaxlib raises its own runtime error type
        return False
    return True


def inference_jit(fun, options: tuple = CPU_COMPILER_OPTIONS):
    """``eqx.filter_jit(fun)``, compiled with ``options`` when the default backend is
    the CPU and the installed jaxlib knows them.

    Example:
        >>> import jax.numpy as jnp
        >>> square = inference_jit(lambda x: x**2)
        >>> float(square(jnp.array(3.0)))
        9.0
    """
    plain = eqx.filter_jit(fun)
    tuned = eqx.filter_jit(fun, compiler_options=dict(options))

    def pick():
        return tuned if jax.default_backend() == "cpu" and options_known(options) else plain

    @functools.wraps(fun)
    def call(*args, **kwargs):
        return pick()(*args, **kwargs)

    call.plain, call.tuned = plain, tuned
    # lower(...).compile() fills the same cache that a later call uses
    call.lower = lambda *args, **kwargs: pick().lower(*args, **kwargs)
    return call


def run_once_jit(fun):
    """`inference_jit` with `CPU_RUN_ONCE_OPTIONS`: for a program each call of the
    public function runs once, where compile time is all that counts.

    Example:
        >>> import jax.numpy as jnp
        >>> cube = run_once_jit(lambda x: x**3)
        >>> float(cube(jnp.array(2.0)))
        8.0
    """
    return inference_jit(fun, CPU_RUN_ONCE_OPTIONS)
