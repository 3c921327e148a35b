"""The yes/no protocol: scores from the probabilities of the score tokens (G-Eval), in-process
from the logits, from an endpoint's logprobs, or from parsed replies; what each verdict keeps."""

from __future__ import annotations

import asyncio
import math

import pytest

from models import panel as panels
from models import resident, token_judges
from models.judges import JudgeFailure, JudgeItem
from models.token_judges import LogitScorer, example_orders, examples, from_mass, held_scorer, messages
from tasks.config import EndpointConfig, JudgeConfig
from tests.support.openai_server import Reply
from tests.support.tiny_lm import build_tiny_lm

ITEM = JudgeItem("s1", "Is there a mass?", "yes", "no", error_type="yes_no_flip", answer_type="closed")


def judge_once(configs, item=ITEM, **debate):
    async def work():
        async with panels.open_panel(configs, "v1", None) as panel:
            if debate:
                return await panels.debate(panel, item, **debate)
            return [await judge.judge(item, None) for judge in panel]

    return asyncio.run(work())


@pytest.fixture(scope="module")
def tiny_lm(tmp_path_factory):
    return build_tiny_lm(tmp_path_factory.mktemp("tiny-lm"))


def expected_p_yes(folder, orders: int) -> float:
    """P(yes) / (P(yes) + P(no)) from a plain full forward pass per example order, averaged."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(folder)
    model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()
    yes, no = tokenizer.convert_tokens_to_ids("yes"), tokenizer.convert_tokens_to_ids("no")
    found = []
    for shots in example_orders(examples("v1"), orders):
        text = tokenizer.apply_chat_template(messages("v1", shots, ITEM), tokenize=False, add_generation_prompt=True)
        ids = tokenizer(text, return_tensors="pt", add_special_tokens=False)["input_ids"]
        with torch.no_grad():
            probs = torch.softmax(model(input_ids=ids).logits[0, -1], -1)
        found.append(float(probs[yes] / (probs[yes] + probs[no])))
    return sum(found) / len(found)


def test_in_process_judge_reads_the_logits_with_a_cached_prefix(tiny_lm):
    config = JudgeConfig(name="local", kind="transformers", model_path=tiny_lm, orders=3)
    assert config.resolved_protocol == "yesno"
    (verdict,) = judge_once([config])
    assert verdict.score == pytest.approx(expected_p_yes(tiny_lm, 3), abs=1e-5)
    assert verdict.source == "logits" and 0 < verdict.mass <= 1
    (yes, p_yes), (no, p_no) = verdict.distribution
    assert (yes, no) == (1.0, 0.0) and p_yes + p_no == pytest.approx(1.0) and p_yes == pytest.approx(verdict.score)
    assert "over 3 example orders" in verdict.reason


def test_the_in_process_yesno_judge_is_loaded_once_per_process_on_its_device(tiny_lm):
    import torch

    resident.release()
    config = JudgeConfig(name="local", kind="transformers", model_path=tiny_lm)
    assert (config.device, config.dtype) == ("auto", "auto")
    first, second = judge_once([config]), judge_once([config])  # two panels, as two shards open them
    assert first == second
    (scorer,) = [held.value for held in resident._HELD.values() if isinstance(held.value, LogitScorer)]
    assert held_scorer(tiny_lm, "auto", "auto", "local") is scorer  # shared, not loaded again
    # auto on a machine without a GPU: the CPU, in fp32.
    assert scorer.device == torch.device("cpu") and scorer.model.dtype == torch.float32
    assert held_scorer(tiny_lm, "cpu", "bfloat16", "local").model.dtype == torch.bfloat16
    assert resident.release() == 2


def test_a_yesno_judge_asks_for_the_gpu_in_bf16_under_auto_where_one_is_usable(tiny_lm, monkeypatch):
    import torch

    from models import precision

    resident.release()
    loads = []
    monkeypatch.setattr(precision, "gpu_usable", lambda: True)
    monkeypatch.setattr(token_judges, "LogitScorer", lambda folder, device, dtype: loads.append((device, dtype)))
    held_scorer(tiny_lm, "auto", "auto", "local")
    held_scorer(tiny_lm, "auto", "float32", "local")
    assert loads == [(torch.device("cuda"), torch.bfloat16), (torch.device("cuda"), torch.float32)]
    resident.release()


def test_the_judges_dtype_rule():
    import torch

    from models.precision import dtype_for

    cuda, cpu = torch.device("cuda"), torch.device("cpu")
    assert (dtype_for(cuda, "auto"), dtype_for(cpu, "auto")) == (torch.bfloat16, torch.float32)
    assert (dtype_for(cuda, "float32"), dtype_for(cpu, "bfloat16")) == (torch.float32, torch.bfloat16)


def test_a_yesno_judge_on_cuda_is_refused_at_config_load_without_a_gpu(tiny_lm, monkeypatch):
    from models import precision

    monkeypatch.setattr(precision, "gpu_usable", lambda: False)
    with pytest.raises(ValueError, match="(?s)device.*no usable GPU"):
        JudgeConfig(name="local", kind="transformers", model_path=tiny_lm, protocol="yesno", device="cuda")


def test_examples_in_several_orders_start_with_the_files():
    shots = examples("v1")
    orders = example_orders(shots, 3)
    assert orders[0] == shots and all(sorted(o) == sorted(shots) for o in orders) and orders[1] != shots
    assert {label for *_, label in shots} == {"yes", "no"}
    turns = messages("v1", shots, ITEM)
    assert [t["content"] for t in turns[2:-1:2]] == [label for *_, label in shots]
    assert turns[-1]["content"] == "Question: Is there a mass?\nCorrect answer: yes\nModel answer: no"


def test_a_tokenizer_without_the_score_words_cannot_judge(tmp_path):
    from tokenizers import Tokenizer, models
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    backend = Tokenizer(models.WordLevel({"[UNK]": 0, "mass": 1}, unk_token="[UNK]"))
    PreTrainedTokenizerFast(tokenizer_object=backend, unk_token="[UNK]").save_pretrained(tmp_path)
    tiny = LlamaConfig(vocab_size=2, hidden_size=8, intermediate_size=8, num_hidden_layers=1, num_attention_heads=1)
    LlamaForCausalLM(tiny).save_pretrained(tmp_path)
    with pytest.raises(JudgeFailure, match="no_score_tokens"):
        judge_once([JudgeConfig(name="local", kind="transformers", model_path=tmp_path)])


def test_non_finite_probabilities_are_a_failed_verdict_not_a_nan_score():
    with pytest.raises(JudgeFailure, match="non_finite_scores"):
        from_mass({1.0: math.nan, 0.0: 0.2}, "logits", None)
    assert from_mass({1.0: 0.3, 0.0: 0.1}, "logits", None).score == pytest.approx(0.75)


def endpoint_judge(server, **fields):
    capabilities = fields.pop("capabilities", {})
    endpoint = EndpointConfig(
        base_url=server.base_url, model="judge", backoff_s=0, max_retries=0, capabilities=capabilities
    )
    return JudgeConfig(name="served", kind="endpoint", endpoint=endpoint, **fields)


def test_endpoint_logprobs_give_the_probability_weighted_score(openai_server):
    tops = [[("yes", math.log(0.6)), (" No", math.log(0.2)), ("maybe", math.log(0.1)), ("Yes", math.log(0.1))]]
    openai_server.set_responder(lambda request: Reply("yes", top_logprobs=tops))
    (verdict,) = judge_once([endpoint_judge(openai_server, capabilities={"logprobs": True})])
    assert verdict.score == pytest.approx(0.7 / 0.9) and verdict.source == "logprobs"
    assert verdict.mass == pytest.approx(0.9) and dict(verdict.distribution)[0.0] == pytest.approx(0.2 / 0.9)
    (request,) = openai_server.requests
    assert (request.body["logprobs"], request.body["top_logprobs"], request.body["max_tokens"]) == (True, 20, 3)
    assert "response_format" not in request.body and "JSON" not in request.prompt_text


def test_an_endpoint_without_logprobs_is_parsed_greedy_or_sampled(openai_server):
    replies = iter(["Yes, it is.", "no", "yes", "No.", "hmm"])
    openai_server.set_responder(lambda request: next(replies))
    (greedy,) = judge_once([endpoint_judge(openai_server)])
    assert (greedy.score, greedy.source, greedy.distribution, greedy.mass) == (1.0, "parsed", ((1.0, 1.0),), None)
    assert "logprobs" not in openai_server.requests[0].body

    sampled = endpoint_judge(openai_server, samples=4, temperature=1.0)
    (verdict,) = judge_once([sampled])
    assert verdict.score == pytest.approx(1 / 3) and verdict.source == "samples"  # "hmm" says neither
    assert [r.body["seed"] for r in openai_server.requests[1:]] == [1, 2, 3, 4]
    with pytest.raises(ValueError, match="temperature > 0"):
        JudgeConfig(name="x", kind="endpoint", endpoint=EndpointConfig(), samples=3)


def test_junk_is_asked_again_sampled_then_excluded(openai_server):
    openai_server.set_responder(lambda request: "I cannot tell")
    outcome = judge_once([endpoint_judge(openai_server, parse_retries=2), JudgeConfig()], max_rounds=5)
    assert [(t.judge, t.error) for t in outcome.turns] == [("served", "junk_reply"), ("rules", None)]
    assert [(r.body["temperature"], r.body.get("seed")) for r in openai_server.requests] == [
        (0.0, None),
        (0.7, 1),
        (0.7, 2),
    ]


def test_debate_of_stateless_judges_adopts_within_tolerance(openai_server, tiny_lm):
    openai_server.set_responder(lambda request: "yes")
    local = JudgeConfig(name="local", kind="transformers", model_path=tiny_lm)
    p_local = expected_p_yes(tiny_lm, 1)
    agree = judge_once([local, endpoint_judge(openai_server)], max_rounds=5, tolerance=1.0)
    assert (agree.reason, agree.score) == ("adopted", pytest.approx(p_local, abs=1e-5))
    assert [t.source for t in agree.turns] == ["logits", "parsed"] and agree.turns[1].distribution == ((1.0, 1.0),)
    apart = judge_once([local, endpoint_judge(openai_server)], max_rounds=5, tolerance=0.0)
    assert apart.reason == "no_agreement_mean" and apart.score == pytest.approx((3 * p_local + 2) / 5, abs=1e-5)
    assert len(openai_server.requests) == 1 + 1  # one request per debate: the endpoint judge's re-scores are memoized
