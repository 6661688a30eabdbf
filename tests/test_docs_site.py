"""The documentation site builds in strict mode: every API page resolves, no link is
broken, every notebook converts, and benchmarks/RESULTS.md is included."""

import os
import pathlib
import subprocess
import sys

ROOT = pathlib.Path(__file__).resolve().parents[1]


def test_mkdocs_build_strict(tmp_path):
    env = {**os.environ, "NO_MKDOCS_2_WARNING": "1"}
    proc = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "-d", str(tmp_path / "site")],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-8000:]
    site = tmp_path / "site"
    for page in ("index.html", "api/modules/index.html", "notebooks/beginners_guide/index.html"):
        assert (site / page).exists(), page
    api = (site / "api/modules/index.html").read_text()
    assert "set_values" in api and "batch_axes" in api
