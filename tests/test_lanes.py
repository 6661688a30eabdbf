"""``lanes``: how many datasets of a batched Program run side by side in one vmapped
loop. Every width gives each dataset the result a separate run gives."""

import jax.numpy as jnp
import numpy as np
import pytest

import caskax as cx
from caskax.infer._lanes import CPU_LANES, map_datasets, resolve_lanes


class Line(cx.Module):
    a: cx.Param
    s: cx.Param
    y: jnp.ndarray

    def __init__(self, y, name="line"):
        super().__init__(name)
        self.a = cx.Param("a", 0.0, dynamic=True)
        self.s = cx.Param("s", 1.0, valid=(0, None), dynamic=True)
        self.y = jnp.asarray(y, jnp.float32)

    @cx.forward
    def loglike(self, a, s):
        return jnp.sum(-0.5 * ((self.y - a) / s) ** 2 - jnp.log(s))


N = 7  # not a multiple of the widths below: the last group is a remainder
YS = (
    np.random.default_rng(1).normal(size=(N, 30)) * np.linspace(0.5, 3.0, N)[:, None]
    + np.linspace(-2.0, 2.0, N)[:, None]
).astype(np.float32)


@pytest.fixture(scope="module")
def F():
    return cx.batch(cx.compile(Line(YS[0]), "loglike"), y=YS)


@pytest.mark.parametrize("lanes", [1, 3, N, 64])
def test_every_width_gives_the_separate_fits(F, lanes):
    res = cx.fit(F, lanes=lanes, tol=1e-4)  # clear of float32's gradient floor
    # the closed form: mean and (biased) standard deviation of each dataset
    np.testing.assert_allclose(res.x[:, 0], YS.mean(axis=1), rtol=1e-3, atol=1e-3)
    np.testing.assert_allclose(res.x[:, 1], YS.std(axis=1), rtol=1e-3)
    assert res.x.shape == (N, 2) and bool(np.all(res.converged))
    for k in (0, N - 1):
        alone = cx.fit(F[k], tol=1e-4)
        np.testing.assert_allclose(res.x[k], alone.x, rtol=2e-4, atol=2e-4)
        assert int(res.steps[k]) == int(alone.steps)


def test_groups_stop_on_their_own(F):
    # with one lane each dataset runs its own loop: steps differ between datasets
    steps = np.asarray(cx.fit(F, lanes=1).steps)
    assert len(set(steps.tolist())) > 1


def test_chunks_and_lanes_together(F):
    a = cx.fit(F, batch_size=4, lanes=2)
    b = cx.fit(F, lanes=N)
    np.testing.assert_allclose(a.x, b.x, rtol=2e-4, atol=2e-4)


def test_default_width_by_backend():
    import jax

    expected = CPU_LANES if jax.default_backend() == "cpu" else None
    assert resolve_lanes(None, "fit") == expected
    assert resolve_lanes(np.int64(4), "fit") == 4


@pytest.mark.parametrize("bad", [0, -2, 2.5, True, "8"])
def test_bad_lanes_name_what_is_expected(F, bad):
    with pytest.raises(cx.InferenceError, match="lanes must be an integer >= 1"):
        cx.fit(F, lanes=bad)


def test_lanes_apply_to_batched_programs_only(F):
    with pytest.raises(cx.InferenceError, match="lanes apply to batched Programs"):
        cx.fit(F[0], lanes=2)


def test_map_datasets_keeps_shared_arrays_whole():
    shared, own = jnp.array([10.0, 20.0]), jnp.arange(5.0)
    out = map_datasets(lambda a, x: a[0][0] + a[1] * x, (shared, own), (None, 0), (jnp.ones(5),), 2)
    np.testing.assert_allclose(out, 10.0 + np.arange(5.0))


def test_nuts_every_width_samples_alike(F):
    import jax

    run = dict(num_warmup=30, num_samples=30, num_chains=2, progress=False)
    G = F.take(np.arange(3))
    one = cx.nuts(G, jax.random.key(3), lanes=1, **run)
    wide = cx.nuts(G, jax.random.key(3), lanes=3, **run)
    assert one.samples.shape == wide.samples.shape == (3, 2, 30, 2)
    np.testing.assert_allclose(one.samples, wide.samples, rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(one.step_size, wide.step_size, rtol=1e-5)
    with pytest.raises(cx.InferenceError, match="lanes must be an integer >= 1"):
        cx.nuts(G, jax.random.key(3), lanes=0, **run)
    with pytest.raises(cx.InferenceError, match="lanes and resume=True apply to batched"):
        cx.nuts(F[0], jax.random.key(3), lanes=2, **run)


def test_laplace_every_width_gives_the_separate_errors(F):
    x = cx.fit(F, tol=1e-4).x
    ref = cx.laplace(F, x, lanes=N)
    for lanes in (1, 3):
        lap = cx.laplace(F, x, lanes=lanes)
        np.testing.assert_allclose(lap.cov, ref.cov, rtol=1e-4, atol=1e-6)
    alone = cx.laplace(F[2], x[2])
    np.testing.assert_allclose(ref.sigma[2], alone.sigma, rtol=1e-4)
    # the mean's error is s / sqrt(n) for 30 points
    np.testing.assert_allclose(ref.sigma[:, 0], x[:, 1] / np.sqrt(30), rtol=1e-3)
    with pytest.raises(cx.InferenceError, match="lanes must be an integer >= 1"):
        cx.laplace(F, x, lanes=0)
    with pytest.raises(cx.InferenceError, match="lanes apply to batched Programs"):
        cx.laplace(F[0], x[0], lanes=2)
