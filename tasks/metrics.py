"""Med-VQA and report-generation metrics, as pure functions of predictions and references.

Closed questions: ``closed_correct`` (normalized match; the project's headline number) and
``substring_correct`` (the released MMedPO/LLaVA-Med rule, reported beside it for
comparison with the paper: "no" inside "not sure" counts there, not here).
Open questions: ``token_recall`` (the paper's open-question "recall", number words read as
digits as LLaVA-Med's scorer reads them) and normalized exact match.
Reports: as the R2Gen line of papers (and MMedPO's table) computes them, all from
pycocoevalcap: its PTB tokenizer (Stanford CoreNLP's, punctuation dropped), then BLEU-1..4,
METEOR 1.5 and ROUGE-L (its ``Rouge``: LCS F-measure with beta = 1.2, averaged over reports).
The tokenizer and METEOR run Java; without it the report metrics are reported missing, with
the reason, rather than computed some other way under the same names. Scores are fractions
in [0, 1].
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
# LLaVA-Med's open-question scorer (llava/eval/eval_metrics/glossary.py, normalize_word, after the
# VQA v2 evaluation's manualMap) reads these words as digits: "two" and "2" are the same answer.
NUMBER_WORDS = {
    "none": "0",
    "zero": "0",
    "one": "1",
    "two": "2",
    "three": "3",
    "four": "4",
    "five": "5",
    "six": "6",
    "seven": "7",
    "eight": "8",
    "nine": "9",
    "ten": "10",
}


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
    """Share of the reference's distinct words (articles kept out) that the prediction contains,
    number words read as digits on both sides (``NUMBER_WORDS``, as LLaVA-Med's scorer does)."""
    ref = {NUMBER_WORDS.get(t, t) for t in words(reference) if t not in ARTICLES}
    if not ref:
        return 0.0
    return len(ref & {NUMBER_WORDS.get(t, t) for t in words(prediction)}) / len(ref)


class MetricUnavailable(RuntimeError):
    """A metric could not be computed here (e.g. no Java for METEOR); the rest still are."""


@dataclass
class ReportScores:
    bleu_1: float | None
    bleu_2: float | None
    bleu_3: float | None
    bleu_4: float | None
    rouge_l: float | None
    meteor: float | None
    rouge_l_each: list[float] | None = None  # per report, in order (the mean is rouge_l)
    errors: dict[str, str] = field(default_factory=dict)

    @property
    def bleu(self) -> float | None:
        """Mean of BLEU-1..4, the paper's single BLEU number."""
        parts = (self.bleu_1, self.bleu_2, self.bleu_3, self.bleu_4)
        return None if None in parts else sum(parts) / 4

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


def java(purpose: str) -> str:
    found = shutil.which("java")
    if found is None:
        raise MetricUnavailable(
            f"{purpose} needs Java (8 or newer) on PATH to run pycocoevalcap's jar; install a JRE "
            "(Debian: apt-get install default-jre-headless)"
        )
    return found


def ptb_tokenize(texts: Sequence[str], timeout_s: float = 900.0) -> list[str]:
    """pycocoevalcap's ``PTBTokenizer``: Stanford CoreNLP 3.4.1's PTBTokenizer (one line per text,
    lower-cased), then its punctuation tokens dropped. The same jar, command and filter, run on
    a temporary file of our own (pycocoevalcap's wrapper writes its file into its installed
    folder, which fails on a read-only install) and read as UTF-8 (the wrapper leaves the
    encoding to the JVM's locale). Any line break in a text becomes a space, as there."""
    import pycocoevalcap.tokenizer.ptbtokenizer as module

    command = [java("The PTB tokenizer"), "-cp", str(Path(module.__file__).parent / module.STANFORD_CORENLP_3_4_1_JAR)]
    command += ["edu.stanford.nlp.process.PTBTokenizer", "-preserveLines", "-lowerCase", "-encoding", "UTF-8"]
    with tempfile.TemporaryDirectory(prefix="ptb-") as tmp:
        source = Path(tmp) / "texts.txt"
        source.write_text("\n".join(" ".join(text.splitlines()) for text in texts), encoding="utf-8")
        try:
            done = subprocess.run([*command, str(source)], capture_output=True, timeout=timeout_s)
        except (OSError, subprocess.TimeoutExpired) as exc:
            raise MetricUnavailable(f"PTB tokenizer: running java failed: {exc}") from exc
    lines = done.stdout.decode("utf-8", errors="replace").split("\n")
    if done.returncode != 0 or len(lines) < len(texts):
        detail = done.stderr.decode("utf-8", errors="replace").strip().splitlines()[-3:]
        raise MetricUnavailable(
            f"PTB tokenizer: exited {done.returncode} with {len(lines)} lines for {len(texts)} texts: "
            f"{' | '.join(detail)}"
        )
    return [
        " ".join(w for w in line.rstrip().split(" ") if w not in module.PUNCTUATIONS) for line in lines[: len(texts)]
    ]


def bleu_scores(predictions: Sequence[str], references: Sequence[str]) -> list[float]:
    """Corpus BLEU-1..4 of tokenized texts (pycocoevalcap: closest reference length for the brevity penalty)."""
    from pycocoevalcap.bleu.bleu import Bleu

    gts = {i: [r] for i, r in enumerate(references)}
    res = {i: [p] for i, p in enumerate(predictions)}
    scores, _ = Bleu(4).compute_score(gts, res, verbose=0)
    return [float(s) for s in scores]


def rouge_l(predictions: Sequence[str], references: Sequence[str]) -> list[float]:
    """ROUGE-L of each tokenized report (pycocoevalcap's Rouge: LCS F-measure, beta = 1.2)."""
    from pycocoevalcap.rouge.rouge import Rouge

    _, each = Rouge().compute_score(
        {i: [r] for i, r in enumerate(references)}, {i: [p] for i, p in enumerate(predictions)}
    )
    return [float(s) for s in each]


def meteor_jar() -> Path:
    import pycocoevalcap.meteor.meteor as module

    return Path(module.__file__).parent / module.METEOR_JAR


def meteor(predictions: Sequence[str], references: Sequence[str], timeout_s: float = 900.0) -> float:
    """Corpus METEOR 1.5 (en, normalized) of tokenized texts, from pycocoevalcap's jar.

    The jar is run once in file mode (the same system score as pycocoevalcap's stdio
    wrapper); raises MetricUnavailable with the reason when Java is missing or fails.
    """
    runner = java("METEOR")
    jar = meteor_jar()
    if not jar.is_file():
        raise MetricUnavailable(f"METEOR jar missing at {jar}: reinstall pycocoevalcap")
    with tempfile.TemporaryDirectory(prefix="meteor-") as tmp:
        hyp, ref = Path(tmp) / "hyp.txt", Path(tmp) / "ref.txt"
        # One segment a line: a line break inside a text would split it.
        hyp.write_text("".join(" ".join(p.splitlines()) + "\n" for p in predictions))
        ref.write_text("".join(" ".join(r.splitlines()) + "\n" for r in references))
        command = [runner, "-Xmx2G", "-jar", str(jar), str(hyp), str(ref), "-l", "en", "-norm"]
        try:
            done = subprocess.run(command, capture_output=True, text=True, timeout=timeout_s, cwd=jar.parent)
        except (OSError, subprocess.TimeoutExpired) as exc:
            raise MetricUnavailable(f"METEOR: running {runner} failed: {exc}") from exc
    found = re.search(r"^Final score:\s*([0-9.eE+-]+)\s*$", done.stdout, re.MULTILINE)
    if done.returncode != 0 or found is None:
        detail = (done.stderr or done.stdout).strip().splitlines()[-3:]
        raise MetricUnavailable(f"METEOR: {runner} exited {done.returncode}: {' | '.join(detail)}")
    return float(found.group(1))


def report_scores(predictions: Sequence[str], references: Sequence[str], with_meteor: bool = True) -> ReportScores:
    """BLEU-1..4, ROUGE-L (mean and per report) and METEOR after one PTB tokenizer run; a metric
    that cannot be computed here is None with its reason in ``errors``."""
    if len(predictions) != len(references) or not predictions:
        raise ValueError(
            f"need equally many predictions and references, at least one ({len(predictions)} vs {len(references)})"
        )
    try:
        tokens = ptb_tokenize([*predictions, *references])
    except MetricUnavailable as exc:
        names = ("bleu", "rouge_l", "meteor") if with_meteor else ("bleu", "rouge_l")
        return ReportScores(None, None, None, None, None, None, errors={name: str(exc) for name in names})
    hyp, ref = tokens[: len(predictions)], tokens[len(predictions) :]
    each = rouge_l(hyp, ref)
    errors: dict[str, str] = {}
    score: float | None = None
    if with_meteor:
        try:
            score = meteor(hyp, ref)
        except MetricUnavailable as exc:
            errors["meteor"] = str(exc)
    return ReportScores(*bleu_scores(hyp, ref), sum(each) / len(each), score, each, errors)
