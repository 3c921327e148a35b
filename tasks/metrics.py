"""Med-VQA and report-generation metrics, as pure functions of predictions and references.

Closed questions: ``closed_correct`` (normalized match; the project's headline number) and
``substring_correct`` (the released MMedPO/LLaVA-Med rule, reported beside it for
comparison with the paper: "no" inside "not sure" counts there, not here).
Open questions: ``token_recall`` (the paper's open-question "recall") and normalized exact
match. Reports: BLEU-1..4 and METEOR 1.5 from pycocoevalcap (the R2Gen line of papers
scores with it), ROUGE-L F1 from rouge-score. Scores are fractions in [0, 1].
"""

from __future__ import annotations

import re
import shutil
import subprocess
import tempfile
import unicodedata
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

YES = frozenset({"yes", "yeah", "yep", "true", "correct"})
NO = frozenset({"no", "nope", "false", "incorrect"})
ARTICLES = frozenset({"a", "an", "the"})


def words(text: str) -> list[str]:
    """Lower-case word tokens: punctuation separates words and is dropped ("x-ray" -> x, ray)."""
    return re.findall(r"\w+", unicodedata.normalize("NFKC", text).lower())


def normalize_answer(text: str) -> str:
    """Case, punctuation, articles and whitespace removed; a one-word yes/no synonym becomes yes/no."""
    tokens = [t for t in words(text) if t not in ARTICLES]
    if len(tokens) == 1:
        tokens = [_polarity(tokens[0]) or tokens[0]]
    return " ".join(tokens)


def _polarity(token: str) -> str | None:
    return "yes" if token in YES else "no" if token in NO else None


def closed_correct(prediction: str, reference: str) -> bool:
    """Normalized exact match; for a yes/no reference, a prediction that *starts* with yes/no
    (or a synonym) answers with that word, so "No, the lungs are clear." is right for "no"
    but "not sure" is not."""
    pred, ref = normalize_answer(prediction), normalize_answer(reference)
    if pred == ref:
        return True
    if ref in ("yes", "no"):
        first = pred.split(" ", 1)[0]
        return _polarity(first) == ref
    return False


def substring_correct(prediction: str, reference: str) -> bool:
    """The released evaluation's rule: the lower-cased reference occurs inside the prediction."""
    return reference.strip().lower() in prediction.lower()


def exact_match(prediction: str, reference: str) -> bool:
    return normalize_answer(prediction) == normalize_answer(reference)


def token_recall(prediction: str, reference: str) -> float:
    """Share of the reference's distinct words (articles kept out) that the prediction contains."""
    ref = {t for t in words(reference) if t not in ARTICLES}
    if not ref:
        return 0.0
    return len(ref & set(words(prediction))) / len(ref)


def report_text(text: str) -> str:
    """What the report metrics see: lower-case words separated by single spaces.

    Stands in for the PTB tokenizer + punctuation removal of the COCO caption evaluation,
    without a second Java dependency for BLEU, and keeps METEOR's one-line-per-segment
    input format safe from newlines in a generated report.
    """
    return " ".join(words(text))


class MetricUnavailable(RuntimeError):
    """A metric could not be computed here (e.g. no Java for METEOR); the rest still are."""


@dataclass
class ReportScores:
    bleu_1: float
    bleu_2: float
    bleu_3: float
    bleu_4: float
    rouge_l: float
    meteor: float | None
    errors: dict[str, str] = field(default_factory=dict)

    @property
    def bleu(self) -> float:
        """Mean of BLEU-1..4, the paper's single BLEU number."""
        return (self.bleu_1 + self.bleu_2 + self.bleu_3 + self.bleu_4) / 4

    def as_dict(self) -> dict[str, float | None]:
        return {
            "bleu_1": self.bleu_1,
            "bleu_2": self.bleu_2,
            "bleu_3": self.bleu_3,
            "bleu_4": self.bleu_4,
            "bleu": self.bleu,
            "rouge_l": self.rouge_l,
            "meteor": self.meteor,
        }


def bleu_scores(predictions: Sequence[str], references: Sequence[str]) -> list[float]:
    """Corpus BLEU-1..4 (pycocoevalcap: closest reference length for the brevity penalty)."""
    from pycocoevalcap.bleu.bleu import Bleu

    gts = {i: [report_text(r)] for i, r in enumerate(references)}
    res = {i: [report_text(p)] for i, p in enumerate(predictions)}
    scores, _ = Bleu(4).compute_score(gts, res, verbose=0)
    return [float(s) for s in scores]


def rouge_l(predictions: Sequence[str], references: Sequence[str]) -> float:
    """Mean per-report ROUGE-L F1 (rouge-score)."""
    from rouge_score.rouge_scorer import RougeScorer

    scorer = RougeScorer(["rougeL"], use_stemmer=False)
    scores = [scorer.score(report_text(r), report_text(p))["rougeL"].fmeasure for p, r in zip(predictions, references)]
    return sum(scores) / len(scores)


def meteor_jar() -> Path:
    import pycocoevalcap.meteor.meteor as module

    return Path(module.__file__).parent / module.METEOR_JAR


def meteor(predictions: Sequence[str], references: Sequence[str], timeout_s: float = 900.0) -> float:
    """Corpus METEOR 1.5 (en, normalized) from pycocoevalcap's jar.

    The jar is run once in file mode (the same system score as pycocoevalcap's stdio
    wrapper); raises MetricUnavailable with the reason when Java is missing or fails.
    """
    java = shutil.which("java")
    if java is None:
        raise MetricUnavailable(
            "METEOR needs Java (8 or newer) on PATH to run pycocoevalcap's meteor-1.5.jar; "
            "install a JRE (Debian: apt-get install default-jre-headless) or turn METEOR off "
            "with evaluate.meteor: false"
        )
    jar = meteor_jar()
    if not jar.is_file():
        raise MetricUnavailable(f"METEOR jar missing at {jar}: reinstall pycocoevalcap")
    with tempfile.TemporaryDirectory(prefix="meteor-") as tmp:
        hyp, ref = Path(tmp) / "hyp.txt", Path(tmp) / "ref.txt"
        hyp.write_text("".join(report_text(p) + "\n" for p in predictions))
        ref.write_text("".join(report_text(r) + "\n" for r in references))
        command = [java, "-Xmx2G", "-jar", str(jar), str(hyp), str(ref), "-l", "en", "-norm"]
        try:
            done = subprocess.run(command, capture_output=True, text=True, timeout=timeout_s, cwd=jar.parent)
        except (OSError, subprocess.TimeoutExpired) as exc:
            raise MetricUnavailable(f"METEOR: running {java} failed: {exc}") from exc
    found = re.search(r"^Final score:\s*([0-9.eE+-]+)\s*$", done.stdout, re.MULTILINE)
    if done.returncode != 0 or found is None:
        detail = (done.stderr or done.stdout).strip().splitlines()[-3:]
        raise MetricUnavailable(f"METEOR: {java} exited {done.returncode}: {' | '.join(detail)}")
    return float(found.group(1))


def report_scores(predictions: Sequence[str], references: Sequence[str], with_meteor: bool = True) -> ReportScores:
    if len(predictions) != len(references) or not predictions:
        raise ValueError(
            f"need equally many predictions and references, at least one ({len(predictions)} vs {len(references)})"
        )
    b1, b2, b3, b4 = bleu_scores(predictions, references)
    errors: dict[str, str] = {}
    score: float | None = None
    if with_meteor:
        try:
            score = meteor(predictions, references)
        except MetricUnavailable as exc:
            errors["meteor"] = str(exc)
    return ReportScores(b1, b2, b3, b4, rouge_l(predictions, references), score, errors)
