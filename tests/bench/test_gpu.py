"""bench/gpu.py runs on the CPU at tiny sizes (so an import in it cannot rot unnoticed), and a
section that fails makes it exit non-zero."""

from __future__ import annotations

import importlib.util
import math
import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[2] / "bench/gpu.py"


def table(stdout: str) -> dict[str, list[tuple[str, float, str]]]:
    """The printed table's rows by their first column: (setting, value, unit)."""
    rows: dict[str, list[tuple[str, float, str]]] = {}
    for line in stdout.splitlines():
        cells = [cell.strip() for cell in line.strip().strip("|").split("|")]
        if len(cells) == 4 and cells[0] not in ("what", "") and not cells[0].startswith("-"):
            rows.setdefault(cells[0], []).append((cells[1], float(cells[2]), cells[3]))
    return rows


@pytest.mark.slow
def test_smoke_runs_every_section_to_its_table() -> None:
    done = subprocess.run(
        [sys.executable, str(SCRIPT), "--smoke"], capture_output=True, text=True, timeout=900, cwd=SCRIPT.parents[1]
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    rows = table(done.stdout)
    assert not [what for what in rows if "FAILED" in what], done.stdout
    for trainer in ("WeightedDPOTrainer", "TRL DPOTrainer"):
        units = {unit: value for _, value, unit in rows[trainer]}
        assert units["s/step (median)"] > 0 and units["tokens/s"] > 0
        assert "MFU" in units and "HFU" in units  # NaN on the CPU: no peak to divide by
    assert {unit for _, _, unit in rows["weighted / plain"]} >= {"x (goal <= 1.10)", "x"}
    assert [unit for _, _, unit in rows["SAM-shaped encoder (smoke)"]] == ["images/s", "images/s"]
    assert rows["noise: noise_array (the stage)"][0][1] > 0
    assert rows["projector, bf16 + fp32 masters"][0][1] >= 0.9
    drift = rows["noise: torch vs NumPy inside the lesion"][0][1]
    assert math.isfinite(drift) and drift < 5.0  # the same arithmetic, another RNG


def load_bench():
    spec = importlib.util.spec_from_file_location("bench_gpu", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclasses look their module up
    spec.loader.exec_module(module)
    return module


def test_a_failed_section_makes_it_exit_non_zero(monkeypatch: pytest.MonkeyPatch, capsys) -> None:
    bench = load_bench()

    def broken(sizes, smoke, deadline):
        raise ImportError("cannot import name 'open_image' from 'models.dpo'")

    monkeypatch.setitem(bench.SECTIONS, "dpo", broken)
    assert bench.main(["--smoke", "--only", "dpo", "noise"]) == 1
    rows = table(capsys.readouterr().out)
    assert rows["dpo: FAILED"][0][0].startswith("ImportError: cannot import name 'open_image'")
    assert rows["noise: noise_array (the stage)"][0][1] > 0  # the other section still ran
    assert bench.main(["--smoke", "--only", "noise"]) == 0


def test_mfu_counts_six_n_per_token_and_hfu_the_recomputed_forward() -> None:
    bench = load_bench()
    mfu, hfu = bench.utilization(flop_params=500_000_000, tokens_per_s=100_000.0, peak_flops=989e12)
    assert mfu == pytest.approx(6 * 5e8 * 1e5 / 989e12)
    assert hfu == pytest.approx(8 / 6 * mfu)


def test_the_device_check_is_one_short_script_that_runs_the_benchmark() -> None:
    script = SCRIPT.parent / "devcheck.sh"
    assert len(script.read_bytes()) < 2000
    assert subprocess.run(["bash", "-n", str(script)]).returncode == 0
    assert "bench/gpu.py" in script.read_text() and 'exit "${PIPESTATUS[0]}"' in script.read_text()
