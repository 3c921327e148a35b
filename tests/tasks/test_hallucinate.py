import json
import re
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tasks import catalog
from tasks.config import EndpointConfig, HallucinateConfig, TargetSamplingConfig
from tasks.hallucinate import clinical_rules, hallucinate
from tasks.hallucinate.rows import rejection_problem
from tasks.store import ArtifactStore
from tests.support.openai_server import LoggedRequest, Reply
from tests.support.samples import ingest_manifest, sample_row

REPORT = "Heart size normal. Small right pleural effusion. No pneumothorax."


def sample(
    sid,
    answer,
    *,
    task="vqa",
    answer_type="open",
    question="What abnormality is seen?",
    split="train",
    image="/nonexistent.png",
):
    return sample_row(
        sid,
        Path(image),
        dataset="test",
        split=split,
        task=task,
        modality="X-Ray",
        question=question,
        answer=answer,
        answer_type=answer_type,
    )


def read_rows(manifest):
    return {r["sample_id"]: r for r in catalog.rows(manifest, catalog.HALLUCINATIONS)}


SAMPLES = [
    sample("closed-yes", "Yes", answer_type="closed", question="Is there a pleural effusion?"),
    sample("modality", "MRI", question="What modality is used?"),
    sample("side", "Left Lung", question="Where is the nodule?"),
    sample("report", REPORT, task="report", answer_type="report", question="Describe the findings."),
    sample("nothing", "the patient", question="Who is shown?"),
    sample("empty", "  ", question="What is this?"),
    sample("held-out", "Yes", answer_type="closed", split="test"),
]


def test_rules_backend_perturbs_clinically_and_reports_what_it_cannot(tmp_path):
    store = ArtifactStore(tmp_path / "store")
    manifest = hallucinate(store, HallucinateConfig(), ingest_manifest(store, SAMPLES))
    rows = read_rows(manifest)
    assert set(rows) == {"closed-yes", "modality", "side", "report", "nothing", "empty"}  # train split only
    assert rows["closed-yes"]["rejected"] == "No"
    assert rows["closed-yes"]["error_type"] == "yes_no_flip" and rows["closed-yes"]["origin"] == "rules"
    assert rows["nothing"]["origin"] is None  # only ok rows have an origin
    assert rows["modality"]["rejected"] == "CT" and rows["modality"]["error_type"] == "modality_swap"
    assert rows["side"]["rejected"] in {"Right Lung", "Left Heart"}
    assert rows["nothing"]["status"] == "skipped" and rows["nothing"]["reason"] == "no_rule_applies"
    assert rows["nothing"]["rejected"] is None
    assert rows["empty"]["status"] == "skipped" and rows["empty"]["reason"] == "empty_answer"
    report = rows["report"]
    assert report["status"] == "ok" and report["backend"] == "rules"
    assert report["rejected"] in {c.text for c in clinical_rules.candidates(REPORT, "report")}
    assert rejection_problem(report["rejected"], REPORT, HallucinateConfig()) is None
    assert manifest.counts["rejections.ok"] == 4 and manifest.counts["rejections.skipped.no_rule_applies"] == 1
    assert manifest.counts["samples.out_of_scope.split"] == 1 and manifest.counts["rejections.ok.yes_no_flip"] == 1
    # Deterministic: a fresh store computes the same rejections.
    again = ArtifactStore(tmp_path / "other")
    assert read_rows(hallucinate(again, HallucinateConfig(), ingest_manifest(again, SAMPLES))) == rows


def test_rules_choice_depends_on_the_seed_but_stays_among_the_candidates():
    found = clinical_rules.candidates(REPORT, "report")
    firsts = {clinical_rules.ordered(list(found), f"0:s{i}")[0].error_type for i in range(40)}
    assert len(firsts) >= 4  # spread over the applicable error types
    assert clinical_rules.ordered(list(found), "0:x") == clinical_rules.ordered(list(found), "0:x")


@pytest.mark.parametrize(
    ("text", "task", "expected"),
    [
        ("No pneumothorax or pleural effusion.", "report", "Small pneumothorax. No pleural effusion."),
        ("There is no pleural effusion.", "report", "There is a small pleural effusion."),
        ("Small right pleural effusion.", "report", "No pleural effusion."),
        ("No acute cardiopulmonary process.", "report", "Acute cardiopulmonary process."),
        ("The heart is normal in size.", "report", "The heart is enlarged."),
        ("Left lower lobe atelectasis.", "report", "Right lower lobe atelectasis."),
        ("Left lower lobe atelectasis.", "report", "Left lower lobe consolidation."),
        ("Mild cardiomegaly.", "report", "Severe cardiomegaly."),
        ("A 2.5 cm nodule.", "report", "A 5.0 cm nodule."),
        ("2", "vqa", "3"),
        ("Liver", "vqa", "Spleen"),
        ("Axial", "vqa", "Coronal"),
        ("no", "vqa", "yes"),
    ],
)
def test_rules_offer_the_expected_clinical_errors(text, task, expected):
    assert expected in [c.text for c in clinical_rules.candidates(text, task)]


def test_rules_leave_negated_mentions_alone():
    texts = [c.text for c in clinical_rules.candidates("No left pleural effusion.", "report")]
    assert "No right pleural effusion." not in texts  # asserts nothing the image could contradict
    assert "Small left pleural effusion." in texts


def test_rules_reject_a_rewrite_outside_the_length_ratio(tmp_path):
    store = ArtifactStore(tmp_path / "store")
    rows = [sample("short", "Lungs clear.", task="report", answer_type="report")]
    manifest = hallucinate(store, HallucinateConfig(), ingest_manifest(store, rows))
    (row,) = read_rows(manifest).values()
    # The only rule that applies writes 'Lungs with patchy bibasilar opacities.' (3x longer).
    assert row["status"] == "failed" and row["reason"] == "too_long" and row["rejected"] is None
    loose = HallucinateConfig(max_length_ratio=4.0)
    (row,) = read_rows(hallucinate(store, loose, ingest_manifest(store, rows))).values()
    assert row["status"] == "ok" and row["error_type"] == "normality_flip"


# --- llm backend --------------------------------------------------------------------------------


def gt_of(request: LoggedRequest) -> str:
    return re.search(r"Correct answer: (.*)", request.prompt_text).group(1).strip()


WRONG = {
    "Yes": "No",
    "MRI": "CT",
    "Left Lung": "Right Lung",
    REPORT: REPORT.replace("right", "left"),
    "the patient": "the doctor",
}


def injector(request: LoggedRequest) -> str:
    return "Sure! ```json\n" + json.dumps({"rejected": WRONG[gt_of(request)], "error_type": "Laterality"}) + "\n```"


def llm_config(server, tmp_path, **overrides):
    endpoint = EndpointConfig(
        base_url=server.base_url,
        model="m",
        backoff_s=0.0,
        max_retries=1,
        max_concurrency=2,
        capabilities={"structured_output": True},  # the JSON protocol; the few-shot one: test_fewshot.py
    )
    return HallucinateConfig(**({"backend": "llm", "llm": endpoint, "cache_dir": tmp_path / "cache"} | overrides))


def test_llm_backend_injects_retries_with_feedback_and_reports_failures(openai_server, tmp_path):
    def responder(request):
        answer = gt_of(request)
        if answer == "MRI":  # always over-long: retried with feedback, then failed
            return json.dumps(
                {
                    "rejected": "This is a computed tomography scan of the abdomen, axial plane.",
                    "error_type": "modality_swap",
                }
            )
        if answer == "the patient":
            return Reply(status=500)
        if answer == "Left Lung" and "not the JSON object" not in request.prompt_text:
            return "not json at all"
        return injector(request)

    openai_server.set_responder(responder)
    openai_server.latency_s = 0.05
    store = ArtifactStore(tmp_path / "store")
    config = llm_config(openai_server, tmp_path)
    manifest = hallucinate(store, config, ingest_manifest(store, SAMPLES))
    rows = read_rows(manifest)
    assert rows["closed-yes"]["rejected"] == "No" and rows["closed-yes"]["attempts"] == 1
    assert rows["closed-yes"]["error_type"] == "laterality" and rows["closed-yes"]["backend"] == "llm"
    assert (
        rows["closed-yes"]["origin"] == "llm_rewrite" and "rejections[test].share.target_model" not in manifest.counts
    )
    assert rows["report"]["rejected"] == REPORT.replace("right", "left")
    # Malformed JSON then a valid answer: two attempts, the second carried the feedback.
    assert rows["side"]["status"] == "ok" and rows["side"]["attempts"] == 2
    assert (rows["modality"]["status"], rows["modality"]["reason"], rows["modality"]["attempts"]) == (
        "failed",
        "too_long",
        3,
    )
    assert (rows["nothing"]["status"], rows["nothing"]["reason"]) == ("failed", "llm_http_500")
    assert rows["empty"]["reason"] == "empty_answer"
    mri_requests = [r for r in openai_server.requests if "Correct answer: MRI" in r.prompt_text]
    assert len(mri_requests) == 3 and "too long" in mri_requests[-1].messages[-1]["content"]
    assert openai_server.max_concurrent <= 2
    assert manifest.counts["rejections.failed.llm_http_500"] == 1 and manifest.counts["llm.errors"] == 1

    # A re-run elsewhere with the same cache pays for nothing that succeeded before.
    sent = len(openai_server.requests)
    other = ArtifactStore(tmp_path / "store2")
    rerun = read_rows(hallucinate(other, config, ingest_manifest(other, SAMPLES)))
    new_requests = openai_server.requests[sent:]
    assert all("Correct answer: the patient" in r.prompt_text for r in new_requests)  # only the failed one is retried
    assert {k: v["rejected"] for k, v in rerun.items()} == {k: v["rejected"] for k, v in rows.items()}


def test_llm_backend_sends_images_only_where_allowed(openai_server, tmp_path):
    image = tmp_path / "x.png"
    Image.fromarray(np.zeros((8, 8), np.uint8)).save(image)
    openai_server.set_responder(injector)
    rows = [sample("closed-yes", "Yes", answer_type="closed", image=image)]
    store = ArtifactStore(tmp_path / "store")
    ingest = ingest_manifest(store, rows)
    reads_images = EndpointConfig(
        base_url=openai_server.base_url, model="m", capabilities={"images": True, "structured_output": True}
    )
    hallucinate(store, llm_config(openai_server, tmp_path, send_images=True, llm=reads_images), ingest)
    (request,) = openai_server.requests
    assert request.messages[1]["content"][1]["image_url"]["url"].startswith("data:image/png;base64,")
    # Refused where the config is made (when the run file loads), before any stage runs.
    with pytest.raises(ValueError, match="may not receive images"):
        HallucinateConfig(
            backend="llm",
            send_images=True,
            llm=EndpointConfig(base_url="https://api.example.com/v1", capabilities={"images": True}),
        )
    assert len(openai_server.requests) == 1


# --- target backend -----------------------------------------------------------------------------


def test_target_backend_samples_the_vlm_then_selects_or_rewrites(openai_server, tmp_path, tiny_llava):
    image = tmp_path / "cxr.png"
    Image.fromarray((np.random.default_rng(0).random((40, 40)) * 255).astype(np.uint8)).save(image)
    rows = [
        sample("pick", "There is a small left pleural effusion.", image=image, question="Describe the effusion."),
        sample("rewrite", "Yes", answer_type="closed", image=image, question="Is there an effusion?"),
        sample("no-image", "Yes", answer_type="closed", image=tmp_path / "missing.png"),
    ]

    def responder(request):
        if "Answers the model gave" in request.prompt_text:
            chosen = 1 if "Describe the effusion." in request.prompt_text else 0
            return json.dumps({"choice": chosen, "error_type": "negation"})
        return injector(request)

    openai_server.set_responder(responder)
    target = TargetSamplingConfig(model_path=tiny_llava, num_samples=3, max_new_tokens=6, batch_size=2)
    # Random weights answer gibberish of any length: a loose ratio lets the selector see candidates.
    config = llm_config(
        openai_server, tmp_path, backend="target", target=target, min_length_ratio=0.01, max_length_ratio=100.0
    )
    store = ArtifactStore(tmp_path / "store")
    manifest = hallucinate(store, config, ingest_manifest(store, rows))
    out = read_rows(manifest)
    picked = out["pick"]
    assert picked["status"] == "ok" and picked["backend"] == "target" and len(picked["candidates"]) == 3
    usable = [c.strip() for c in picked["candidates"] if rejection_problem(c, rows[0]["answer"], config) is None]
    assert picked["rejected"] == usable[0] and picked["attempts"] == 1
    rewritten = out["rewrite"]
    assert len(rewritten["candidates"]) == 3
    assert rewritten["rejected"] == "No" and rewritten["error_type"] == "laterality"
    assert out["no-image"]["status"] == "failed" and out["no-image"]["reason"].startswith("generation_")
    assert manifest.counts["rejections.ok"] == 2


@pytest.mark.parametrize(
    ("candidate", "question", "answer", "reduced"),
    [
        ("No, the lungs are clear and there is no effusion.", "Is there an effusion?", "Yes", "No"),
        ("nope", "Is there an effusion?", "yes", "no"),  # a synonym, in the ground truth's case
        ("YES", "Is the heart enlarged?", "No", "Yes"),
        ("The lungs are clear.", "Is there an effusion?", "Yes", "The lungs are clear."),  # answers neither way
        ("This is a CT scan of the abdomen.", "Is this a CT or an MRI?", "MRI", "CT"),
        ("It is in the right lung.", "Is the lesion in the left lung or right lung?", "Left Lung", "Right Lung"),
        ("The spleen looks bigger.", "Which is bigger in this image, kidney or spleen?", "Kidney", "Spleen"),
        ("Both a CT and an MRI.", "Is this a CT or an MRI?", "MRI", "Both a CT and an MRI."),  # names both
        ("Axial.", "Which plane is this image taken?", "Axial", "Axial."),  # no options in the question
    ],
)
def test_closed_answers_are_reduced_to_what_they_answer(candidate, question, answer, reduced):
    from tasks.hallucinate.target import closed_answer

    assert closed_answer(candidate, question, answer) == reduced


def test_target_rejections_of_closed_questions_come_from_the_model(openai_server, tmp_path, monkeypatch):
    import tasks.hallucinate.target as target_backend

    rows = [
        sample("yes-1", "Yes", answer_type="closed", question="Is there a pleural effusion?"),
        sample("yes-2", "Yes", answer_type="closed", question="Is the heart enlarged?"),
        sample("ct", "MRI", answer_type="closed", question="Is this a CT or an MRI?"),
        sample("open", "Left Lung", question="Where is the nodule?"),
    ]
    sampled = {
        "Is there a pleural effusion?": ["No, there is no pleural effusion in this image.", "Yes, a small one."],
        "Is the heart enlarged?": ["The heart is of normal size on this radiograph."],  # never says yes or no
        "Is this a CT or an MRI?": ["This is a CT image of the abdomen.", "It is an MRI."],
        "Where is the nodule?": ["The nodule is located in the upper lobe of the right lung, near the hilum."],
    }
    monkeypatch.setattr(
        target_backend, "sample_target", lambda samples, config: [sampled[s["question"]] for s in samples]
    )
    seen = []

    def responder(request):
        if "Answers the model gave" in request.prompt_text:
            seen.append(request.prompt_text)
            return json.dumps({"choice": 1, "error_type": "other"})
        return injector(request)

    openai_server.set_responder(responder)
    # The default 0.5-2x length guard: the sentences themselves would never pass it for a one-word answer.
    config = llm_config(openai_server, tmp_path, backend="target", target=TargetSamplingConfig(model_path=tmp_path))
    store = ArtifactStore(tmp_path / "store")
    manifest = hallucinate(store, config, ingest_manifest(store, rows))
    out = read_rows(manifest)
    assert (out["yes-1"]["rejected"], out["yes-1"]["origin"]) == ("No", "target_model")
    assert out["yes-1"]["candidates"] == sampled["Is there a pleural effusion?"]  # the raw samples are kept
    assert (out["ct"]["rejected"], out["ct"]["origin"]) == ("CT", "target_model")
    assert (out["yes-2"]["rejected"], out["yes-2"]["origin"]) == ("No", "llm_rewrite")  # nothing usable: rewritten
    assert (out["open"]["rejected"], out["open"]["origin"]) == ("Right Lung", "llm_rewrite")  # sentence too long
    assert any("1. No" in text for text in seen) and any("1. CT" in text for text in seen)
    counts = manifest.counts
    assert counts["rejections[test].ok"] == 4
    assert counts["rejections[test].ok.target_model"] == 2 and counts["rejections[test].ok.llm_rewrite"] == 2
    assert counts["rejections[test].share.target_model"] == pytest.approx(0.5)

    from tasks.hallucinate import counted_origins, origin_rows

    table = origin_rows(catalog.rows(manifest, catalog.HALLUCINATIONS), {r["sample_id"]: "test" for r in rows})
    # The UI's table, read back from the counters, is the same table.
    assert counted_origins(manifest.counts) == table
    assert table == [
        {
            "dataset": "test",
            "rejections": 4,
            "target_model": 2,
            "llm_rewrite": 2,
            "rules": 0,
            "target model %": 50.0,
        }
    ]


def test_an_unknown_backend_is_a_config_error_not_a_fall_through(tmp_path):
    from tasks.config import ConfigError
    from tasks.hallucinate import backend_rows

    with pytest.raises(ConfigError, match="unknown backend 'nope'"):
        backend_rows("nope", [{"sample_id": "s"}], HallucinateConfig(), str(tmp_path), lambda index, row: None)
