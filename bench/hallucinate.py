"""Benchmark of the hallucination stage's offline and LLM backends.

1. ``rules`` over the 3,955 real Indiana University chest X-ray reports shipped in
   torchxrayvision (findings + impression): the share of reports that received a valid
   perturbation, by error type, why the others did not, and reports/s.
2. ``llm`` against the local OpenAI-compatible test server with 200 ms latency per request
   at concurrency 16: throughput as a share of the ideal 16 / 0.2 s = 80 requests/s.
3. ``llm`` against the real thing: SmolLM2-135M-Instruct behind ``transformers serve`` (served
   for the run, 1 thread, CPU) on the demo's 23 train questions, few-shot protocol, 3
   attempts: requests/s and the share of samples with a usable rejection, beside row 2.

Run: python bench/hallucinate.py [--llm-samples 400] [--no-served]
"""

from __future__ import annotations

import argparse
import collections
import re
import sys
import tarfile
import tempfile
import time
import xml.etree.ElementTree as ET
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from models import serve  # noqa: E402
from tasks.config import EndpointConfig, HallucinateConfig  # noqa: E402
from tasks.hallucinate.llm import llm_rows  # noqa: E402
from tasks.hallucinate.rules import rules_row  # noqa: E402
from tests.support.openai_server import OpenAIServer  # noqa: E402


def iu_reports() -> list[tuple[str, str]]:
    import torchxrayvision

    archive = Path(torchxrayvision.__file__).parent / "data" / "NLMCXR_reports.tgz"
    reports = []
    with tarfile.open(archive) as tar:
        for member in tar:
            if not member.isfile() or not member.name.endswith(".xml"):
                continue
            root = ET.parse(tar.extractfile(member)).getroot()
            sections = {a.get("Label"): (a.text or "").strip() for a in root.iter("AbstractText")}
            text = " ".join(t for t in (sections.get("FINDINGS", ""), sections.get("IMPRESSION", "")) if t)
            reports.append((Path(member.name).stem, text))
    return reports


def sample(sample_id: str, answer: str, task: str = "report") -> dict:
    return {
        "sample_id": sample_id,
        "task": task,
        "answer": answer,
        "answer_type": "report" if task == "report" else "open",
        "question": "Describe the findings of this chest X-ray.",
        "image_path": "",
        "split": "train",
    }


def bench_rules() -> None:
    reports = iu_reports()
    config = HallucinateConfig()
    started = time.perf_counter()
    rows = [rules_row(sample(f"iu:{rid}", text), config) for rid, text in reports]
    seconds = time.perf_counter() - started
    outcome = collections.Counter(r["status"] if r["status"] == "ok" else f"{r['status']}: {r['reason']}" for r in rows)
    types = collections.Counter(r["error_type"] for r in rows if r["status"] == "ok")
    ok = outcome["ok"]
    print(f"## rules backend on {len(reports)} IU-Xray reports (torchxrayvision NLMCXR_reports.tgz)\n")
    print(
        f"perturbed: {ok} / {len(reports)} = {100 * ok / len(reports):.1f}%  |  {len(reports) / seconds:,.0f} "
        "reports/s "
        f"({seconds:.2f} s, one process)\n"
    )
    print("| outcome | reports | share |\n|---|---:|---:|")
    for name, n in outcome.most_common():
        print(f"| {name} | {n} | {100 * n / len(reports):.1f}% |")
    print("\n| error type (of perturbed) | reports | share |\n|---|---:|---:|")
    for name, n in types.most_common():
        print(f"| {name} | {n} | {100 * n / ok:.1f}% |")
    lengths = [len(r["rejected"]) / max(len(t), 1) for r, (_, t) in zip(rows, reports) if r["status"] == "ok"]
    print(
        f"\nrejected/ground-truth length ratio: mean {sum(lengths) / len(lengths):.2f}, "
        f"min {min(lengths):.2f}, max {max(lengths):.2f}\n"
    )


def bench_llm(n: int, concurrency: int = 16, latency_s: float = 0.2) -> dict:
    def responder(request):
        answer = re.search(r"Correct answer: (.*)", request.messages[-1]["content"]).group(1).strip()
        return answer.replace("left", "right")  # the few-shot protocol: the bare wrong answer

    samples = [sample(f"s{i}", f"Small left pleural effusion, case {i}.") for i in range(n)]
    with OpenAIServer(responder, latency_s=latency_s) as server, tempfile.TemporaryDirectory() as cache:
        endpoint = EndpointConfig(base_url=server.base_url, model="bench", max_concurrency=concurrency, max_retries=0)
        config = HallucinateConfig(backend="llm", llm=endpoint)
        started = time.perf_counter()
        rows, counts = llm_rows(samples, config, Path(cache))
        seconds = time.perf_counter() - started
        ok = sum(r["status"] == "ok" for r in rows)
        rate = counts["requests"] / seconds
        ideal = concurrency / latency_s
        print(
            f"## llm backend against the local test server ({latency_s * 1000:.0f} ms latency, concurrency "
            f"{concurrency})\n"
        )
        print("| samples | ok | requests | peak in flight (server) | seconds | requests/s | ideal | share of ideal |")
        print("|---:|---:|---:|---:|---:|---:|---:|---:|")
        print(
            f"| {n} | {ok} | {counts['requests']} | {server.max_concurrent} | {seconds:.2f} | {rate:.1f} | "
            f"{ideal:.0f} | "
            f"{100 * rate / ideal:.0f}% |"
        )
        failures = collections.Counter(r["reason"] for r in rows if r["status"] != "ok")
        if failures:
            print(f"\nfailures: {dict(failures)}")
        started = time.perf_counter()
        _, again = llm_rows(samples, config, Path(cache))
        print(
            f"\nre-run with the same cache: {again['cache_hits']} cache hits, {again['requests']} requests, "
            f"{time.perf_counter() - started:.2f} s\n"
        )
    return {
        "endpoint": f"local test server ({latency_s * 1000:.0f} ms a request, scripted answers)",
        "samples": n,
        "ok": ok,
        "requests": counts["requests"],
        "seconds": seconds,
        "startup": None,
    }


def bench_served(concurrency: int = 4) -> dict:
    """The demo's train questions through SmolLM2-135M-Instruct behind transformers serve."""
    from flows.cli import SMOLLM2
    from tasks.demo_data import QUESTIONS
    from tasks.smollm2 import ensure

    root = Path(__file__).resolve().parents[1]
    model = root / SMOLLM2
    ensure(model)
    samples = [
        {**sample(f"demo:{sid}", answer, task), "question": question, "answer_type": kind}
        for sid, _, task, question, answer, kind, _, split in QUESTIONS
        if split == "train"
    ]
    endpoint = EndpointConfig(serve=model, max_concurrency=concurrency, timeout_s=180, max_retries=0)
    config = HallucinateConfig(backend="llm", llm=endpoint)
    with serve.serving() as pool, tempfile.TemporaryDirectory() as cache:
        started = time.perf_counter()
        pool.served(endpoint.serve)
        startup = time.perf_counter() - started
        started = time.perf_counter()
        rows, counts = llm_rows(samples, config, Path(cache))
        seconds = time.perf_counter() - started
    ok = [r for r in rows if r["status"] == "ok"]
    print("## llm backend against SmolLM2-135M-Instruct behind transformers serve (CPU, 1 thread)\n")
    print(f"server up (GET /health) in {startup:.1f} s; {len(samples)} demo train questions, few-shot protocol\n")
    print("| sample | answer | rejected | attempts | status |\n|---|---|---|---:|---|")
    answers = {s["sample_id"]: s["answer"] for s in samples}
    for r in rows:
        shown = r["rejected"] if r["status"] == "ok" else r["reason"]
        print(f"| {r['sample_id']} | {answers[r['sample_id']][:40]} | {shown[:40]} | {r['attempts']} | {r['status']} |")
    print(f"\nfirst attempt usable: {sum(r['attempts'] == 1 for r in ok)} / {len(samples)}\n")
    return {
        "endpoint": "SmolLM2-135M-Instruct, transformers serve (served for the run)",
        "samples": len(samples),
        "ok": len(ok),
        "requests": counts["requests"],
        "seconds": seconds,
        "startup": startup,
    }


def print_endpoints(rows: list[dict]) -> None:
    print("## llm backend: the test server and the real model side by side\n")
    print("| endpoint | samples | ok share | requests | seconds | requests/s | server start |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        start = "-" if r["startup"] is None else f"{r['startup']:.1f} s"
        print(
            f"| {r['endpoint']} | {r['samples']} | {100 * r['ok'] / r['samples']:.0f}% | {r['requests']} | "
            f"{r['seconds']:.1f} | {r['requests'] / r['seconds']:.2f} | {start} |"
        )
    print()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--llm-samples", type=int, default=400)
    parser.add_argument("--no-served", action="store_true", help="skip the real model (about a minute)")
    args = parser.parse_args()
    bench_rules()
    rows = [bench_llm(args.llm_samples)]
    if not args.no_served:
        rows.append(bench_served())
    print_endpoints(rows)


if __name__ == "__main__":
    main()
