"""The worked example, end to end in --quick mode (the README's command 1, smaller)."""

import json
import math

import pytest

from caskax.examples import sn_lightcurve


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    out = tmp_path_factory.mktemp("sn")
    results = sn_lightcurve.main(["--quick", "--out", str(out), "--cache-dir", ""])
    return out, results


def test_figures_and_results_written(run):
    out, _ = run
    for name in [
        "simulator.gif",
        "fit_stage1.png",
        "fit_stage2.png",
        "fit_stage3.png",
        "lightcurve.png",
        "laplace_sigma_peak.png",
        "corner_stage4.png",
        "trace_stage4.png",
    ]:
        path = out / name
        assert path.exists() and path.stat().st_size > 1000, name
    assert (out / "graph_stage3.png").exists() or (out / "graph_stage3.txt").exists()
    data = json.loads((out / "results.json").read_text())
    assert set(data) >= {"config", "truth", "stage1", "stage2", "stage3", "stage4", "total_seconds"}


def test_stage3_recovers_the_light_curve_within_3_sigma(run):
    _, results = run
    truth = results["truth"]
    for key in ("t0", "sigma", "peak_flux"):
        est = results["stage3"][key]
        assert abs(est["value"] - truth[key]) < 3 * est["sigma"], key
        assert 0 < est["sigma"] < 1


def test_stage4_posterior_converged_and_agrees(run):
    _, results = run
    s4 = results["stage4"]
    assert s4["max_rhat"] < 1.05
    assert s4["divergences"] == 0
    for key in ("t0", "sigma", "peak_flux"):
        m, sd = s4[key]["mean"], s4[key]["sd"]
        assert abs(m - results["truth"][key]) < 4 * sd
        assert math.isclose(sd, results["stage3"][key]["sigma"], rel_tol=0.5)


def test_chains_sharded_over_the_cpu_cores_in_a_fresh_process():
    """Started as a program, the example asks JAX for one CPU device per chain (up to
    max(4, cores), a divisor of the chain count) and shards the chains over them;
    called after JAX has started (as in this test process) it keeps the devices it
    finds."""
    import jax
    from helpers import run_python

    code = (
        "import os, jax\n"
        "os.sched_getaffinity = lambda pid: {0, 1, 2}\n"  # three cores, six chains
        "from caskax.examples import sn_lightcurve as s\n"
        "s._host_devices(6)\n"
        "print(len(jax.devices()), s._chain_method(jax, 6), s._chain_method(jax, 4))\n"
    )
    out = run_python(code, timeout=120, JAX_PLATFORMS="cpu")
    assert out.split() == ["3", "sharded", "vectorized"]
    sn_lightcurve._host_devices(4)  # JAX already runs here: no error, no change
    assert sn_lightcurve._chain_method(jax, 4) == (
        "sharded" if len(jax.devices()) > 1 else "vectorized"
    )
