"""A non-editable install (a wheel) holds only the packages: everything the code reads at import
or run time must be inside them."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]

PROBE = """
import sys
from pathlib import Path
import flows.cli, tasks.train, experiments.grounding.flow
from models import launching
import tasks.train as train
assert Path(flows.cli.__file__).is_relative_to(sys.argv[1]), flows.cli.__file__
assert flows.cli.DEMO_RUN.is_file(), flows.cli.DEMO_RUN
assert all(path.is_file() for path in launching.DATA_PARALLEL.values()), launching.DATA_PARALLEL
print("ok", train.CODE)
"""


@pytest.mark.slow
def test_the_wheel_imports_and_finds_its_files_away_from_the_checkout(tmp_path):
    source = tmp_path / "source"  # a copy: building writes build/ and *.egg-info/ beside the sources
    for name in ("flows", "tasks", "models", "experiments"):
        shutil.copytree(REPO / name, source / name, ignore=shutil.ignore_patterns("__pycache__"))
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(REPO / name, source / name)
    built = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", str(source), "--no-deps", "--no-build-isolation", "-q"]
        + ["-w", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert built.returncode == 0, built.stderr[-2000:]
    (wheel,) = tmp_path.glob("mmedpo-*.whl")
    site = tmp_path / "site"
    zipfile.ZipFile(wheel).extractall(site)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"} | {"PYTHONPATH": str(site)}
    # -P: the current folder is not put first on sys.path; it is not the checkout either way.
    probe = subprocess.run(
        [sys.executable, "-P", "-c", PROBE, str(site)], cwd=elsewhere, env=env, capture_output=True, text=True
    )
    assert probe.returncode == 0, probe.stderr[-2000:]
    assert probe.stdout.startswith("ok ")
