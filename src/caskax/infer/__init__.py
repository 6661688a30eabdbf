"""Inference on caskax Programs: optax fits, Laplace, blackjax NUTS, chains, numpyro.

=====================  ================================================================
``fit``                maximise ``f`` with optax (L-BFGS or Adam), the loop jitted
``laplace``            Gaussian approximation from ``-hessian(f)`` at a maximum
``nuts``               blackjax NUTS with window adaptation, chains mapped or sharded
``Chains``             draws, diagnostics, arviz export, HDF5 files, resuming
``numpyro_model``      a numpyro model of a Program, for numpyro's own samplers
=====================  ================================================================
"""

from .chains import Chains as Chains, Summary as Summary
from .fit import FitResult as FitResult, fit as fit
from .laplace import Laplace as Laplace, laplace as laplace
from .numpyro_bridge import numpyro_model as numpyro_model
from .nuts import nuts as nuts

__all__ = ["Chains", "FitResult", "Laplace", "Summary", "fit", "laplace", "nuts", "numpyro_model"]
