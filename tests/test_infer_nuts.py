"""cx.nuts and Chains: known posteriors, determinism, chain methods, files, resuming,
and bad input. Small runs: every statistical check states its Monte-Carlo tolerance."""

import textwrap

import jax
import jax.numpy as jnp
import numpy as np
import numpyro.distributions as dist
import pytest
from helpers import CompileLog, run_python

import caskax as cx

MEAN = np.array([1.0, -1.0])
COV = np.array([[1.0, 0.8], [0.8, 1.0]]) * np.array([[1.0, 0.5], [0.5, 0.25]])  # sd 1, 0.5


class Corr2D(cx.Module):
    """A correlated 2-D Gaussian in one param ``z`` of shape (2,)."""

    z: cx.Param
    precision: jax.Array

    def __init__(self):
        super().__init__("corr")
        self.z = cx.Param("z", [0.0, 0.0], shape=(2,), dynamic=True)
        self.precision = jnp.asarray(np.linalg.inv(COV), dtype=jnp.float32)

    @cx.forward
    def loglike(self, z):
        r = z - jnp.asarray(MEAN, z.dtype)
        return -0.5 * r @ self.precision @ r


class Coin(cx.Module):
    """p in (0, 1): prior Beta(2, 1) (density 2p) times likelihood (1-p)^4 = Beta(2, 5)."""

    p: cx.Param

    def __init__(self):
        super().__init__("coin")
        self.p = cx.Param("p", 0.5, valid=(0, 1), dynamic=True, prior=dist.Beta(2.0, 1.0))

    @cx.forward
    def loglike(self, p):
        return 4.0 * jnp.log1p(-p)


BETA_MEAN = 2 / 7
BETA_SD = np.sqrt(2 * 5 / (7**2 * 8))

# Shared small settings: every run below reuses one compiled warmup and sampler.
RUN = dict(num_warmup=300, num_samples=500, num_chains=4, progress=False)


@pytest.fixture(scope="module")
def corr():
    return cx.compile(Corr2D(), "loglike")


@pytest.fixture(scope="module")
def coin():
    return cx.compile(Coin(), "loglike")


@pytest.fixture(scope="module")
def corr_chains(corr):
    return cx.nuts(corr, jax.random.key(1), **RUN)


@pytest.fixture(scope="module")
def coin_chains(coin):
    return cx.nuts(coin, jax.random.key(2), **RUN)


def _check_moments(samples, mean, sd, ess):
    """Sample mean and sd within 4 Monte-Carlo standard errors (sd's MCSE taken as
    sd / sqrt(2 ess), exact for a Gaussian, and widened 1.5x for skewed targets)."""
    m = samples.mean(axis=(0, 1))
    s = samples.std(axis=(0, 1))
    np.testing.assert_array_less(np.abs(m - mean), 4 * sd / np.sqrt(ess))
    np.testing.assert_array_less(np.abs(s - sd), 4 * 1.5 * sd / np.sqrt(2 * ess))


def test_nuts_correlated_gaussian(corr_chains):
    c = corr_chains
    assert c.samples.shape == (4, 500, 2)
    summary = c.summary()
    ess = np.array([summary[n]["ess_bulk"] for n in c.names])
    assert np.all(ess > 300)
    assert all(summary[n]["r_hat"] < 1.01 for n in c.names)
    assert int(c.divergences.sum()) == 0
    _check_moments(c.samples, MEAN, np.sqrt(np.diag(COV)), ess)
    corr = np.corrcoef(c.samples.reshape(-1, 2).T)[0, 1]
    assert abs(corr - 0.8) < 0.05


def test_nuts_beta_in_unconstrained_space(coin_chains):
    c = coin_chains
    p = c.by_name()["coin.p"]
    assert p.shape == (4, 500)
    assert np.all((p > 0) & (p < 1))
    summary = c.summary()["coin.p"]
    assert summary["r_hat"] < 1.01
    assert int(c.divergences.sum()) == 0
    _check_moments(c.samples, BETA_MEAN, BETA_SD, summary["ess_bulk"])


def test_summary_table_and_columns(corr_chains):
    summary = corr_chains.summary()
    assert summary.columns == ["mean", "sd", "5%", "95%", "ess_bulk", "ess_tail", "r_hat"]
    text = str(summary)
    assert "corr.z[0]" in text and "r_hat" in text and "divergences: 0" in text


def test_average_ranks_match_scipy():
    # the summary's rank normalisation ranks ties as scipy.stats.rankdata does
    from scipy.stats import rankdata

    from caskax.infer.chains import _average_ranks

    rng = np.random.default_rng(0)
    draws = np.concatenate(
        [
            rng.integers(0, 7, size=(300, 3)).astype(float),  # many ties
            rng.normal(size=(300, 2)),
        ],
        axis=1,
    )
    np.testing.assert_array_equal(_average_ranks(draws), rankdata(draws, axis=0, method="average"))


def test_same_key_identical_different_key_differs(corr, corr_chains):
    again = cx.nuts(corr, jax.random.key(1), **RUN)
    np.testing.assert_array_equal(again.samples, corr_chains.samples)
    np.testing.assert_array_equal(again.step_size, corr_chains.step_size)
    other = cx.nuts(corr, jax.random.key(7), **RUN)
    assert not np.array_equal(other.samples, corr_chains.samples)


def test_progress_blocks_do_not_change_draws(corr, corr_chains, capsys):
    shown = cx.nuts(corr, jax.random.key(1), **{**RUN, "progress": True})
    np.testing.assert_array_equal(shown.samples, corr_chains.samples)


def test_a_longer_run_extends_a_shorter_one(corr, corr_chains):
    # Step i's key is fold_in(chain key, i): draws do not depend on how many are asked
    # for, nor on the blocks (500 draws run in blocks of 25, 100 in blocks of 5).
    short = cx.nuts(corr, jax.random.key(1), **{**RUN, "num_samples": 100})
    np.testing.assert_allclose(short.samples, corr_chains.samples[:, :100], rtol=1e-6, atol=1e-6)


def test_sequential_thinned_in_x_space(coin):
    # valid=False samples x directly: the prior's support keeps p in (0, 1) (the
    # log-density is -inf outside), and thinning keeps num_samples draws.
    c = cx.nuts(
        coin,
        jax.random.key(3),
        num_warmup=300,
        num_samples=300,
        num_chains=2,
        progress=False,
        valid=False,
        thin=2,
        chain_method="sequential",
    )
    assert c.samples.shape == (2, 300, 1) and not c.unconstrained
    assert np.all(c.num_steps > 0)
    summary = c.summary()["coin.p"]
    assert summary["r_hat"] < 1.02
    _check_moments(c.samples, BETA_MEAN, BETA_SD, summary["ess_bulk"])


def test_laplace_seeded_mass_matrix(corr):
    c = cx.nuts(
        corr, jax.random.key(5), **{**RUN, "num_warmup": 150}, inverse_mass_matrix="laplace"
    )
    assert c.inverse_mass_matrix.shape == (4, 2, 2)  # dense for small n
    summary = c.summary()
    ess = np.array([summary[n]["ess_bulk"] for n in c.names])
    # 4 x 500 draws put R-hat's own noise near 0.01 (this key: 1.0099 on a CPU, just
    # over 1.01 on a GPU); chains that do not mix sit far above 1.02
    assert all(summary[n]["r_hat"] < 1.02 for n in c.names)
    _check_moments(c.samples, MEAN, np.sqrt(np.diag(COV)), ess)


def test_plain_function_and_named_arviz(corr_chains):
    idata = corr_chains.to_arviz()
    assert "corr.z" in idata.posterior
    assert idata.posterior["corr.z"].shape == (4, 500, 2)
    assert "diverging" in idata.sample_stats


def test_save_load_round_trip(corr_chains, tmp_path):
    path = tmp_path / "chains.h5"
    corr_chains.save(path)
    loaded = cx.Chains.load(path)
    for field in (
        "samples",
        "log_density",
        "divergences",
        "step_size",
        "inverse_mass_matrix",
        "last_position",
        "num_steps",
        "acceptance_rate",
    ):
        np.testing.assert_array_equal(getattr(loaded, field), getattr(corr_chains, field))
    assert loaded.layout == corr_chains.layout
    assert loaded.unconstrained == corr_chains.unconstrained
    assert [p.name for p in tmp_path.iterdir()] == ["chains.h5"]  # no temporary left


def test_resume_continues(coin, coin_chains, tmp_path):
    coin_chains.save(tmp_path / "c.h5")
    more = cx.nuts(
        coin,
        jax.random.key(9),
        num_samples=500,
        progress=False,
        resume=cx.Chains.load(tmp_path / "c.h5"),
    )
    assert more.samples.shape == (4, 1000, 1)
    np.testing.assert_array_equal(more.samples[:, :500], coin_chains.samples)
    np.testing.assert_array_equal(more.step_size, coin_chains.step_size)
    # The continuation starts where the chains stopped: no burn-in transient.
    new = more.samples[:, 500:]
    assert abs(new.mean() - BETA_MEAN) < 4 * BETA_SD / np.sqrt(
        cx.Chains.from_arrays(new).summary()["x[0]"]["ess_bulk"]
    )
    assert not np.array_equal(new, coin_chains.samples)


def test_resume_with_other_layout_fails(corr, coin_chains):
    with pytest.raises(cx.InferenceError, match="resume"):
        cx.nuts(corr, jax.random.key(0), num_samples=10, progress=False, resume=coin_chains)


def test_numpyro_nuts_agrees_with_cx_nuts(coin, coin_chains):
    # The bridge gives numpyro the same target: prior Beta(2, 1) as the site's
    # distribution (support (0, 1), so numpyro also samples in logit space) and the
    # likelihood as a factor.
    from numpyro.infer import MCMC, NUTS

    mcmc = MCMC(
        NUTS(cx.numpyro_model(coin)),
        num_warmup=300,
        num_samples=500,
        num_chains=2,
        chain_method="vectorized",
        progress_bar=False,
    )
    mcmc.run(jax.random.key(0))
    theirs = np.asarray(mcmc.get_samples()["coin.p"])
    ours = coin_chains.samples[..., 0].ravel()
    ess = coin_chains.summary()["coin.p"]["ess_bulk"]
    # Two independent estimates: MCSE of the difference, numpyro's ESS taken as
    # no better than ours per draw.
    se = np.sqrt(ours.var() / ess + theirs.var() / (ess * theirs.size / ours.size))
    assert abs(ours.mean() - theirs.mean()) < 4 * se
    assert abs(theirs.mean() - BETA_MEAN) < 4 * BETA_SD / np.sqrt(ess * theirs.size / ours.size)
    np.testing.assert_allclose(theirs.std(), ours.std(), rtol=0.15)


# -- bad input -----------------------------------------------------------------------------------
class Sqrt(cx.Module):
    a: cx.Param
    b: cx.Param

    def __init__(self, a=4.0, b=1.0, dynamic=True):
        super().__init__("sqrt")
        self.a = cx.Param("a", a, dynamic=dynamic)
        self.b = cx.Param("b", b, dynamic=dynamic)

    @cx.forward
    def loglike(self, a, b):
        return jnp.log(a) - 0.5 * b**2


def test_non_finite_start_names_param():
    f = cx.compile(Sqrt(a=-1.0), "loglike")
    with pytest.raises(cx.InferenceError, match=r"sqrt\.a"):
        cx.nuts(f, jax.random.key(0), num_warmup=10, num_samples=10, progress=False)


def test_start_outside_support_falls_back_to_the_mode():
    # A chain whose Gaussian start lands where the log-density is -inf starts at the
    # fallback (the mode) instead; the others keep their starts.
    from caskax.infer._target import Target
    from caskax.infer.nuts import _start_state

    def logp(x):  # a hard wall at |x| = 1
        return jnp.where(jnp.all(jnp.abs(x) < 1), -0.5 * jnp.sum(x**2), -jnp.inf)

    target = Target(logp, unconstrained=False)
    z = jnp.array([[0.5, 0.2], [3.0, 0.0], [-0.9, 0.1]])
    fallback = jnp.zeros_like(z)
    state = jax.jit(jax.vmap(lambda a, b: _start_state(target, a, b)))(z, fallback)
    np.testing.assert_allclose(
        np.asarray(state.position), [[0.5, 0.2], [0.0, 0.0], [-0.9, 0.1]], rtol=1e-6
    )
    np.testing.assert_allclose(np.asarray(state.logdensity), [-0.145, 0.0, -0.41], rtol=1e-6)
    np.testing.assert_allclose(np.asarray(state.logdensity_grad), -np.asarray(state.position))


def test_nuts_with_a_hard_wall_starts_inside(recwarn):
    # The Laplace Gaussian (sd 1) puts most starts outside |x| < 0.3; every chain must
    # still sample inside the support, from its first draw on.
    def logp(x):
        return jnp.where(jnp.all(jnp.abs(x) < 0.3), -0.5 * jnp.sum(x**2), -jnp.inf)

    c = cx.nuts(
        logp,
        jax.random.key(3),
        jnp.zeros(1),
        num_warmup=20,
        num_samples=20,
        num_chains=4,
        progress=False,
    )
    assert np.all(np.abs(c.samples) < 0.3) and np.all(np.isfinite(c.log_density))


def test_wrong_x0_length(corr):
    with pytest.raises(cx.ShapeError, match=r"corr\.z"):
        cx.nuts(
            corr, jax.random.key(0), x0=jnp.zeros(3), num_warmup=10, num_samples=10, progress=False
        )
    with pytest.raises(cx.InferenceError, match="num_chains"):
        cx.nuts(
            corr,
            jax.random.key(0),
            x0=jnp.zeros((3, 2)),
            num_warmup=10,
            num_samples=10,
            progress=False,
        )


def test_no_dynamic_params():
    f = cx.compile(Sqrt(dynamic=False), "loglike")
    with pytest.raises(cx.InferenceError, match="no dynamic params"):
        cx.nuts(f, jax.random.key(0), progress=False)
    with pytest.raises(cx.InferenceError, match="no dynamic params"):
        cx.fit(f)


def test_bad_options(corr):
    with pytest.raises(cx.InferenceError, match="chain_method"):
        cx.nuts(corr, jax.random.key(0), chain_method="threads", progress=False)
    with pytest.raises(cx.InferenceError, match="inverse_mass_matrix"):
        cx.nuts(corr, jax.random.key(0), inverse_mass_matrix=jnp.ones(3), progress=False)
    with pytest.raises(cx.InferenceError, match="numeric array of shape"):
        cx.nuts(corr, jax.random.key(0), inverse_mass_matrix=[["a", "b"]], progress=False)


@pytest.mark.parametrize(
    "key, got",
    [
        (0, "got 0"),
        (None, "got None"),
        (jax.random.split(jax.random.key(0), 2), r"dtype key<fry> and shape \(2,\)"),
        (np.zeros(2, np.float32), r"dtype float32 and shape \(2,\)"),
    ],
)
def test_a_bad_key_is_named(corr, key, got):
    # before any compile: a caskax error, not one from inside jax.random.split
    with pytest.raises(cx.InferenceError, match=r"key must be one PRNG key.*" + got):
        cx.nuts(corr, key, progress=False)


def test_a_raw_uint32_key_samples_like_its_typed_key(corr):
    kw = dict(num_warmup=20, num_samples=20, num_chains=2, progress=False)
    raw = cx.nuts(corr, jax.random.PRNGKey(3), **kw)
    typed = cx.nuts(corr, jax.random.wrap_key_data(jax.random.PRNGKey(3)), **kw)
    np.testing.assert_array_equal(raw.samples, typed.samples)


SHARDED = textwrap.dedent(
    """
    import jax, jax.numpy as jnp, numpy as np
    import caskax as cx
    assert len(jax.devices()) == 4
    logp = lambda x: -0.5 * jnp.sum((x / jnp.array([1.0, 0.5])) ** 2)
    # No warmup (one compile less): the exact mass matrix makes step size 1 fine.
    c = cx.nuts(logp, jax.random.key(0), jnp.zeros(2), num_warmup=0, num_samples=300,
                num_chains=8, progress=False, chain_method="sharded",
                inverse_mass_matrix=jnp.array([1.0, 0.25]))
    assert c.samples.shape == (8, 300, 2), c.samples.shape
    s = c.summary()
    assert max(s[n]["r_hat"] for n in c.names) < 1.02
    assert abs(c.samples[..., 1].std() - 0.5) < 0.05
    assert c.samples.std(axis=1).min() > 0.2  # every shard's chains moved
    try:
        cx.nuts(logp, jax.random.key(0), jnp.zeros(2), num_chains=6, chain_method="sharded",
                progress=False)
    except cx.InferenceError as err:
        assert "divisible by 4" in str(err)
    else:
        raise AssertionError("no error for 6 chains on 4 devices")
    # The Laplace path compiles one sharded program, the runner (start states inside
    # it, every call's inputs placed alike), for one chain per device (no vmap) and
    # for two.
    import logging
    runners = []
    class Log(logging.Handler):
        def emit(self, record):
            if "Finished XLA compilation of jit(_sharded)" in record.getMessage():
                runners.append(record.threadName)
    logging.getLogger("jax").addHandler(Log())
    jax.config.update("jax_log_compiles", True)
    for n in (4, 8):
        del runners[:]
        c = cx.nuts(logp, jax.random.key(1), jnp.zeros(2), num_warmup=20, num_samples=40,
                    num_chains=n, progress=False, chain_method="sharded")
        assert runners == ["caskax-nuts-compile"], (n, runners)
        assert np.all(np.isfinite(c.samples)) and c.samples.std(axis=1).min() > 0.1, n
    print("ok")
    """
)


def test_sharded_over_four_host_devices():
    out = run_python(
        SHARDED, XLA_FLAGS="--xla_force_host_platform_device_count=4", JAX_PLATFORMS="cpu"
    )
    assert out.strip().endswith("ok")


def test_import_leaves_jax_unstarted():
    """Importing caskax (blackjax included, on first use) starts no JAX backend, so a
    user can still set backend options such as ``jax_num_cpu_devices`` after it."""
    code = (
        "import caskax as cx, jax\n"
        "jax.config.update('jax_num_cpu_devices', 2)\n"
        "assert len(jax.devices()) == 2, jax.devices()\n"
        "import jax.numpy as jnp\n"
        "c = cx.nuts(lambda x: -0.5 * jnp.sum(x**2), jax.random.key(0), jnp.zeros(2), num_warmup=20,\n"
        "            num_samples=20, num_chains=2, chain_method='sharded', progress=False)\n"
        "print('ok', c.samples.shape)\n"
    )
    assert run_python(code, JAX_PLATFORMS="cpu").strip() == "ok (2, 20, 2)"


def test_warmup_and_draws_share_one_compiled_runner(corr):
    # Laplace-seeded warmup (step size only) and draws run through one compiled runner,
    # which also builds the chains' initial states: one compile in all, made in a
    # background thread while the mode is fitted, and none for a new num_warmup. A
    # weak-typed leaf in the runner's state (or a background compile whose arguments
    # differ from the calls') would compile it twice.
    run = dict(num_samples=40, num_chains=2, progress=False)
    with CompileLog() as first:
        cx.nuts(corr, jax.random.key(11), num_warmup=30, **run)
    with CompileLog() as second:
        c = cx.nuts(corr, jax.random.key(12), num_warmup=45, **run)
    assert first.names.count("jit(_vectorized)") == 1, first.names
    assert first.threads[first.names.index("jit(_vectorized)")] == "caskax-nuts-compile"
    assert "jit(_vectorized)" not in second.names, second.names
    assert c.samples.shape == (2, 40, 2) and c.num_warmup == 45


def test_window_adaptation_compiles_the_runner_ahead(corr):
    # With window adaptation, the warmup program compiles in this thread and the draws'
    # runner in the background one, once: the warmup's outputs (a weak-typed step size
    # from blackjax) must match what the runner was compiled for.
    with CompileLog() as log:
        cx.nuts(
            corr,
            jax.random.key(5),
            num_warmup=31,
            num_samples=23,
            num_chains=2,
            progress=False,
            inverse_mass_matrix=None,
        )
    mapped = [t for n, t in zip(log.names, log.threads) if n == "jit(_vectorized)"]
    assert sorted(mapped) == ["MainThread", "caskax-nuts-compile"], mapped


def test_float64_fit_laplace_nuts():
    """Inference keeps float64 when x64 is on (a subprocess: x64 is process-wide)."""
    code = textwrap.dedent("""
        import jax, jax.numpy as jnp, numpy as np, caskax as cx

        class Model(cx.Module):
            a: cx.Param
            s: cx.Param

            def __init__(self):
                super().__init__("m")
                self.a = cx.Param("a", [0.5, -0.5], dynamic=True)
                self.s = cx.Param("s", 1.5, valid=(0, None), dynamic=True)

            @cx.forward
            def loglike(self, a, s):
                return -0.5 * jnp.sum((a - 1.0) ** 2) - 2.0 * (s - 1.0) ** 2

        f = cx.compile(Model(), "loglike")
        fit = cx.fit(f)
        assert fit.x.dtype == jnp.float64 and bool(fit.converged), fit
        lap = cx.laplace(f, fit.x)
        assert lap.cov.dtype == jnp.float64 and np.all(np.isfinite(lap.sigma))
        c = cx.nuts(f, jax.random.key(0), num_warmup=50, num_samples=50, num_chains=2,
                    progress=False)
        assert c.samples.dtype == np.float64 and c.step_size.dtype == np.float64
        assert np.all(np.isfinite(c.samples)) and not np.any(c.divergences)
        print("ok")
    """)
    assert "ok" in run_python(code, JAX_ENABLE_X64="1")
