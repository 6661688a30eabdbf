"""The jit of the inference programs: XLA:CPU options where known, defaults otherwise."""

import importlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import caskax as cx
from caskax.examples import Gaussian1D
from caskax.infer import _jit
from caskax.infer._target import Target
from caskax.infer.laplace import _hessian

fit_module = importlib.import_module("caskax.infer.fit")  # caskax.infer.fit is the function

from helpers import CompileLog

pytestmark = pytest.mark.skipif(
    jax.default_backend() != "cpu", reason="the options are for XLA:CPU"
)


def _program():
    lc = Gaussian1D("lc", t0=0.3, sigma=1.2, peak_flux=2.0).to_dynamic()
    t = jnp.linspace(-3.0, 3.0, 40)
    return cx.compile(_like(lc, t, 2.0 * jnp.exp(-((t + 0.1) ** 2))))


def _like(lc, t, data):
    class Like(cx.Module):
        lc: Gaussian1D

        def __init__(self, name, lc):
            super().__init__(name)
            self.lc = lc

        @cx.forward
        def __call__(self):
            return -0.5 * jnp.sum((self.lc.flux(t) - data) ** 2) / 0.05**2

    return Like("like", lc)


def test_this_jaxlib_knows_the_cpu_options():
    # If a jaxlib drops one of them, the tuned path silently turns off: this says so.
    assert _jit.options_known(_jit.CPU_COMPILER_OPTIONS)
    assert _jit.options_known(_jit.CPU_RUN_ONCE_OPTIONS)


def test_unknown_options_fall_back_to_the_defaults():
    bogus = (("xla_caskax_no_such_option", True),)
    assert not _jit.options_known(bogus)
    square = _jit.inference_jit(lambda x: x**2, bogus)
    assert float(square(jnp.array(3.0))) == 9.0


def test_cpu_calls_run_the_tuned_compile():
    fn = _jit.inference_jit(lambda x: jnp.sin(x) * 2.0)
    x = jnp.arange(3.0)
    fn(x)
    with CompileLog() as log:
        fn.tuned(x)  # the call above compiled exactly this one
    assert log.names == []
    with CompileLog() as log:
        fn.plain(x)
    assert len(log.names) == 1


def test_tuned_and_default_compiles_agree_on_the_hessian():
    f = _program()
    target = Target(f, unconstrained=False, density=False)
    x = cx.fit(f).x
    h_tuned = _hessian.tuned(target, x)
    h_plain = _hessian.plain(target, x)
    assert np.all(np.isfinite(np.asarray(h_tuned)))
    np.testing.assert_allclose(h_tuned, h_plain, rtol=1e-4, atol=1e-3)


def test_tuned_and_default_compiles_agree_on_the_fit():
    f = _program()
    target = Target(f, unconstrained=False, density=False)
    args = (target, f.init, "lbfgs", 1000, 1e-6, None, ())
    tuned, ok_tuned = fit_module._fit.tuned(*args)
    plain, ok_plain = fit_module._fit.plain(*args)
    assert bool(tuned.converged) and bool(plain.converged) and bool(ok_tuned) and bool(ok_plain)
    np.testing.assert_allclose(tuned.x, plain.x, rtol=1e-4, atol=1e-5)
