"""cx.batch: N datasets of one model as one batched Program, and cx.fit / cx.laplace /
cx.nuts solving the N problems independently, each as a separate run would."""

import importlib
import textwrap
import time

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from helpers import run_python

import caskax as cx


class Line(cx.Module):
    """Data ``y`` with unknown mean ``a`` and scale ``s`` (valid (0, inf))."""

    a: cx.Param
    s: cx.Param
    y: jax.Array
    weight: float

    def __init__(self, y, a0=0.0, weight=1.0, name="line"):
        super().__init__(name)
        self.a = cx.Param("a", a0, dynamic=True)
        self.s = cx.Param("s", 1.0, valid=(0, None), dynamic=True)
        self.y = jnp.asarray(y, jnp.float32)
        self.weight = float(weight)

    @cx.forward
    def loglike(self, a, s):
        return self.weight * jnp.sum(-0.5 * ((self.y - a) / s) ** 2 - jnp.log(s))


YS = (
    np.random.default_rng(0).normal(size=(3, 20)) * np.array([[1.0], [2.0], [0.5]])
    + np.array([[0.0], [3.0], [-1.0]])
).astype(np.float32)


@pytest.fixture(scope="module")
def programs():
    return [cx.compile(Line(y, a0=0.1 * k, weight=1.0 + k), "loglike") for k, y in enumerate(YS)]


@pytest.fixture(scope="module")
def F(programs):
    return cx.batch(programs)


# -- building ---------------------------------------------------------------------------------------
def test_batched_program_evaluates_each_member(programs, F):
    X = np.array([[0.5, 0.2], [1.0, -0.3], [-2.0, 0.4]], np.float32)
    assert len(F) == 3 and F.names == programs[0].names and F.layout == programs[0].layout
    np.testing.assert_allclose(F(X), [float(f(x)) for f, x in zip(programs, X)], rtol=1e-6)
    np.testing.assert_allclose(F.init, np.stack([f.init for f in programs]))
    assert F.init.shape == (3, 2)
    for k, f in enumerate(programs):
        np.testing.assert_allclose(F[k](X[k]), f(X[k]), rtol=1e-6)
    # data, start values and the differing Python number are stacked; nothing else is
    assert sorted(a.shape for a, ax in zip(F.arrays, F.in_axes) if ax == 0) == [(3,), (3,), (3, 20)]


def test_equal_arrays_are_held_once(programs):
    same = [cx.compile(Line(YS[0]), "loglike") for _ in range(4)]
    G = cx.batch(same)
    assert all(ax is None for ax in G.in_axes)  # every array equal: nothing stacked
    np.testing.assert_allclose(
        G(np.ones((4, 2), np.float32)), float(same[0](np.ones(2, np.float32)))
    )


def test_new_data_reuses_the_compiled_call(programs, F):
    traces = []

    @jax.jit
    def run(F, X):
        traces.append(1)
        return F(X)

    X = np.ones((3, 2), np.float32)
    run(F, X)
    G = cx.batch(
        [cx.compile(Line(y + 1.0, a0=0.2 * k, weight=2.0 + k), "loglike") for k, y in enumerate(YS)]
    )
    np.testing.assert_allclose(run(G, X), G(X))
    assert len(traces) == 1


@pytest.mark.parametrize(
    "other, match",
    [
        (
            lambda: cx.compile(Line(YS[0]).to_static("s"), "loglike"),
            r"programs\[0\] has 2 dynamic params, programs\[1\] has 1 \(first unmatched: 's'\)",
        ),
        (
            lambda: cx.compile(Line(YS[0, :10]), "loglike"),
            r"'y' has shape \(20,\) float32 in programs\[0\] and \(10,\)",
        ),
        (
            lambda: cx.compile(Line(YS[0], name="other"), "loglike"),
            r"'line\.a' at 'a'.*'other\.a' at 'a'",
        ),
    ],
    ids=["dynamic params", "data shape", "module name"],
)
def test_a_different_structure_names_the_first_difference(programs, other, match):
    with pytest.raises(cx.GraphError, match=match):
        cx.batch([programs[0], other()])


def test_bad_batch_arguments(programs):
    with pytest.raises(cx.GraphError, match="at least one Program"):
        cx.batch([])
    with pytest.raises(cx.GraphError, match=r"programs\[1\] is a Line"):
        cx.batch([programs[0], Line(YS[0])])
    with pytest.raises(cx.GraphError, match="needs the arrays to swap"):
        cx.batch(programs[0])


# -- the fast path ------------------------------------------------------------------------------------
def test_swapping_arrays_equals_building_each_program(programs, F):
    G = cx.batch(programs[0], {"y": YS, "a": [0.0, 0.1, 0.2], "weight": [1.0, 2.0, 3.0]})
    X = np.array([[0.5, 0.2], [1.0, -0.3], [-2.0, 0.4]], np.float32)
    np.testing.assert_allclose(G(X), F(X), rtol=1e-6)
    np.testing.assert_allclose(G.init, F.init)
    H = cx.batch(programs[0], y=YS)  # keywords for plain field names
    np.testing.assert_allclose(
        H(X),
        [float(cx.compile(Line(y, weight=1.0), "loglike")(x)) for y, x in zip(YS, X)],
        rtol=1e-6,
    )


def test_swapping_a_shared_param_changes_every_copy():
    # the stage-2 model: one galaxy node inside five image models; its q is dynamic,
    # so the swap gives each dataset its own start value
    from caskax.examples.stages import mock_data, stage2_model

    data = mock_data(n_pix=12)
    module = stage2_model(data)
    f = cx.compile(module)
    qs = np.array([0.5, 0.7], np.float32)
    G = cx.batch(f, {"model.models[0].models[1].q": qs})
    q_entry = f.names.index("Galaxy.q")
    np.testing.assert_allclose(G.init[:, q_entry], qs)
    for k, q in enumerate(qs):
        edited = cx.compile(module.set("model.models[0].models[1].q", q))
        np.testing.assert_allclose(G[k].init, edited.init)
        np.testing.assert_allclose(G[k](G.init[k]), edited(edited.init), rtol=1e-6)
        # every image model holds the same q
        assert {float(m.models[1].q.value) for m in G[k].module.model.models} == {float(q)}


def test_swap_errors_name_the_paths(programs):
    with pytest.raises(cx.GraphError, match=r"no array at 'nope'.*'a', 's', 'weight', 'y'"):
        cx.batch(programs[0], nope=np.zeros((2, 20)))
    with pytest.raises(cx.ShapeError, match=r"'y' holds shape \(20,\).*got \(2, 19\)"):
        cx.batch(programs[0], y=np.zeros((2, 19)))
    with pytest.raises(cx.ShapeError, match="stacks 3 datasets, the paths before it 2"):
        cx.batch(programs[0], {"y": np.zeros((2, 20)), "a": np.zeros(3)})
    with pytest.raises(cx.ShapeError, match=r"'y' stacks no datasets \(shape \(0, 20\)\)"):
        cx.batch(programs[0], y=np.zeros((0, 20)))


def test_ten_thousand_datasets_build_well_under_a_second(programs):
    ys = np.random.default_rng(1).normal(size=(10_000, 20)).astype(np.float32)
    cx.batch(programs[0], y=ys[:2])  # imports and first-call work
    start = time.perf_counter()
    G = cx.batch(programs[0], y=ys)
    took = time.perf_counter() - start
    assert len(G) == 10_000 and took < 0.25, took
    np.testing.assert_allclose(
        G[9_999](G.init[9_999]),
        cx.compile(Line(ys[9_999]), "loglike")(np.array([0.0, 1.0], np.float32)),
        rtol=1e-6,
    )


# -- inference -----------------------------------------------------------------------------------------
@pytest.mark.parametrize("method, valid", [("lbfgs", False), ("lbfgs", True), ("adam", False)])
def test_fit_equals_separate_fits(programs, F, method, valid):
    kw = dict(method=method, valid=valid, maxiter=300 if method == "adam" else 1000)
    res = cx.fit(F, **kw)
    assert res.x.shape == (3, 2) and res.value.shape == (3,) and res.converged.shape == (3,)
    for k, f in enumerate(programs):
        alone = cx.fit(f, **kw)
        # vmap may round differently in the last bit; each problem stops on its own test
        np.testing.assert_allclose(res.x[k], alone.x, rtol=2e-4, atol=2e-4)
        np.testing.assert_allclose(res.value[k], alone.value, rtol=1e-5)
        if method == "lbfgs":  # Adam stops at maxiter near its threshold: a rounding away
            assert bool(res.converged[k]) == bool(alone.converged)
    assert res.by_name()["line.a"].shape == (3,)


def test_fit_each_dataset_stops_on_its_own(programs, F):
    # dataset 0 starts at its optimum: it takes no step while the others run
    best = cx.fit(programs[0]).x
    X0 = np.stack([np.asarray(best), [0.0, 1.0], [0.0, 1.0]]).astype(np.float32)
    res = cx.fit(F, X0)
    assert int(res.steps[0]) == 0 and int(res.steps[1]) > 3 and bool(np.all(res.converged))


def test_fit_errors_name_the_dataset(F):
    with pytest.raises(cx.ShapeError, match=r"expected \(3, 2\)"):
        cx.fit(F, np.zeros((2, 2), np.float32))
    X0 = np.array([[0.0, 1.0], [0.0, -1.0], [0.0, 1.0]], np.float32)  # s < 0: log(s) is nan
    with pytest.raises(cx.InferenceError, match=r"dataset 1 of 3.*line\.s"):
        cx.fit(F, X0)
    with pytest.raises(cx.InferenceError, match="maxiter"):
        cx.fit(F, maxiter=0)


def test_laplace_equals_separate_laplace(programs, F):
    X = cx.fit(F).x
    lap = cx.laplace(F, X)
    assert lap.cov.shape == (3, 2, 2) and lap.sigma.shape == (3, 2)
    for k, f in enumerate(programs):
        alone = cx.laplace(f, X[k])
        np.testing.assert_allclose(
            lap.cov[k], alone.cov, rtol=1e-4, atol=1e-4 * float(alone.cov.max())
        )
    sub = cx.laplace(F, X, subset=["line.s"])
    np.testing.assert_allclose(sub.sigma[:, 0], lap.sigma[:, 1], rtol=1e-6)
    assert lap.sample(jax.random.key(0), (7,)).shape == (7, 3, 2)
    np.testing.assert_array_equal(  # an int is that many draws, as numpy's size=
        lap.sample(jax.random.key(0), 7), lap.sample(jax.random.key(0), (7,))
    )
    bad = np.array(X)
    bad[2, 1] = 50.0  # far from the mode in s: -hessian is not positive definite there
    with pytest.raises(cx.InferenceError, match=r"dataset 2 of 3"):
        cx.laplace(F, bad)


RUN = dict(num_warmup=100, num_samples=100, num_chains=2, progress=False)


@pytest.fixture(scope="module")
def batched_chains(F):
    return cx.nuts(F, jax.random.key(0), **RUN)


def test_nuts_samples_each_dataset(programs, batched_chains):
    c = batched_chains
    assert c.samples.shape == (3, 2, 100, 2) and c.num_datasets == 3 and c.num_chains == 2
    assert c.step_size.shape == (3, 2) and c.inverse_mass_matrix.shape == (3, 2, 2, 2)
    assert c.last_position.shape == (3, 2, 2)
    # each dataset's own posterior: the mean of a near its data's mean
    for k in range(3):
        a = c[k].by_name()["line.a"]
        sd = YS[k].std() / np.sqrt(20)
        assert abs(a.mean() - YS[k].mean()) < 0.5 * sd + 4 * sd / np.sqrt(50), k
    # the step sizes adapt per dataset (their scales differ by 4x)
    assert c.step_size.std(axis=1).max() < c.step_size.mean(axis=1).std() + 0.5


def test_summary_has_a_dataset_column(batched_chains):
    s = batched_chains.summary()
    assert s[(2, "line.a")] == s[2]["line.a"]
    lines = str(s).splitlines()
    assert lines[0].split()[:3] == ["dataset", "name", "mean"] and len(lines) == 1 + 6 + 1
    assert lines[5].split()[:2] == ["2", "line.a"]


def test_nuts_resumes_a_batched_run(F, batched_chains):
    more = cx.nuts(F, jax.random.key(1), num_samples=50, progress=False, resume=batched_chains)
    assert more.samples.shape == (3, 2, 150, 2)
    np.testing.assert_array_equal(more.samples[:, :, :100], batched_chains.samples)
    np.testing.assert_array_equal(more.step_size, batched_chains.step_size)
    with pytest.raises(cx.InferenceError, match="num_chains=3"):
        cx.nuts(
            F, jax.random.key(1), num_samples=5, num_chains=3, progress=False, resume=batched_chains
        )
    with pytest.raises(cx.InferenceError, match=r"needs Chains with samples \[3, chains"):
        cx.nuts(F, jax.random.key(1), num_samples=5, progress=False, resume=batched_chains[0])


def test_nuts_window_adaptation_and_bad_options(F):
    c = cx.nuts(F, jax.random.key(2), inverse_mass_matrix=None, **RUN)
    assert c.samples.shape == (3, 2, 100, 2) and c.inverse_mass_matrix.shape == (3, 2, 2)
    assert np.all(np.isfinite(c.samples))
    with pytest.raises(cx.InferenceError, match="chain_method='sharded' is not available"):
        cx.nuts(F, jax.random.key(2), chain_method="sharded", **RUN)
    with pytest.raises(cx.ShapeError, match=r"expected floats of shape \(3, 2\)"):
        cx.nuts(F, jax.random.key(2), x0=np.zeros(2, np.float32), **RUN)


EQUAL_RUNS = textwrap.dedent(
    """
    import jax, jax.numpy as jnp, numpy as np, caskax as cx
    from test_batch import Line, YS
    # float64: vmap's rounding then stays far below anything NUTS's decisions amplify
    fs = [cx.compile(Line(y, weight=1.0 + k), "loglike") for k, y in enumerate(YS)]
    F = cx.batch(fs)
    run = dict(num_warmup=60, num_samples=60, num_chains=2, progress=False)
    c = cx.nuts(F, jax.random.key(3), **run)
    keys = jax.random.split(jax.random.key(3), 3)
    for k, f in enumerate(fs):
        alone = cx.nuts(f, keys[k], **run)
        assert c.samples.dtype == np.float64
        np.testing.assert_allclose(c.samples[k], alone.samples, rtol=1e-6, atol=1e-8)
        np.testing.assert_allclose(c.step_size[k], alone.step_size, rtol=1e-6)
        np.testing.assert_allclose(c.inverse_mass_matrix[k], alone.inverse_mass_matrix, rtol=1e-6)
    print("ok")
    """
)


def test_nuts_equals_separate_runs_with_split_keys():
    import os

    tests = os.path.dirname(__file__)
    assert "ok" in run_python(
        EQUAL_RUNS,
        JAX_ENABLE_X64="1",
        PYTHONPATH=os.pathsep.join([tests, os.environ.get("PYTHONPATH", "")]),
    )


# -- chunks, devices, files ------------------------------------------------------------------------------
def test_chunks_give_the_same_results(F, tmp_path, capsys):
    whole = cx.fit(F)
    chunked = cx.fit(F, batch_size=2, progress=True)  # 2 chunks, the last padded
    np.testing.assert_array_equal(chunked.x, whole.x)
    np.testing.assert_array_equal(chunked.steps, whole.steps)
    assert "3/3" in capsys.readouterr().err  # one bar over datasets
    lap = cx.laplace(F, whole.x)
    lap_chunked = cx.laplace(F, whole.x, batch_size=2, out=tmp_path / "lap.h5")
    np.testing.assert_array_equal(lap_chunked.cov, lap.cov)
    saved = cx.batch_results(tmp_path / "lap.h5")
    assert saved["kind"] == "laplace" and saved["index"].tolist() == [0, 1, 2]
    np.testing.assert_allclose(saved["sigma"], lap.sigma, rtol=1e-6)
    with pytest.raises(cx.InferenceError, match="apply to batched Programs"):
        cx.fit(F[0], batch_size=2)


def test_nuts_in_chunks_to_a_file(F, batched_chains, tmp_path):
    c = cx.nuts(F, jax.random.key(0), batch_size=2, out=tmp_path / "chains.h5", **RUN)
    np.testing.assert_array_equal(c.samples, batched_chains.samples)
    np.testing.assert_array_equal(c.inverse_mass_matrix, batched_chains.inverse_mass_matrix)
    saved = cx.batch_results(tmp_path / "chains.h5")
    assert saved["kind"] == "nuts" and saved["samples"].shape == (3, 2, 100, 2)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["chains.h5"]  # the parts are gone
    with pytest.raises(cx.InferenceError, match="resume=True continues"):
        cx.nuts(F, jax.random.key(0), resume=True, **RUN)


KILLED = textwrap.dedent(
    """
    import os, signal, sys, importlib
    import numpy as np, caskax as cx
    from test_batch import Line
    batch_module = importlib.import_module("caskax.batch")
    fit_module = importlib.import_module("caskax.infer.fit")
    ys = np.random.default_rng(2).normal(size=(8, 20)).astype(np.float32) + np.arange(8)[:, None]
    F = cx.batch(cx.compile(Line(ys[0]), "loglike"), y=ys)
    path, mode = sys.argv[1], sys.argv[2]
    if mode == "kill":
        write, written = batch_module._write_results, []
        def write_then_die(p, *a, **k):
            write(p, *a, **k)
            written.append(p)
            if len(written) == 2:  # two chunks on disk, then the process is killed
                os.kill(os.getpid(), signal.SIGKILL)
        batch_module._write_results = write_then_die
        cx.fit(F, batch_size=2, out=path)
    else:
        solved = []
        real = fit_module._fit_batched_jit
        def counting(G, z, *a):
            solved.append(len(G))
            return real(G, z, *a)
        fit_module._fit_batched_jit = counting
        res = cx.fit(F, batch_size=2, out=path, resume=(mode == "resume"))
        np.save(path + f".{mode}.npy", np.asarray(res.x))
        print("solved", len(solved))
    """
)


def test_resume_after_sigkill_loses_no_chunk_and_redoes_none(tmp_path):
    import os
    import subprocess
    import sys

    tests = os.path.dirname(__file__)
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([tests, os.environ.get("PYTHONPATH", "")]))
    path = str(tmp_path / "fits.h5")

    def run(mode):
        return subprocess.run(
            [sys.executable, "-c", KILLED, path, mode],
            env=env,
            capture_output=True,
            text=True,
            timeout=300,
        )

    killed = run("kill")
    assert killed.returncode == -9, killed.stderr[-2000:]
    parts = sorted(os.listdir(path + ".parts"))
    assert parts == ["000000000.h5", "000000002.h5"]  # whole chunks only, no temporary
    resumed = run("resume")
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert "solved 2" in resumed.stdout  # chunks 4-5 and 6-7: nothing done twice
    assert not os.path.exists(path + ".parts")
    saved = cx.batch_results(path)
    assert saved["index"].tolist() == list(range(8))
    fresh = run("fresh")  # the same fit without the kill, into the same file
    assert "solved 4" in fresh.stdout
    np.testing.assert_array_equal(np.load(path + ".resume.npy"), np.load(path + ".fresh.npy"))


SHARDED = textwrap.dedent(
    """
    import jax, numpy as np, caskax as cx, importlib
    from test_batch import Line
    assert len(jax.local_devices()) == 2
    batch_module = importlib.import_module("caskax.batch")
    ys = np.random.default_rng(3).normal(size=(6, 20)).astype(np.float32) + np.arange(6)[:, None]
    F = cx.batch(cx.compile(Line(ys[0]), "loglike"), y=ys)
    G, X = batch_module._on_devices(F, np.asarray(F.init))
    assert len(X.sharding.device_set) == 2 and len(G.arrays[-1].sharding.device_set) == 2
    spread = cx.fit(F, batch_size=2)     # chunks of 2: one dataset per device
    single = cx.fit(F, batch_size=3)     # 3 does not split over 2 devices: one device
    np.testing.assert_allclose(spread.x, single.x, rtol=1e-5, atol=1e-6)
    lap = cx.laplace(F, spread.x, batch_size=2)
    np.testing.assert_allclose(lap.sigma, cx.laplace(F, spread.x, batch_size=3).sigma, rtol=1e-5)
    print("ok")
    """
)


def test_chunks_spread_over_local_devices():
    import os

    tests = os.path.dirname(__file__)
    out = run_python(
        SHARDED,
        XLA_FLAGS="--xla_force_host_platform_device_count=2",
        PYTHONPATH=os.pathsep.join([tests, os.environ.get("PYTHONPATH", "")]),
    )
    assert "ok" in out


SHARDED_NUTS = textwrap.dedent(
    """
    import importlib, jax, numpy as np, caskax as cx
    from test_batch import Line
    assert len(jax.local_devices()) == 2
    nuts_module = importlib.import_module("caskax.infer.nuts")
    placed, real = [], nuts_module._map_chains
    def recording(fn, target, args, cfg, chain_method, mesh, lanes=None):
        out = real(fn, target, args, cfg, chain_method, mesh, lanes)
        z = jax.tree.leaves(out)[0]  # the chains' positions [datasets, chains, n]
        placed.append((len(z.sharding.device_set), [s.data.shape for s in z.addressable_shards]))
        return out
    nuts_module._map_chains = recording
    ys = np.random.default_rng(5).normal(size=(4, 20)) + np.arange(4)[:, None]
    F = cx.batch(cx.compile(Line(ys[0]), "loglike"), y=ys)
    run = dict(num_warmup=20, num_samples=20, num_chains=2, progress=False)
    spread = cx.nuts(F, jax.random.key(7), **run)  # 4 datasets: 2 on each device
    # every warmup and draw block ran on both devices, each holding 2 datasets x 2 chains
    assert placed and all(p == (2, [(2, 2, 2), (2, 2, 2)]) for p in placed), placed
    del placed[:]
    single = cx.nuts(F, jax.random.key(7), batch_size=3, **run)  # 3 do not split over 2
    assert placed and all(p[0] == 1 for p in placed), placed
    assert spread.samples.dtype == np.float64 and spread.samples.shape == (4, 2, 20, 2)
    for name in ("samples", "step_size", "inverse_mass_matrix", "last_position"):
        np.testing.assert_allclose(getattr(spread, name), getattr(single, name), rtol=1e-9)
    print("ok")
    """
)


def test_nuts_chunks_spread_over_local_devices():
    import os

    tests = os.path.dirname(__file__)
    out = run_python(
        SHARDED_NUTS,
        JAX_ENABLE_X64="1",  # far below anything NUTS's accept/reject decisions amplify
        XLA_FLAGS="--xla_force_host_platform_device_count=2",
        PYTHONPATH=os.pathsep.join([tests, os.environ.get("PYTHONPATH", "")]),
    )
    assert "ok" in out


def test_resume_refuses_a_file_of_other_settings(F, tmp_path):
    path = tmp_path / "fits.h5"
    cx.fit(F, batch_size=2, out=path)
    again = cx.fit(F, batch_size=2, out=path, resume=True)  # the finished file is read back
    np.testing.assert_array_equal(again.x, cx.batch_results(path)["x"])
    with pytest.raises(
        cx.StateFileError,
        match=r"other settings \(tol, batch_size: \[1e-06, 2\] there, \[0.0001, 3\] now",
    ):
        cx.fit(F, batch_size=3, tol=1e-4, out=path, resume=True)


def test_resume_refuses_results_of_other_data(programs, tmp_path, monkeypatch):
    """resume=True never returns results solved for other data, starts or shared arrays:
    the chunk files and the finished file carry fingerprints of what they solved."""
    batch_mod = importlib.import_module("caskax.batch")
    F = cx.batch(programs[0], y=YS)
    path = str(tmp_path / "fits.h5")
    write = batch_mod._write_results

    def interrupted(target, arrays, what, meta):
        if target == path:  # every chunk written, the merged file not: a crash just then
            raise KeyboardInterrupt
        write(target, arrays, what, meta)

    monkeypatch.setattr(batch_mod, "_write_results", interrupted)
    with pytest.raises(KeyboardInterrupt):
        cx.fit(F, batch_size=1, out=path)
    monkeypatch.undo()
    other = YS.copy()
    other[1] += 1.0  # dataset 1's data changed: chunk 0 still agrees, chunk 1 does not
    with pytest.raises(cx.StateFileError, match=r"datasets 1\.\.1 solved for other data"):
        cx.fit(cx.batch(programs[0], y=other), batch_size=1, out=path, resume=True)
    starts = np.array(F.init)
    starts[2, 0] = 0.5
    with pytest.raises(cx.StateFileError, match=r"datasets 2\.\.2 solved for other data"):
        cx.fit(F, starts, batch_size=1, out=path, resume=True)
    heavier = cx.compile(Line(YS[0], weight=2.0), "loglike")  # a shared number changed
    with pytest.raises(cx.StateFileError, match="arrays shared by every dataset"):
        cx.fit(cx.batch(heavier, y=YS), batch_size=1, out=path, resume=True)
    done = cx.fit(F, batch_size=1, out=path, resume=True)  # the same call: it finishes
    np.testing.assert_allclose(done.x, cx.fit(F).x, rtol=1e-6)
    # the finished file: read back for the same data, refused for other data
    again = cx.fit(F, batch_size=1, out=path, resume=True)
    np.testing.assert_array_equal(again.x, done.x)
    with pytest.raises(cx.StateFileError, match=r"datasets 0\.\.2 solved for other data"):
        cx.fit(cx.batch(programs[0], y=other), batch_size=1, out=path, resume=True)
    X = np.asarray(done.x)
    cx.laplace(F, X, out=tmp_path / "lap.h5")
    with pytest.raises(cx.StateFileError, match="solved for other data or other starts"):
        cx.laplace(F, X + 0.01, out=tmp_path / "lap.h5", resume=True)


def test_device_out_of_memory_names_the_chunk_and_batch_size(F, monkeypatch):
    fit_mod = importlib.import_module("caskax.infer.fit")

    def exhausted(*args, **kwargs):
        raise jax.errors.JaxRuntimeError("RESOURCE_EXHAUSTED: Out of memory allocating 1 bytes")

    monkeypatch.setattr(fit_mod, "_fit_batched_jit", exhausted)
    with pytest.raises(
        cx.InferenceError, match=r"out of memory solving datasets 0\.\.1 \(2 in one chunk\)"
    ) as err:
        cx.fit(F, batch_size=2)
    assert "batch_size=" in str(err.value)

    def other(*args, **kwargs):
        raise jax.errors.JaxRuntimeError("INTERNAL: something else")

    monkeypatch.setattr(fit_mod, "_fit_batched_jit", other)
    with pytest.raises(jax.errors.JaxRuntimeError, match="something else"):
        cx.fit(F)


def test_ctrl_c_in_batched_nuts_keeps_every_dataset_draws(F, monkeypatch):
    import importlib

    nuts_module = importlib.import_module("caskax.infer.nuts")

    class Bar:
        def __init__(self, total):
            self.total, self.n, self.calls = total, 0, 0

        def update(self, k):
            self.calls += 1
            if self.calls == 2:
                raise KeyboardInterrupt
            self.n += k

        def close(self):
            pass

    monkeypatch.setattr(
        nuts_module,
        "_progress_bar",
        lambda enabled, total, desc: Bar(total) if desc == "sampling" else None,
    )
    with pytest.raises(KeyboardInterrupt) as info:
        cx.nuts(F, jax.random.key(0), **{**RUN, "progress": True})
    partial = info.value.chains
    block = nuts_module._block_size(100)
    assert partial.samples.shape == (3, 2, 2 * block, 2) and partial.step_size.shape == (3, 2)
    monkeypatch.undo()
    more = cx.nuts(F, jax.random.key(1), num_samples=10, progress=False, resume=partial)
    assert more.samples.shape == (3, 2, 2 * block + 10, 2)
    with pytest.raises(cx.InferenceError, match=r"chains\[k\]\.to_arviz"):
        more.to_arviz()


def test_a_valid_program_batches_in_unconstrained_space():
    fs = [cx.compile(Line(y), "loglike", valid=True) for y in YS]
    F = cx.batch(fs)
    assert F.valid
    np.testing.assert_allclose(F.init, np.stack([f.init for f in fs]))  # u: log(s) = 0
    res = cx.fit(F)
    for k, f in enumerate(fs):
        np.testing.assert_allclose(res.x[k], cx.fit(f).x, rtol=2e-4, atol=2e-4)
    np.testing.assert_allclose(F.from_valid(res.x)[:, 1], np.exp(res.x[:, 1]), rtol=1e-6)


DISTRIBUTED = textwrap.dedent(
    """
    import sys, jax
    port, rank, path = sys.argv[1], int(sys.argv[2]), sys.argv[3]
    jax.distributed.initialize(coordinator_address=f"localhost:{port}", num_processes=2,
                               process_id=rank, initialization_timeout=120)
    import importlib, numpy as np, caskax as cx
    from test_batch import Line
    fit_module = importlib.import_module("caskax.infer.fit")
    solved, real = [], fit_module._fit_batched_jit
    fit_module._fit_batched_jit = lambda *a: solved.append(1) or real(*a)
    ys = np.random.default_rng(4).normal(size=(7, 20)).astype(np.float32) + np.arange(7)[:, None]
    F = cx.batch(cx.compile(Line(ys[0]), "loglike"), y=ys)
    res = cx.fit(F, batch_size=2, out=path)   # 4 chunks: ranks 0 and 1 take two each
    np.save(f"{path}.{rank}.npy", np.asarray(res.x))
    print("rank", rank, "of", jax.process_count(), "solved", len(solved))
    """
)


def _two_processes(script, *args, timeout=300, **env):
    """``script`` run as ranks 0 and 1 of a ``jax.distributed`` job with a localhost
    coordinator (argv: port, rank, *args); returns the two finished Popen objects with
    ``.out`` and ``.err`` set."""
    import os
    import socket
    import subprocess
    import sys

    with socket.socket() as s:  # a free port for the coordinator
        s.bind(("localhost", 0))
        port = s.getsockname()[1]
    tests = os.path.dirname(__file__)
    env = dict(
        os.environ, PYTHONPATH=os.pathsep.join([tests, os.environ.get("PYTHONPATH", "")]), **env
    )
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", script, str(port), str(rank), *map(str, args)],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for rank in (0, 1)
    ]
    try:
        for p in procs:
            p.out, p.err = p.communicate(timeout=timeout)
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
    return procs


def test_two_processes_share_the_chunks(tmp_path):
    import os

    path = str(tmp_path / "fits.h5")
    procs = _two_processes(DISTRIBUTED, path)
    for rank, p in enumerate(procs):
        assert p.returncode == 0 and f"rank {rank} of 2 solved 2" in p.out, p.err[-3000:]
    ys = np.random.default_rng(4).normal(size=(7, 20)).astype(np.float32) + np.arange(7)[:, None]
    one_process = cx.fit(cx.batch(cx.compile(Line(ys[0]), "loglike"), y=ys), batch_size=2)
    for rank in (0, 1):
        np.testing.assert_array_equal(np.load(f"{path}.{rank}.npy"), one_process.x)
    saved = cx.batch_results(path)
    assert saved["index"].tolist() == list(range(7))
    np.testing.assert_array_equal(saved["x"], one_process.x)
    assert not os.path.exists(path + ".parts")


PEER_DIES = textwrap.dedent(
    """
    import os, signal, sys, time, jax
    port, rank, path, mode = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4]
    jax.distributed.initialize(coordinator_address=f"localhost:{port}", num_processes=2,
                               process_id=rank, initialization_timeout=120)
    import importlib, numpy as np, caskax as cx
    from test_batch import Line
    batch_module = importlib.import_module("caskax.batch")
    fit_module = importlib.import_module("caskax.infer.fit")
    solved, real = [], fit_module._fit_batched_jit
    fit_module._fit_batched_jit = lambda *a: solved.append(1) or real(*a)
    if mode == "kill" and rank == 1:
        write = batch_module._write_results
        def write_then_die(p, *a, **k):
            write(p, *a, **k)  # its first chunk (datasets 2, 3) on disk, its second never
            open(path + ".died", "w").write(repr(time.time()))
            os.kill(os.getpid(), signal.SIGKILL)
        batch_module._write_results = write_then_die
    ys = np.random.default_rng(6).normal(size=(7, 20)).astype(np.float32) + np.arange(7)[:, None]
    F = cx.batch(cx.compile(Line(ys[0]), "loglike"), y=ys)
    try:
        res = cx.fit(F, batch_size=2, out=path, resume=(mode == "resume"))
    except cx.InferenceError as err:
        print(f"at {time.time()!r} InferenceError: {err}", flush=True)
        # at exit, jax.distributed's shutdown would wait for the dead process until
        # its own heartbeat timeout (100 s by default) and then abort this one
        os._exit(3)
    np.save(f"{path}.{rank}.npy", np.asarray(res.x))
    print("rank", rank, "solved", len(solved))
    """
)


def test_a_killed_process_stops_the_others_and_resume_finishes(tmp_path):
    import os
    import re

    path = str(tmp_path / "fits.h5")
    # 7 datasets in chunks of 2: rank 0 solves chunks 0 and 2, rank 1 chunks 1 and 3
    start = time.monotonic()
    killed, survivor = _two_processes(PEER_DIES, path, "kill", CASKAX_PEER_TIMEOUT="2")[::-1]
    took = time.monotonic() - start
    assert killed.returncode == -9, killed.err[-3000:]
    assert survivor.returncode == 3, survivor.err[-3000:]
    said = re.search(r"at (\S+) InferenceError: (.*)", survivor.out)
    assert said, survivor.out + survivor.err[-3000:]
    message = said.group(2)
    assert "process 1 gave no sign of life" in message and "killed" in message
    assert "datasets [6]" in message and "resume=True" in message
    assert "CASKAX_PEER_TIMEOUT=2 s" in message
    # noticed within the 2 s limit plus polling, not after a wait without end
    with open(path + ".died") as fh:
        noticed = float(said.group(1)) - float(fh.read())
    assert 1 < noticed < 15, noticed
    assert took < 120, took
    assert sorted(os.listdir(path + ".parts"))[-3:] == [
        "000000000.h5",
        "000000002.h5",
        "000000004.h5",
    ]

    resumed = _two_processes(PEER_DIES, path, "resume")
    for p in resumed:
        assert p.returncode == 0, p.err[-3000:]
    # the finished chunks are kept: only rank 1's lost chunk (dataset 6) is solved again
    assert "rank 0 solved 0" in resumed[0].out and "rank 1 solved 1" in resumed[1].out
    ys = np.random.default_rng(6).normal(size=(7, 20)).astype(np.float32) + np.arange(7)[:, None]
    one_process = cx.fit(cx.batch(cx.compile(Line(ys[0]), "loglike"), y=ys), batch_size=2)
    for rank in (0, 1):
        np.testing.assert_array_equal(np.load(f"{path}.{rank}.npy"), one_process.x)
    np.testing.assert_array_equal(cx.batch_results(path)["x"], one_process.x)
    assert not os.path.exists(path + ".parts")


def test_waiting_processes_name_a_peer_that_will_not_write_its_chunks(tmp_path, monkeypatch):
    import importlib
    import os

    batch_module = importlib.import_module("caskax.batch")
    parts = str(tmp_path / "fits.h5.parts")
    os.makedirs(parts)
    chunks = batch_module._chunk_indices(4, 2)  # chunk 0 is rank 0's, chunk 1 rank 1's
    meta = {"num_datasets": 4, "batch_size": 2}
    mine = {"x": np.zeros((2, 1)), "index": np.arange(2)}
    batch_module._write_results(os.path.join(parts, "000000000.h5"), mine, "fit", meta)
    monkeypatch.setenv("CASKAX_PEER_TIMEOUT", "0.5")
    timeout = batch_module._peer_timeout()

    def gather():
        peers = batch_module._Peers(parts, 0, 2, timeout, 0.05)
        start = time.monotonic()
        with pytest.raises(cx.InferenceError, match=r"datasets \[2, 3\].*resume=True") as info:
            batch_module._gather_parts(parts, chunks, "fit", meta, 0, 2, peers, False)
        assert 0.5 < time.monotonic() - start < 5
        return str(info.value)

    # process 1 alive and done, yet its chunk never appears here (another file system)
    with batch_module._Heartbeat(parts, 1, 0.05) as other:
        other.beat("done")
        assert "process 1 finished its chunks" in gather()
    # process 1 gone after saying so
    assert "process 1 stopped after reporting its chunks finished" in gather()
    # no heartbeat file at all: it never began, or out= is not shared
    os.remove(os.path.join(parts, ".alive-1"))
    assert "no heartbeat file" in gather()
    # process 0, all results written, does not wait for a reader that is gone
    peers = batch_module._Peers(parts, 0, 2, timeout, 0.05)
    with pytest.warns(cx.CaskaxWarning, match="every result is written, but process 1"):
        batch_module._wait_for_readers(parts, 2, peers, "fit")
    monkeypatch.setenv("CASKAX_PEER_TIMEOUT", "soon")
    with pytest.raises(cx.InferenceError, match="CASKAX_PEER_TIMEOUT must be a number"):
        batch_module._peer_timeout()


def test_swapping_an_argument_of_the_compiled_method():
    from caskax.examples import Gaussian1D

    lc = Gaussian1D("lc", t0=0.0, sigma=1.0, peak_flux=1.0).to_dynamic("t0")
    f = cx.compile(lc, "flux", 0.0)  # flux at time 0.0: the method's first argument
    G = cx.batch(f, {"args[0]": [0.0, 1.0, 2.0]})
    x = np.zeros((3, 1), np.float32)
    np.testing.assert_allclose(
        G(x), [float(cx.compile(lc, "flux", t)(x[0])) for t in (0.0, 1.0, 2.0)], rtol=1e-6
    )
