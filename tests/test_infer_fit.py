"""cx.fit and cx.laplace: exact answers on a Gaussian, the tutorial's stage-3 model,
batched fits, bad input, and the Program as a scipy / emcee objective."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import caskax as cx
from caskax.examples.stages import TRUTH, stage3_model

MEAN = np.array([1.0, -2.0, 0.5])
COV = np.array([[1.0, 0.3, 0.0], [0.3, 0.5, -0.1], [0.0, -0.1, 2.0]])


class GaussLike(cx.Module):
    """log N(mu | MEAN, COV), a function of the dynamic ``mu`` (3,) and ``s`` > 0."""

    mu: cx.Param
    s: cx.Param
    precision: jax.Array

    def __init__(self):
        super().__init__("gauss")
        self.mu = cx.Param("mu", [0.0, 0.0, 0.0], shape=(3,), dynamic=True)
        self.s = cx.Param("s", 2.0, valid=(0, None), dynamic=True)
        self.precision = jnp.asarray(np.linalg.inv(COV), dtype=jnp.float32)

    @cx.forward
    def loglike(self, mu, s):
        r = mu - jnp.asarray(MEAN, dtype=mu.dtype)
        # s has its maximum at 1 with curvature -4 in s: sigma_s = 0.5.
        return -0.5 * r @ self.precision @ r - 2.0 * (s - 1.0) ** 2


@pytest.fixture(scope="module")
def gauss():
    return cx.compile(GaussLike(), "loglike")


@pytest.mark.parametrize(
    "method, kwargs",
    [("lbfgs", {}), ("adam", dict(maxiter=3000, learning_rate=0.05))],
    ids=["lbfgs", "adam"],
)
def test_fit_gaussian_exact(gauss, method, kwargs):
    res = cx.fit(gauss, method=method, tol=1e-5, **kwargs)
    assert bool(res.converged)
    np.testing.assert_allclose(res.x, np.r_[MEAN, 1.0], atol=1e-3)
    assert abs(float(res.value)) < 1e-5
    assert int(res.steps) > 0
    x, value, grad_norm, steps, converged = res  # unpacks like a tuple
    assert float(grad_norm) <= 1e-5
    named = res.by_name()
    assert set(named) == {"gauss.mu", "gauss.s"}
    assert named["gauss.mu"].shape == (3,) and named["gauss.s"].shape == ()


def test_fit_valid_stays_in_range(gauss):
    # From s = 2 a plain gradient step could overshoot below 0; in u-space it cannot.
    res = cx.fit(gauss, valid=True)
    assert bool(res.converged)
    np.testing.assert_allclose(res.x, np.r_[MEAN, 1.0], atol=1e-3)


def test_laplace_gaussian_exact(gauss):
    res = cx.fit(gauss)
    lap = cx.laplace(gauss, res.x)
    mean, cov, sigma = lap
    np.testing.assert_allclose(mean, res.x)
    expected = np.zeros((4, 4))
    expected[:3, :3] = COV
    expected[3, 3] = 0.25
    np.testing.assert_allclose(cov, expected, atol=2e-5)
    np.testing.assert_allclose(sigma, np.sqrt(np.diag(expected)), rtol=1e-5)
    assert lap.names == tuple(gauss.names)


@pytest.mark.parametrize(
    "subset", [["gauss.mu[0]", "gauss.mu[2]"], [0, 2]], ids=["names", "indices"]
)
def test_laplace_subset(gauss, subset):
    lap = cx.laplace(gauss, jnp.asarray(np.r_[MEAN, 1.0], jnp.float32), subset=subset)
    np.testing.assert_allclose(lap.cov, COV[np.ix_([0, 2], [0, 2])], atol=2e-5)
    assert lap.names == ("gauss.mu[0]", "gauss.mu[2]")


def test_laplace_subset_by_param(gauss):
    lap = cx.laplace(gauss, jnp.asarray(np.r_[MEAN, 1.0], jnp.float32), subset=["gauss.mu"])
    np.testing.assert_allclose(lap.cov, COV, atol=2e-5)
    lap = cx.laplace(gauss, jnp.asarray(np.r_[MEAN, 1.0], jnp.float32), subset=[gauss.module.s])
    assert lap.names == ("gauss.s",)
    np.testing.assert_allclose(lap.sigma, [0.5], rtol=1e-5)


def test_laplace_not_definite_names_entries():
    with pytest.raises(cx.InferenceError, match=r"x\[1\]"):
        cx.laplace(lambda x: -(x[0] ** 2) + x[1] ** 2, jnp.zeros(2))
    # A saddle although every d2f/dx2 < 0: named through the bad eigenvector.
    with pytest.raises(cx.InferenceError, match=r"x\[0\].*x\[1\].*saddle"):
        cx.laplace(lambda x: -(x[0] ** 2 + x[1] ** 2) + 3 * x[0] * x[1] - x[2] ** 2, jnp.zeros(3))


def test_fit_vmap_over_starts(gauss):
    starts = jnp.asarray(np.random.default_rng(0).normal(size=(5, 4)), jnp.float32)
    starts = starts.at[:, 3].set(jnp.abs(starts[:, 3]) + 0.5)
    xs = jax.vmap(lambda x0: cx.fit(gauss, x0).x)(starts)
    assert xs.shape == (5, 4)
    np.testing.assert_allclose(xs, np.broadcast_to(np.r_[MEAN, 1.0], (5, 4)), atol=1e-3)
    batched = jax.vmap(lambda x0: cx.fit(gauss, x0))(starts)
    assert batched.by_name()["gauss.mu"].shape == (5, 3)
    assert batched.converged.shape == (5,)


def test_fit_plain_function_needs_x0():
    with pytest.raises(cx.InferenceError, match="x0 is required"):
        cx.fit(lambda x: -jnp.sum(x**2))


def test_fit_bad_input(gauss):
    with pytest.raises(cx.ShapeError, match="gauss.mu"):
        cx.fit(gauss, jnp.zeros(3))
    with pytest.raises(cx.InferenceError, match="method"):
        cx.fit(gauss, method="newton")
    with pytest.raises(cx.InferenceError, match="learning_rate=0.1 is Adam's step size"):
        cx.fit(gauss, learning_rate=0.1)  # L-BFGS's line search sets the step
    bad = jnp.array([0.0, 0.0, 0.0, -1.0])  # s outside (0, inf): u = log(-1) = nan
    with pytest.raises(cx.InferenceError, match=r"gauss.s"):
        cx.fit(gauss, bad, valid=True)


# -- the tutorial's stage-3 model --------------------------------------------------------------
@pytest.fixture(scope="module")
def stage3(data):
    return cx.compile(stage3_model(data))


@pytest.fixture(scope="module")
def stage3_fit(stage3):
    return cx.fit(stage3, valid=True)


def test_fit_stage3(stage3, stage3_fit):
    res = stage3_fit
    assert bool(res.converged)
    assert float(res.value) > float(stage3(stage3.init))
    named = res.by_name()
    np.testing.assert_allclose(named["SN0.x0"], TRUTH.sn_x0, atol=0.01)
    assert abs(float(named["lightcurve.t0"]) - TRUTH.t0) < 0.3
    assert abs(float(named["lightcurve.sigma"]) - TRUTH.lc_sigma) < 0.3
    np.testing.assert_allclose(named["Galaxy.x0"], TRUTH.galaxy["x0"], atol=0.01)


def test_laplace_stage3_matches_finite_difference_newton(stage3, stage3_fit):
    x = stage3_fit.x
    lap = cx.laplace(stage3, x)
    # Newton reference: the Hessian from central differences of the gradient, each
    # step a tenth of that entry's sigma (the gradient changes by ~10/sigma, far above
    # float32 noise in it).
    grad = jax.jit(jax.grad(stage3))
    n = x.shape[0]
    steps = np.asarray(lap.sigma) / 10
    hess = np.zeros((n, n))
    for i in range(n):
        e = jnp.zeros(n).at[i].set(steps[i])
        hess[i] = (np.asarray(grad(x + e), np.float64) - np.asarray(grad(x - e), np.float64)) / (
            2 * steps[i]
        )
    hess = 0.5 * (hess + hess.T)
    sigma_ref = np.sqrt(np.diag(np.linalg.inv(-hess)))
    np.testing.assert_allclose(lap.sigma, sigma_ref, rtol=0.02)
    assert float(lap.sigma.min()) < 0.01 < float(lap.sigma.max())  # scales span decades


# -- interop the seed's users rely on ----------------------------------------------------------
def test_program_as_scipy_objective(gauss):
    from scipy.optimize import minimize

    grad = jax.jit(jax.grad(gauss))
    res = minimize(
        lambda x: -float(gauss(np.asarray(x, np.float32))),
        np.asarray(gauss.init, np.float64),
        jac=lambda x: -np.asarray(grad(np.asarray(x, np.float32)), np.float64),
        method="L-BFGS-B",
        bounds=[(None, None)] * 3 + [(1e-6, None)],
    )
    assert res.success
    np.testing.assert_allclose(res.x, np.r_[MEAN, 1.0], atol=1e-3)


def test_program_as_emcee_log_prob(gauss):
    import emcee

    logp = jax.jit(jax.vmap(gauss))
    rng = np.random.default_rng(1)
    walkers = 16
    p0 = np.r_[MEAN, 1.0] + 0.1 * rng.normal(size=(walkers, 4))
    sampler = emcee.EnsembleSampler(
        walkers,
        4,
        lambda xs: np.asarray(logp(np.asarray(xs, np.float32)), np.float64),
        vectorize=True,
    )
    sampler.random_state = np.random.RandomState(3).get_state()
    sampler.run_mcmc(p0, 600, progress=False)
    draws = sampler.get_chain(discard=200, flat=True)
    assert draws.shape == (400 * walkers, 4)
    np.testing.assert_allclose(draws[:, :3].mean(axis=0), MEAN, atol=0.35)
    np.testing.assert_allclose(draws[:, :3].std(axis=0), np.sqrt(np.diag(COV)), rtol=0.35)


def test_fit_traces_once_per_function():
    traces = []

    def f(x):
        traces.append(1)  # runs only while jax traces f
        return -jnp.sum((x - 1.0) ** 2)

    cx.fit(f, jnp.zeros(2))
    first = len(traces)
    res = cx.fit(f, jnp.full(2, 3.0))
    assert len(traces) == first  # the second fit reuses the compiled loop
    np.testing.assert_allclose(res.x, [1.0, 1.0], atol=1e-4)


def test_lbfgs_evaluates_f_once_per_iteration():
    """The line search lives in the loop: the compiled fit holds one copy of f's
    gradient (optax.lbfgs's zoom search traced f three times, tripling the compile)."""
    traces = []

    def f(x):
        traces.append(1)
        return -jnp.sum((x - 2.0) ** 2)

    res = cx.fit(f, jnp.zeros(3))
    assert len(traces) == 1 and bool(res.converged)


@pytest.mark.parametrize("start", [(-1.2, 1.0), (2.0, -1.5)])
def test_lbfgs_line_search_on_rosenbrock(start):
    """A curved valley needs both halves of the line search: longer steps while the
    slope stays steep, shorter ones past the line's minimum."""
    res = cx.fit(lambda x: -((1 - x[0]) ** 2 + 100 * (x[1] - x[0] ** 2) ** 2), jnp.array(start))
    assert bool(res.converged) and int(res.steps) < 200
    np.testing.assert_allclose(res.x, [1.0, 1.0], atol=2e-3)


def test_lbfgs_backs_off_from_non_finite_trials():
    """A trial step into the region where f is not finite counts as a failed decrease:
    the search shortens the step instead of stopping or returning NaN."""
    values = []

    def f(x):  # NaN for x > 2
        v = -jnp.sum((x - 1.9) ** 2) * 50.0 + jnp.sum(jnp.log(2.0 - x))
        jax.debug.callback(values.append, v)
        return v

    # the first step (length 1 along the gradient) lands at x = 2.2, where f is NaN
    res = cx.fit(f, jnp.full(2, 1.5), tol=1e-4)  # |grad| ~1e-5 is float32's floor here
    jax.block_until_ready(res.x)
    assert any(not np.isfinite(v) for v in values)
    assert bool(res.converged) and np.all(np.isfinite(np.asarray(res.x)))
    assert np.all(np.asarray(res.x) < 2.0)
    # the maximum solves 100 (1.9 - x) = 1 / (2 - x)
    np.testing.assert_allclose(res.x, [1.9 + (0.1 - np.sqrt(0.01 + 0.04)) / 2] * 2, atol=1e-4)


def test_lbfgs_maxiter_counts_accepted_steps():
    rosen = lambda x: -((1 - x[0]) ** 2 + 100 * (x[1] - x[0] ** 2) ** 2)
    res = cx.fit(rosen, jnp.array([-1.2, 1.0]), maxiter=5)
    assert int(res.steps) == 5 and not bool(res.converged)
    assert float(res.value) > float(rosen(jnp.array([-1.2, 1.0])))


def test_lbfgs_badly_scaled_quadratic():
    scales = jnp.array([1e-3, 1.0, 1e3])  # curvatures 6 decades apart
    res = cx.fit(lambda x: -jnp.sum(scales * (x - 1.0) ** 2), jnp.zeros(3), tol=1e-7)
    assert bool(res.converged)
    np.testing.assert_allclose(res.x, [1.0, 1.0, 1.0], atol=1e-3)


class Root(cx.Module):
    """log(a) + sqrt(b): not finite for a <= 0; its gradient not finite at b = 0."""

    a: cx.Param
    b: cx.Param

    def __init__(self, a, b):
        super().__init__("root")
        self.a = cx.Param("a", a, dynamic=True)
        self.b = cx.Param("b", b, dynamic=True)

    @cx.forward
    def loglike(self, a, b):
        return jnp.log(a) + jnp.sqrt(b) - a - b


@pytest.mark.parametrize("method", ["lbfgs", "adam"])
def test_fit_non_finite_start_names_param(method):
    # The start is checked inside the fit's loop; the error still names the param,
    # also where L-BFGS could have stepped from a NaN start to finite ground.
    with pytest.raises(cx.InferenceError, match=r"f itself returns a non-finite value.*root\.a"):
        cx.fit(cx.compile(Root(-1.0, 1.0), "loglike"), method=method)
    with pytest.raises(cx.InferenceError, match=r"root\.b = 0\.0 \(gradient not finite\)"):
        cx.fit(cx.compile(Root(1.0, 0.0), "loglike"), method=method)
    res = cx.fit(
        cx.compile(Root(0.5, 0.5), "loglike"),
        method=method,
        **({"maxiter": 3000, "learning_rate": 0.02} if method == "adam" else {}),
    )
    np.testing.assert_allclose(res.x, [1.0, 0.25], atol=2e-2)
