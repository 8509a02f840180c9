"""The distribution: a wheel and an sdist build from the checkout, and the wheel installed into a
fresh virtual environment runs `fedllm quickstart` (slow: it installs every dependency)."""

from __future__ import annotations

import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
pytestmark = [pytest.mark.slow]


@pytest.fixture(scope="module")
def dist(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("dist")
    r = subprocess.run([sys.executable, "-m", "build", "--wheel", "--sdist", "--outdir", str(out), str(ROOT)],
                       capture_output=True, text=True, timeout=900)
    assert r.returncode == 0, (r.stdout + r.stderr)[-3000:]
    return out


def test_the_wheel_and_sdist_hold_the_package_its_data_and_the_command(dist):
    wheel = next(dist.glob("fedllm_kit-*.whl"))
    sdist = next(dist.glob("fedllm_kit-*.tar.gz"))
    names = zipfile.ZipFile(wheel).namelist()
    for needed in ("fedllm/cli.py", "fedllm/py.typed", "fedllm/bench/quickstart.yaml", "fedllm/bench/suites/cpu.yaml",
                   "fedllm/chat/web.py", "fedllm/export/gguf_file.py"):
        assert needed in names, needed
    meta = zipfile.ZipFile(wheel).read(next(n for n in names if n.endswith("dist-info/METADATA"))).decode()
    assert "Name: fedllm-kit" in meta
    entry = zipfile.ZipFile(wheel).read(next(n for n in names if n.endswith("entry_points.txt"))).decode()
    assert "fedllm = fedllm.cli:app" in entry
    assert sdist.stat().st_size > 50_000


@pytest.mark.timeout(2400)
def test_the_wheel_in_a_fresh_venv_runs_the_quickstart(dist, tmp_path):
    wheel = next(dist.glob("fedllm_kit-*.whl"))
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=300)
    pip = [str(venv / "bin" / "python"), "-m", "pip", "install", "--quiet"]
    subprocess.run([*pip, "torch==2.13.0"], check=True, timeout=1200)  # the CPU build, as the Makefile does
    subprocess.run([*pip, str(wheel)], check=True, timeout=1200)
    r = subprocess.run([str(venv / "bin" / "fedllm"), "quickstart", "--output-dir", str(tmp_path / "qs")], cwd=tmp_path,
                       capture_output=True, text=True, timeout=1500)
    assert r.returncode == 0, (r.stdout + r.stderr)[-3000:]
    assert (tmp_path / "qs" / "paired.json").is_file() and (tmp_path / "qs" / "fedavg" / "summary.json").is_file()
    assert "FedAvg" in r.stdout or "fedavg" in r.stdout
