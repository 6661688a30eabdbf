"""The models of caskade's SN light-curve tutorial, written as caskax modules, and the
worked example that uses them (``python -m caskax.examples.sn_lightcurve``)."""

from .models import (
    Combined as Combined,
    Gaussian as Gaussian,
    Gaussian1D as Gaussian1D,
    Hierarchical as Hierarchical,
    Likelihood as Likelihood,
    Stack as Stack,
)

__all__ = ["Combined", "Gaussian", "Gaussian1D", "Hierarchical", "Likelihood", "Stack"]
