"""The benchmark runner end to end on toy sizes: the JSON schema, never the speed.

``benchmarks/run.py --tiny`` runs every peer's code path (figures 1-6) in a second or
so of compute each; the caskade-torch peer is skipped inside the run, with a reason in
the JSON, when torch is not installed (torch is a bench extra, not a test one).
"""

import importlib.util
import json
import math
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
HAS_TORCH = importlib.util.find_spec("torch") is not None
HAS_CASKADE = importlib.util.find_spec("caskade") is not None

ROW_KEYS = {"figure", "model", "case", "peer", "param"}
STATS = {"min", "median", "max", "n"}
SAMPLING = {"ess_min", "rhat_max", "wall_s", "ess_per_s", "chains", "draws"}


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("bench")
    proc = subprocess.run(
        [
            sys.executable,
            str(ROOT / "benchmarks" / "run.py"),
            "--tiny",
            "--jobs",
            "3",
            "--out",
            str(out),
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=600,
    )
    result_file = out / "results.json"
    if proc.returncode != 0:
        failed = {}
        if result_file.exists():
            peers = json.loads(result_file.read_text())["peers"]
            failed = {p: s.get("reason") for p, s in peers.items() if s["status"] == "failed"}
        pytest.fail(
            f"run.py --tiny exited with {proc.returncode}; failed peers: {failed}\n"
            f"{proc.stderr[-3000:]}"
        )
    return json.loads(result_file.read_text()), (out / "results.md").read_text()


def _rows(result, **match):
    return [r for r in result["rows"] if all(r.get(k) == v for k, v in match.items())]


def test_meta_and_peers(tiny_run):
    result, _ = tiny_run
    assert result["schema"] == 1
    meta = result["meta"]
    assert meta["mode"] == "tiny"
    assert {"cpu", "cores", "platform"} <= set(meta["machine"])
    assert meta["versions"]["jax"] and "date" in meta and "command" in meta
    assert set(result["peers"]) == {"jax", "caskade-torch", "caskade-jax"}
    assert result["peers"]["jax"]["status"] == "ok"
    torch_status = result["peers"]["caskade-torch"]
    if HAS_TORCH and HAS_CASKADE:
        assert torch_status["status"] == "ok"
    else:
        assert torch_status["status"] == "skipped" and torch_status["reason"]


def test_row_schema(tiny_run):
    result, _ = tiny_run
    assert result["rows"]
    for r in result["rows"]:
        assert ROW_KEYS <= set(r), r
        if "skipped" in r:
            continue
        assert STATS <= set(r), r
        assert r["min"] <= r["median"] <= r["max"] and r["n"] >= 1
        assert "ratio" in r
        if r["figure"].endswith("sampling"):
            assert SAMPLING <= set(r), r
            assert r["ess_min"] > 0 and math.isfinite(r["rhat_max"])


@pytest.mark.parametrize(
    "figure,cases",
    [
        ("1-call", {"jit", "direct", "jit-program-arg"}),
        ("2-deriv", {"grad", "hessian"}),
        ("3-vmap", {"vmap4"}),
        ("4-compile", {"compile+first", "build"}),
    ],
)
def test_core_figures(tiny_run, figure, cases):
    result, _ = tiny_run
    for model in ("likelihood2", "likelihood3"):
        for peer in ("hand", "caskax"):
            got = {r["case"] for r in _rows(result, figure=figure, model=model, peer=peer)}
            expected = cases if peer == "caskax" else cases - {"jit-program-arg"}
            assert expected <= got, (figure, model, peer, got)
        for r in _rows(result, figure=figure, model=model, peer="caskax"):
            assert r["ratio"] is not None and r["ratio"] > 0
    assert _rows(result, figure=figure, model="likelihood2", peer="hand-opt")


def test_scaling_figures(tiny_run):
    result, _ = tiny_run
    for figure, model, sizes in (
        ("5-epochs", "likelihood2-stage2", {2, 3}),
        ("5-epochs", "likelihood3", {2, 3}),
        ("5-nodes", "nodes", {1, 2}),
    ):
        for case in ("call", "compile+first"):
            got = {
                r["param"]
                for r in _rows(result, figure=figure, model=model, case=case, peer="caskax")
            }
            assert got == sizes, (figure, model, case, got)


def test_sampling_figure(tiny_run):
    result, _ = tiny_run
    peers = {r["peer"] for r in _rows(result, figure="6-sampling")}
    assert {"hand-blackjax", "caskax"} <= peers
    if HAS_TORCH and HAS_CASKADE:
        assert "caskade-torch+emcee" in peers


@pytest.mark.skipif(not (HAS_TORCH and HAS_CASKADE), reason="caskade-torch peer needs torch")
def test_caskade_torch_rows(tiny_run):
    result, _ = tiny_run
    rows = _rows(result, peer="caskade-torch")
    figures = {r["figure"] for r in rows}
    assert {"1-call", "2-deriv", "3-vmap", "4-compile", "5-epochs", "5-nodes"} <= figures


def test_markdown(tiny_run):
    _, md = tiny_run
    for title in ("### 1.", "### 2.", "### 3.", "### 4.", "### 5a.", "### 5b.", "### 6."):
        assert title in md


def _stack_run(tmp_path, *args):
    out = tmp_path / "stack.json"
    proc = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "stack.py"), *args, "--out", str(out)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(out.read_text()), proc.stdout


def test_stack_benchmark_peers(tmp_path):
    """benchmarks/stack.py on toy k: every peer's row, the same likelihood from each, and
    the caskade-torch ratio in the JSON and the printed table."""
    result, stdout = _stack_run(
        tmp_path, "--k", "3", "5", "--max-unrolled", "3", "--hessian-k", "3", "--budget", "0.01"
    )
    r3, r5 = result["rows"]
    assert [r3["k"], r5["k"]] == [3, 5]
    peers = {"stacked", "hand-opt"}
    if HAS_TORCH and HAS_CASKADE:
        peers.add("caskade-torch")
        assert result["versions"]["caskade"] == "1.1.5"
    assert set(r3["call_s"]) == peers | {"unrolled"}
    assert set(r5["call_s"]) == peers
    assert set(r3["compile_first_s"]) == {"stacked", "hand-opt", "unrolled"}
    assert set(r3["hessian_s"]) == {"stacked", "hand-opt", "unrolled"}
    for r in (r3, r5):
        assert all(t > 0 for t in r["call_s"].values())
        values = list(r["values"].values())
        assert all(math.isclose(v, values[0], rel_tol=1e-4) for v in values), r["values"]
        ck = r["caskade"]
        if HAS_TORCH and HAS_CASKADE:
            assert math.isclose(ck["value"], r["values"]["hand-opt"], rel_tol=1e-4)
            assert ck["call"]["n"] >= 3 and ck["grad"]["n"] >= 3
            assert r["grad_s"]["caskade-torch"] == ck["grad"]["median"]
            ratio = ck["call"]["median"] / r["call_s"]["stacked"]
            assert math.isclose(r["ratio_caskade_vs_stacked_call"], ratio)
            assert f"{ratio:.0f}x, " in stdout
        else:
            assert "not installed" in ck["skipped"]
    assert "caskade-torch / stacked: call, grad" in result["table"]


@pytest.mark.skipif(not (HAS_TORCH and HAS_CASKADE), reason="caskade-torch peer needs torch")
def test_stack_benchmark_caskade_cap(tmp_path):
    """A caskade-torch step past --caskade-cap is stopped and recorded, and larger k are
    not tried; the jax peers still run."""
    result, _ = _stack_run(
        tmp_path,
        *("--k", "3", "4", "--max-unrolled", "0", "--hessian-k", "0", "--budget", "0.01"),
        *("--caskade-cap", "0.0001"),
    )
    r3, r4 = result["rows"]
    assert "ran past the 0.0001 s cap" in r3["caskade"]["skipped"]
    assert r4["caskade"]["skipped"].startswith("not run: a smaller k was stopped")
    for r in (r3, r4):
        assert set(r["call_s"]) == {"stacked", "hand-opt"}
        assert "ratio_caskade_vs_stacked_call" not in r
    assert "skipped (see JSON)" in result["table"]


def test_compile_options_quick(tmp_path):
    out = tmp_path / "co.json"
    proc = subprocess.run(
        [
            sys.executable,
            str(ROOT / "benchmarks" / "compile_options.py"),
            "--quick",
            "--json",
            str(out),
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = json.loads(out.read_text())["rows"]
    assert [r["case"] for r in rows] == ["stage1 fit", "stage1 hessian"]
    for r in rows:
        for k in ("compile_default_s", "compile_tuned_s", "run_default_s", "run_tuned_s"):
            assert math.isfinite(r[k]) and r[k] > 0


def test_nuts_first_call_quick(tmp_path):
    out = tmp_path / "nuts.json"
    proc = subprocess.run(
        [
            sys.executable,
            str(ROOT / "benchmarks" / "nuts_first_call.py"),
            "--rounds",
            "1",
            "--quick",
            "--json",
            str(out),
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = json.loads(out.read_text())["rows"]
    assert set(rows) == {"default", "two-per-device", "no-compile-ahead"}
    assert all(r["median"] > 0 and len(r["seconds"]) == 1 for r in rows.values())
    assert math.isclose(rows["default"]["x_default"], 1.0)


def test_published_page_is_rendered_from_the_committed_json(tmp_path):
    """benchmarks/RESULTS.md and docs/performance.md are what `run.py --render-only` makes
    of benchmarks/results-*.json: edit the JSON (or rerun), never the page."""
    proc = subprocess.run(
        [
            sys.executable,
            str(ROOT / "benchmarks" / "run.py"),
            "--render-only",
            "--render-to",
            str(tmp_path),
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    page = (tmp_path / "RESULTS.md").read_text()
    assert page == (ROOT / "benchmarks" / "RESULTS.md").read_text(), (
        "benchmarks/RESULTS.md is stale: run python benchmarks/run.py --render-only"
    )
    assert (tmp_path / "performance.md").read_text() == (
        ROOT / "docs" / "performance.md"
    ).read_text()
    assert len(page.splitlines()) <= 400
    for title in (
        "## Headlines",
        "## CPU",
        "## GPU",
        "### 1. One likelihood call",
        "### 5b. Scaling with node count",
        "### 6. Sampling",
    ):
        assert title in page, title
    # a page about the software: machine, versions and command, never the time of day
    assert not re.search(r"\b\d{1,2}:\d{2}\b|UTC|session", page)
    for name in ("cpu-peers", "cpu-scaling", "gpu-peers", "gpu-scaling", "sampling"):
        assert f"../docs/img/bench/{name}.png" in page
        made = tmp_path / "img" / f"{name}.png"
        committed = ROOT / "docs" / "img" / "bench" / f"{name}.png"
        assert made.stat().st_size > 10_000 and committed.exists(), name


def test_headline_ratios_come_from_the_rows():
    """The headline table is computed from the rows: change a row, the headline follows."""
    sys.path.insert(0, str(ROOT))
    from benchmarks import run

    cpu = json.loads((ROOT / "benchmarks" / "results-cpu.json").read_text())
    run._add_ratios(cpu["rows"])
    lines = run._headlines(cpu, None, None)
    calls = next(line for line in lines if "calls, vmap" in line)
    ratios = run._ratios(cpu["rows"], ("1-call", "3-vmap"))
    assert f"{min(ratios):.2f}x" in calls and f"{max(ratios):.2f}x" in calls
    for r in cpu["rows"]:
        if (r["figure"], r["model"], r["case"], r["peer"]) == (
            "1-call",
            "likelihood2",
            "jit",
            "caskax",
        ):
            r["median"] *= 3
    run._add_ratios(cpu["rows"])
    calls = next(line for line in run._headlines(cpu, None, None) if "calls, vmap" in line)
    assert f"{max(run._ratios(cpu['rows'], ('1-call', '3-vmap'))):.2f}x" in calls
    assert max(run._ratios(cpu["rows"], ("1-call", "3-vmap"))) > 3


def test_readme_speed_table_quotes_the_results_page():
    """The README's speed headlines are the page's (a rerun that moves them must update
    the README too), and the README stays a product page: short, no clock times."""
    readme = (ROOT / "README.md").read_text()
    page = (ROOT / "benchmarks" / "RESULTS.md").read_text()
    assert "(benchmarks/RESULTS.md)" in readme
    speed = readme[readme.index("## Speed") :]
    quoted = re.findall(r"\d+\.\d\dx–\d+\.\d\dx", speed)
    assert len(quoted) >= 4
    for span in quoted:
        assert span in page, span
    cpu = json.loads((ROOT / "benchmarks" / "results-cpu.json").read_text())
    sampling = {r["peer"]: r["ess_per_s"] for r in cpu["rows"] if r["figure"] == "6-sampling"}
    assert f"{sampling['caskax'] / sampling['hand-blackjax']:.1f}x" in speed
    assert len(readme.splitlines()) <= 130
    assert not re.search(r"\b\d{1,2}:\d{2}\b|UTC|session", readme)
    assert "./run example" in readme and "./run tests" in readme


def test_batch_datasets_and_hand_fit():
    """benchmarks/batch.py's pieces: dataset k is the same at every N (its own seed), and
    the hand-written optax loop stops by cx.fit's rule (gradient test, maxiter)."""
    import jax.numpy as jnp
    import numpy as np

    sys.path.insert(0, str(ROOT))
    from benchmarks import batch

    clean = np.linspace(0.0, 1.0, 12, dtype=np.float32).reshape(3, 4)
    four = batch.datasets(clean, 4, 0.1, 25.0)
    assert four.shape == (4, 3, 4) and four.dtype == np.float32
    np.testing.assert_array_equal(batch.datasets(clean, 2, 0.1, 25.0), four[:2])
    np.testing.assert_array_equal(batch.datasets(clean, 2, 0.1, 25.0, start=2), four[2:])
    assert not np.allclose(four[0], four[1])

    x, loglike, gnorm, steps, converged = batch.hand_fit(
        lambda x: jnp.sum((x - 2.0) ** 2) + 3.0, jnp.zeros(3)
    )
    np.testing.assert_allclose(np.asarray(x), 2.0, atol=1e-4)
    assert bool(converged) and float(gnorm) <= 1e-6 * max(1.0, abs(float(loglike)))
    assert math.isclose(float(loglike), -3.0, rel_tol=1e-5) and 1 <= int(steps) < 10
    *_, steps, converged = batch.hand_fit(
        lambda x: jnp.sum((x - 2.0) ** 4 + jnp.cos(x)), jnp.zeros(3), maxiter=1
    )
    assert int(steps) == 1 and not bool(converged)


def test_batch_benchmark_quick(tmp_path):
    """benchmarks/batch.py --quick end to end: every peer's row at each N, the fits agree
    with the batched ones, and the memory and NUTS rows."""
    proc = subprocess.run(
        [
            sys.executable,
            str(ROOT / "benchmarks" / "batch.py"),
            *("--quick", "--sizes", "1,3", "--nuts-datasets", "2", "--out", str(tmp_path)),
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads((tmp_path / "batch-quick.json").read_text())
    assert result["meta"]["command"].endswith("--out " + str(tmp_path))
    assert "load average" in result["meta"]["load"]
    r1, r3 = result["rows"]
    assert [r1["datasets"], r3["datasets"]] == [1, 3]
    assert "chunked" not in r1 and r3["chunked"]["batch_size"] == 2
    for r in (r1, r3):
        n = r["datasets"]
        for peer in ("batched", "loop", "hand-opt"):
            assert r[peer]["fits_per_s"] > 0 and r[peer]["first_s"] > 0
            assert r[peer]["min"] <= r[peer]["median"] <= r[peer]["max"]
        assert r["converged"]["batched"] == r["converged"]["loop"] == n
        assert r["converged"]["hand-opt"] == n
        # the same optimum: float32 rounding, and optax's own line search for the hand fit
        assert r["max_abs_x_diff"]["loop"] < 1e-3
        assert r["max_abs_x_diff"]["hand-opt"] < 1e-2
        assert math.isclose(
            r["ratio"]["loop"], r["batched"]["fits_per_s"] / r["loop"]["fits_per_s"]
        )
    assert r3["max_abs_x_diff"]["chunked"] < 1e-3 and r3["converged"]["chunked"] == 3
    ck = result["caskade"]
    if HAS_TORCH and HAS_CASKADE:
        assert ck["datasets"] == 1 and ck["maxfev"] == 30 and ck["nfev"][0] <= 32
        assert len(ck["x"][0]) == 11 and ck["fits_per_s"] > 0
        assert r3["ratio"]["caskade+scipy"] > 0
    else:
        assert "not installed" in ck["skipped"]
    memory = result["memory"]
    assert [(m["datasets"], m["batch_size"], m["mmap_threshold"]) for m in memory] == [
        (1, None, None),
        (3, None, None),
        (3, 2, None),
        (3, 2, 128 * 1024),
    ]
    for m in memory:
        assert m["converged"] == m["datasets"]
        assert m["peak_rss_mib"] >= m["rss_before_fit_mib"] > 50
    c = result["ceiling"]
    assert c["width"] == 16 and c["alone_us"] > 0 and c["per_dataset_us"] > 0
    assert math.isclose(c["ceiling"], c["alone_us"] / c["per_dataset_us"])
    nuts = result["nuts"]
    assert nuts["datasets"] == 2 and nuts["chains"] == 4
    for side in ("batched", "loop"):
        assert nuts[side]["ess_per_s_per_dataset"] > 0 and nuts[side]["wall_s"] > 0
    for title in (
        "| N | cx.fit(cx.batch) |",
        "Evaluation ceiling",
        "Resident memory",
        "NUTS, 2 datasets",
    ):
        assert title in proc.stdout


def test_batch_section_adds_the_gpu_run_and_its_ratio_to_the_cpu_run():
    """A GPU batch.json (gpu.sh's batch step, published as benchmarks/batch-gpu.json)
    renders below the CPU tables, with fits/s over the CPU run's at each shared N."""
    import copy

    from benchmarks import run

    cpu = json.loads((ROOT / "benchmarks" / "batch.json").read_text())
    assert "### On a GPU" not in "\n".join(run._batch_section(cpu))
    gpu = copy.deepcopy(cpu)
    gpu["meta"]["devices"] = ["cuda:0"]
    gpu["rows"] = [r for r in gpu["rows"] if r["datasets"] == 4096]
    gpu["rows"][0]["batched"]["fits_per_s"] *= 40
    text = "\n".join(run._batch_section(cpu, gpu))
    assert "### On a GPU" in text and "on cuda:0" in text
    assert "fits/s on the GPU over the CPU run above: N = 4096: 40.00x." in text
