"""``tailsynth demo`` end to end, shrunk to test size: serve, ingest, generator, synthesis,
filter, download, and the closing experiment with its verdicts and HTML report."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.fixtures.services import free_port

pytestmark = pytest.mark.e2e


def test_demo_ends_with_an_experiment_verdict_and_a_report(tmp_path: Path) -> None:
    data_dir = tmp_path / "demo"
    command = [
        sys.executable, "-m", "services.cli", "demo", "--data-dir", str(data_dir),
        "--total", "1600", "--image-size", "32", "--train-steps", "16", "--per-class", "4",
        "--sampling-steps", "2", "--classifier-epochs", "1", "--classifier-min-steps", "10",
        "--experiment-epochs", "1", "--experiment-min-steps", "5", "--port", str(free_port()),
    ]  # fmt: skip
    done = subprocess.run(
        command,
        capture_output=True,
        text=True,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
        timeout=1500,
        check=False,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    out = done.stdout
    for step in ("1. building", "2. training", "3. synthesizing", "4. experiment"):
        assert step in out
    assert "verdicts:" in out and "best non-generative arm:" in out
    verdicts = out.split("verdicts:")[1]
    for arm in ("weighted_ce", "logit_adjusted", "curated", "curated+logit_adjusted"):
        assert f"  {arm}: BA " in verdicts, verdicts
    report = data_dir / "experiment-report.html"
    assert f"report: {report.resolve()}" in out
    assert "<svg" in report.read_text(encoding="utf-8")
    assert (data_dir / "curated.zip").stat().st_size > 0
    assert "demo finished in" in out
