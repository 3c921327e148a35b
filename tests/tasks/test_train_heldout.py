"""train.heldout: a share of the pairs is not trained on but scored before and after training, and
the demo's closing table shows what moved."""

from pathlib import Path

import pytest

from tasks.evaluate.comparison import heldout_rows, heldout_text
from tasks.store import ArtifactStore
from tasks.train import is_held_out, preference_snapshot, sample_identity, select_pairs, train
from tests.support.configs import small_train
from tests.support.preference import preference_rows, write_train_pairs


def test_the_held_out_share_is_chosen_by_a_hash_the_same_in_every_run():
    ids = [f"sample-{i}:text" for i in range(2000)]
    held = [i for i in ids if is_held_out(i, 0.25)]
    assert 0.22 < len(held) / len(ids) < 0.28
    assert held == [i for i in ids if is_held_out(i, 0.25)]
    assert not any(is_held_out(i, 0.0) for i in ids)
    assert set(held) <= {i for i in ids if is_held_out(i, 0.5)}  # a larger share holds out these too


def test_held_out_pairs_are_counted_and_never_trained_on(tmp_path: Path):
    rows = preference_rows(tmp_path / "img", [1.0] * 8)
    path = write_train_pairs(tmp_path / "preferences.parquet", rows)
    kept, held, counts = select_pairs(path, small_train(heldout=0.5))
    assert held and kept
    assert {r["pair_id"] for r in kept}.isdisjoint(r["pair_id"] for r in held)
    assert len(kept) + len(held) == 8
    assert counts["pairs.heldout"] == len(held) and counts["pairs.trained"] == len(kept)
    assert all(is_held_out(sample_identity(r), 0.5) for r in held)
    # A sample's text and visual pairs are held out together, never one trained and one scored.
    sample_of = {r["pair_id"]: r["sample_id"] for r in rows}
    held_samples = {sample_of[r["pair_id"]] for r in held}
    assert held_samples.isdisjoint(sample_of[r["pair_id"]] for r in kept)
    assert sorted(r["pair_type"] for r in held) == ["text"] * len(held_samples) + ["visual"] * len(held_samples)


def test_train_scores_the_held_out_pairs_before_and_after(tmp_path: Path):
    rows = preference_rows(tmp_path / "img", [1.0] * 8)
    path = write_train_pairs(tmp_path / "preferences.parquet", rows)
    config = small_train(heldout=0.5, learning_rate=0.05, max_steps=3)
    manifest = train(ArtifactStore(tmp_path / "store"), config, preference_snapshot(path), path)
    counts = manifest.counts
    # The fresh adapter is the reference: nothing preferred yet.
    assert counts["heldout.before.rewards/margins"] == pytest.approx(0.0, abs=1e-6)
    assert counts["heldout.before.rewards/accuracies"] == 0.0
    assert counts["heldout.after.logps/chosen"] != pytest.approx(counts["heldout.before.logps/chosen"], abs=1e-4)
    assert counts["heldout.after.rewards/margins"] != 0.0
    assert not any(key.startswith("train.last.eval_") for key in counts)
    assert [r["metric"] for r in heldout_rows(counts)] == ["logps/chosen", "rewards/accuracies", "rewards/margins"]


def test_the_closing_table_shows_before_after_and_change():
    counts = {
        "pairs.heldout": 4.0,
        "heldout.before.rewards/accuracies": 0.0,
        "heldout.after.rewards/accuracies": 0.75,
        "heldout.before.rewards/margins": 0.0,
        "heldout.after.rewards/margins": 0.125,
        "heldout.before.logps/chosen": -40.5,
        "heldout.after.logps/chosen": -38.25,
    }
    assert heldout_rows(counts)[0] == {"metric": "logps/chosen", "before": -40.5, "after": -38.25, "change": 2.25}
    lines = heldout_text(counts).splitlines()
    assert lines[0].split() == ["metric", "(4", "held-out", "pairs)", "before", "after", "change"]
    assert lines[2].split() == ["logps/chosen", "-40.5000", "-38.2500", "+2.2500"]
    assert lines[3].split() == ["rewards/accuracies", "0.0000", "0.7500", "+0.7500"]
    assert heldout_text({"pairs.trained": 3.0}) == "(no held-out pairs: set train.heldout)"
