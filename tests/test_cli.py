"""The main job runs end to end on its bundled default."""

import subprocess
import sys


def test_demo_runs(tmp_path):
    out = tmp_path / "demo"
    res = subprocess.run(
        [sys.executable, "-m", "jkin.cli", "demo", "--out", str(out), "--n", "2", "--workers", "1",
         "--quiet"],
        capture_output=True, text=True,
    )
    assert res.returncode == 0, res.stderr
    assert "2 samples (2 made now" in res.stdout
    lines = [ln for ln in res.stdout.splitlines() if ln.strip()[:1].isdigit()]
    assert len(lines) == 2  # one table row per map
    assert "jkin demo finished" in res.stdout


def test_version():
    res = subprocess.run([sys.executable, "-m", "jkin.cli", "--version"], capture_output=True, text=True)
    assert res.returncode == 0 and res.stdout.startswith("jkin ")
