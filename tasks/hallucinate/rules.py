"""The ``rules`` backend: offline clinical perturbations of the ground truth (tasks.hallucinate.clinical_rules)."""

from __future__ import annotations

import collections
from collections.abc import Mapping
from typing import Any

from tasks.config import HallucinateConfig
from tasks.hallucinate import clinical_rules
from tasks.hallucinate.rows import empty_answer_row, rejection_problem, row


def rules_row(sample: Mapping[str, Any], config: HallucinateConfig) -> dict[str, Any]:
    if (empty := empty_answer_row(sample, "rules")) is not None:
        return empty
    answer = sample["answer"]
    found = clinical_rules.candidates(answer, sample["task"])
    if not found:
        return row(sample, "rules", status="skipped", reason="no_rule_applies")
    problems = collections.Counter()
    for tried, candidate in enumerate(clinical_rules.ordered(found, f"{config.seed}:{sample['sample_id']}"), start=1):
        problem = rejection_problem(candidate.text, answer, config)
        if problem is None:
            return row(sample, "rules", rejected=candidate.text, error_type=candidate.error_type, attempts=tried)
        problems[problem] += 1
    return row(sample, "rules", attempts=len(found), status="failed", reason=problems.most_common(1)[0][0])
