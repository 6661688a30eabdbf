"""The tutorial's models, as readable caskax code to copy.

A caskade user will recognise each class: the params are declared as annotated fields,
editing returns new trees, and the forward methods receive param values as keywords.
"""

import jax
import jax.numpy as jnp

import caskax as cx


class Gaussian(cx.Module):
    """An elliptical 2-D Gaussian blob: position, axis ratio, angle, width, flux.

    Example:
        >>> import jax.numpy as jnp
        >>> g = Gaussian("g", x0=[0.0, 0.0], q=1.0, phi=0.0, sigma=0.5, flux=1.0)
        >>> g.brightness(jnp.zeros(1), jnp.zeros(1)).shape
        (1,)
    """

    x0: cx.Param
    q: cx.Param
    phi: cx.Param
    sigma: cx.Param
    flux: cx.Param

    def __init__(self, name=None, x0=None, q=None, phi=None, sigma=None, flux=None):
        super().__init__(name)
        self.x0 = cx.Param("x0", x0, shape=(2,), description="x/y position")
        self.q = cx.Param("q", q, shape=(), valid=(0, 1), description="axis ratio b/a")
        self.phi = cx.Param(
            "phi", phi, shape=(), valid=(0, jnp.pi), cyclic=True, description="orientation"
        )
        self.sigma = cx.Param(
            "sigma", sigma, shape=(), valid=(0, None), description="standard deviation"
        )
        self.flux = cx.Param("flux", flux, shape=(), description="total flux")

    @cx.forward
    def radius(self, x, y, x0, q, phi):
        """Elliptical radius of each pixel."""
        x, y = x - x0[0], y - x0[1]
        s, c = jnp.sin(phi), jnp.cos(phi)
        x, y = c * x - s * y, s * x + c * y
        return jnp.sqrt(x**2 + (y * q) ** 2)

    @cx.forward
    def brightness(self, x, y, sigma, flux):
        """Surface brightness at the pixel coordinates ``x``, ``y``."""
        return (
            flux * jnp.exp(-(self.radius(x, y) ** 2) / sigma**2) / jnp.sqrt(2 * jnp.pi * sigma**2)
        )


class Gaussian1D(cx.Module):
    """A Gaussian light curve: ``peak_flux * exp(-((t + t0) / sigma)**2)``."""

    t0: cx.Param
    sigma: cx.Param
    peak_flux: cx.Param

    def __init__(self, name=None, t0=None, sigma=None, peak_flux=None):
        super().__init__(name)
        self.t0 = cx.Param("t0", t0, shape=(), description="minus the time of peak")
        self.sigma = cx.Param(
            "sigma", sigma, shape=(), valid=(0, None), description="light-curve width"
        )
        self.peak_flux = cx.Param("peak_flux", peak_flux, shape=(), description="peak flux")

    @cx.forward
    def flux(self, t, t0, sigma, peak_flux):
        return peak_flux * jnp.exp(-(((t + t0) / sigma) ** 2))


class Combined(cx.Module):
    """The sum of several models' brightness on one pixel grid."""

    x: jax.Array
    y: jax.Array
    models: list

    def __init__(self, name=None, x=None, y=None, models=()):
        super().__init__(name)
        self.x, self.y = jnp.asarray(x), jnp.asarray(y)
        self.models = list(models)

    @cx.forward
    def __call__(self):
        return sum(m.brightness(self.x, self.y) for m in self.models)


class Stack(cx.Module):
    """Several image models stacked along a new leading axis."""

    models: list

    def __init__(self, name=None, models=()):
        super().__init__(name)
        self.models = list(models)

    @cx.forward
    def __call__(self):
        return jnp.stack([m() for m in self.models])


class Likelihood(cx.Module):
    """Gaussian log-likelihood with read noise plus a Poisson-like variance term."""

    model: cx.Module
    data: jax.Array
    sigma_read: float
    exp_time: float

    def __init__(self, name=None, model=None, data=None, sigma_read=0.05, exp_time=25.0):
        super().__init__(name)
        self.model = model
        self.data = jnp.asarray(data)
        self.sigma_read = float(sigma_read)
        self.exp_time = float(exp_time)

    @cx.forward
    def residuals(self):
        """Normalised residuals and per-pixel sigma."""
        model = self.model()
        sigma = jnp.sqrt(self.sigma_read**2 + model / self.exp_time)
        return (self.data - model) / sigma, sigma

    @cx.forward
    def __call__(self):
        residuals, sigma = self.residuals()
        return -0.5 * jnp.sum(residuals**2) - jnp.sum(jnp.log(sigma))


class Hierarchical(cx.Module):
    """One SN + galaxy image model evaluated at every epoch with ``jax.vmap``.

    The SN flux is a *live* param: inside the vmapped function it is set from the light
    curve at that epoch's time with ``self.sn.set(flux=...)``.
    """

    sn: Gaussian
    galaxy: Gaussian
    lightcurve: Gaussian1D
    x: jax.Array
    y: jax.Array
    times: jax.Array

    def __init__(
        self, name=None, sn=None, galaxy=None, lightcurve=None, x=None, y=None, times=None
    ):
        super().__init__(name)
        self.sn, self.galaxy, self.lightcurve = sn, galaxy, lightcurve
        self.x, self.y = jnp.asarray(x), jnp.asarray(y)
        self.times = jnp.asarray(times)

    @cx.forward
    def sn_brightness(self, t):
        sn = self.sn.set(flux=self.lightcurve.flux(t))
        return sn.brightness(self.x, self.y)

    @cx.forward
    def __call__(self):
        galaxy = self.galaxy.brightness(self.x, self.y)
        return galaxy + jax.vmap(self.sn_brightness)(self.times)
