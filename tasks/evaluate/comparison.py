"""Before/after views of two evaluations: the comparison table (UI and terminal) and example
predictions side by side. Plain functions of the evaluate stage's metrics.json and
predictions rows."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from itertools import zip_longest
from typing import Any

# Metrics in the order tables show them; all are fractions in metrics.json, % in tables.
METRICS = (
    "closed_accuracy",
    "closed_substring_accuracy",
    "closed_exact_match",
    "open_recall",
    "open_exact_match",
    "bleu",
    "bleu_1",
    "bleu_2",
    "bleu_3",
    "bleu_4",
    "rouge_l",
    "meteor",
)


def _count_key(metric: str) -> str:
    """The metrics.json count of the samples a metric averages over."""
    kind = metric.split("_", 1)[0]
    return f"n_{kind}" if kind in ("closed", "open") else "n_report"


def comparison_rows(base: Mapping[str, Any], trained: Mapping[str, Any] | None = None) -> list[dict[str, Any]]:
    """One row per data set and metric present in either evaluation's metrics.json, in percent.

    ``trained`` None gives the base model's numbers alone (trained and delta null).
    """
    rows = []
    base_sets, trained_sets = base["datasets"], (trained or {"datasets": {}})["datasets"]
    for dataset in sorted(set(base_sets) | set(trained_sets)):
        before, after = base_sets.get(dataset, {}), trained_sets.get(dataset, {})
        for metric in METRICS:
            if metric not in before and metric not in after:
                continue
            b, a = _percent(before.get(metric)), _percent(after.get(metric))
            rows.append(
                {
                    "dataset": dataset,
                    "metric": metric,
                    "n": int(before.get(_count_key(metric)) or after.get(_count_key(metric)) or 0),
                    "base": b,
                    "trained": a,
                    "delta": round(a - b, 2) if a is not None and b is not None else None,
                }
            )
    return rows


def _percent(value: float | None) -> float | None:
    return None if value is None else round(100 * value, 2)


def comparison_text(rows: Sequence[Mapping[str, Any]]) -> str:
    """The before/after table as aligned plain text (what `make demo` prints)."""
    header = ("dataset", "metric", "n", "base %", "trained %", "delta")
    cells = [header] + [
        (
            str(r["dataset"]),
            str(r["metric"]),
            str(r["n"]),
            _cell(r["base"]),
            _cell(r["trained"]),
            "" if r["delta"] is None else f"{r['delta']:+.2f}",
        )
        for r in rows
    ]
    widths = [max(len(row[i]) for row in cells) for i in range(len(header))]
    lines = [
        "  ".join(c.ljust(w) if i < 2 else c.rjust(w) for i, (c, w) in enumerate(zip(row, widths))) for row in cells
    ]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(line.rstrip() for line in lines)


def heldout_rows(train_counts: Mapping[str, float]) -> list[dict[str, Any]]:
    """TRL's DPO metrics on the train stage's held-out pairs (its ``heldout.<before|after>.<metric>``
    counters), one row per metric: before and after training, and the change."""
    rows = []
    for key in sorted(k for k in train_counts if k.startswith("heldout.before.")):
        metric = key.removeprefix("heldout.before.")
        before, after = train_counts[key], train_counts.get(f"heldout.after.{metric}")
        rows.append(
            {
                "metric": metric,
                "before": before,
                "after": after,
                "change": None if after is None else after - before,
            }
        )
    return rows


def heldout_text(train_counts: Mapping[str, float]) -> str:
    """``heldout_rows`` as aligned plain text, headed by how many pairs were held out."""
    pairs = int(train_counts.get("pairs.heldout", 0))
    rows = heldout_rows(train_counts)
    if not rows:
        return "(no held-out pairs: set train.heldout)"
    cells = [(f"metric ({pairs} held-out pairs)", "before", "after", "change")] + [
        (
            r["metric"],
            f"{r['before']:.4f}",
            "n/a" if r["after"] is None else f"{r['after']:.4f}",
            "" if r["change"] is None else f"{r['change']:+.4f}",
        )
        for r in rows
    ]
    widths = [max(len(row[i]) for row in cells) for i in range(4)]
    lines = [
        "  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(row, widths))) for row in cells
    ]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(line.rstrip() for line in lines)


def rounds_rows(base: Mapping[str, Any], rounds: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """One row per data set and metric: the base model and every round's model (``round 1``,
    ``round 2``, ...) in percent, and ``change``: the last round minus the base."""
    sets = [base["datasets"], *(r["datasets"] for r in rounds)]
    rows = []
    for dataset in sorted(set().union(*sets)):
        found = [s.get(dataset, {}) for s in sets]
        for metric in METRICS:
            if not any(metric in f for f in found):
                continue
            values = [_percent(f.get(metric)) for f in found]
            row: dict[str, Any] = {
                "dataset": dataset,
                "metric": metric,
                "n": int(next((f[_count_key(metric)] for f in found if f.get(_count_key(metric))), 0)),
                "base": values[0],
            }
            row.update({f"round {i}": value for i, value in enumerate(values[1:], start=1)})
            first, last = values[0], values[-1]
            row["change"] = round(last - first, 2) if len(values) > 1 and None not in (first, last) else None
            rows.append(row)
    return rows


def rounds_text(rows: Sequence[Mapping[str, Any]]) -> str:
    """``rounds_rows`` as aligned plain text (what `mmedpo iterate` prints)."""
    if not rows:
        return "(no evaluated samples)"
    columns = list(rows[0])
    cells = [columns] + [[_round_cell(c, row[c]) for c in columns] for row in rows]
    widths = [max(len(line[i]) for line in cells) for i in range(len(columns))]
    lines = [
        "  ".join(c.ljust(w) if i < 2 else c.rjust(w) for i, (c, w) in enumerate(zip(line, widths))) for line in cells
    ]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(line.rstrip() for line in lines)


def _round_cell(column: str, value: Any) -> str:
    if column in ("dataset", "metric", "n"):
        return str(value)
    if column == "change":
        return "" if value is None else f"{value:+.2f}"
    return _cell(value)


def _cell(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.2f}"


def example_rows(
    base: Sequence[Mapping[str, Any]], trained: Sequence[Mapping[str, Any]] | None = None, count: int = 10
) -> list[dict[str, Any]]:
    """``count`` samples side by side, taken in turn from each data set (in sample_id order) so
    every data set is shown."""
    after = {r["sample_id"]: r for r in trained or ()}
    per_dataset: dict[str, list[Mapping[str, Any]]] = {}
    for row in sorted(base, key=lambda r: (r["dataset"], r["sample_id"])):
        per_dataset.setdefault(row["dataset"], []).append(row)
    interleaved = [r for group in zip_longest(*per_dataset.values()) for r in group if r is not None]
    chosen = []
    for row in interleaved[:count]:
        other = after.get(row["sample_id"])
        chosen.append(
            {
                "dataset": row["dataset"],
                "sample_id": row["sample_id"],
                "question": row["question"],
                "reference": row["answer"],
                "base": _shown(row),
                **({"trained": _shown(other) if other else "(not evaluated)"} if trained is not None else {}),
            }
        )
    return chosen


def _shown(row: Mapping[str, Any]) -> str:
    if row["status"] != "ok":
        return f"({row['status']}: {row['error']})"
    return row["prediction"] or "(empty)"


def examples_markdown(rows: Sequence[Mapping[str, Any]], max_chars: int = 300) -> str:
    if not rows:
        return "_No evaluated samples._"
    columns = list(rows[0])
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(_md_cell(str(r[c]), max_chars) for c in columns) + " |" for r in rows]
    return "\n".join(lines)


def _md_cell(text: str, max_chars: int) -> str:
    if len(text) > max_chars:
        text = text[: max_chars - 1] + "…"
    return text.replace("\\", "\\\\").replace("|", "\\|").replace("\r", "").replace("\n", "<br>")
