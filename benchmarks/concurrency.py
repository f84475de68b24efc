#!/usr/bin/env python
"""Several clients at once against `rag serve`: (a) the embedded default (model in-process) and (b) `rag serve` with
the model on a llama.cpp server (`python -m llama_cpp.server`), optionally (c) with the index on a Chroma server too.

    python benchmarks/concurrency.py [--clients 4] [--questions 24] [--out benchmarks/results/concurrency.json]

Every server is started here on a free 127.0.0.1 port and stopped afterwards. Each client asks its share of the
dev questions through /ask (gradio_client). Reported per setup: questions per minute (wall clock, all clients),
and time to first token as a client sees it: request latency minus the part of the answer after the first token
(queueing, retrieval and prompt evaluation are included). A script, not a timed test.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from rag.eval import DEFAULT_QA_PATH, load_qa, percentile  # noqa: E402
from rag.llm import default_model_path  # noqa: E402


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_port(port: int, proc: subprocess.Popen, what: str, timeout: float = 240) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"{what} exited at start")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1):
                return
        except OSError:
            time.sleep(0.5)
    raise SystemExit(f"{what} did not start on port {port}")


def start(args: list[str], env: dict[str, str], log: Path, port: int, what: str) -> subprocess.Popen:
    proc = subprocess.Popen(args, env=env, stdout=log.open("w"), stderr=subprocess.STDOUT, cwd=ROOT)
    wait_port(port, proc, what)
    return proc


def stop(*procs: subprocess.Popen) -> None:
    for proc in procs:
        proc.terminate()
    for proc in procs:
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()


def run_clients(url: str, questions: list[str], clients: int) -> dict[str, Any]:
    from gradio_client import Client

    Client(url, verbose=False).predict(questions[0], [], None, api_name="/ask")  # warm: model, vectors, KV cache
    shares = [questions[i::clients] for i in range(clients)]
    ttfts: list[float] = []
    latencies: list[float] = []
    errors: list[str] = []

    def client(share: list[str]) -> None:
        c = Client(url, verbose=False)
        for question in share:
            started = time.perf_counter()
            try:
                answer = c.predict(question, [], None, api_name="/ask")
            except Exception as e:  # noqa: BLE001 - counted and reported
                errors.append(repr(e)[:200])
                continue
            latency = time.perf_counter() - started
            t = answer["timings"]
            after_first = (t["total_s"] - t["first_token_s"]) if t.get("first_token_s") is not None else 0.0
            latencies.append(latency)
            ttfts.append(latency - after_first)

    started = time.perf_counter()
    with ThreadPoolExecutor(clients) as pool:
        list(pool.map(client, shares))
    wall = time.perf_counter() - started
    return {
        "clients": clients,
        "questions": len(questions),
        "answered": len(latencies),
        "errors": errors,
        "wall_s": round(wall, 2),
        "questions_per_minute": round(60 * len(latencies) / wall, 1),
        "ttft_p50_s": round(percentile(ttfts, 50), 3) if ttfts else None,
        "ttft_p95_s": round(percentile(ttfts, 95), 3) if ttfts else None,
        "latency_p50_s": round(statistics.median(latencies), 3) if latencies else None,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--clients", type=int, default=4)
    parser.add_argument("--questions", type=int, default=24)
    parser.add_argument("--with-chroma-server", action="store_true", help="also run setup (c): index on a Chroma server")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "concurrency.json")
    opts = parser.parse_args()

    questions = [item.question for item in load_qa(DEFAULT_QA_PATH) if item.answerable][: opts.questions]
    work = Path(tempfile.mkdtemp(prefix="rag-concurrency-"))
    python = sys.executable
    base_env = {**os.environ, "RAG_DATA_DIR": str(work / "data"), "ANONYMIZED_TELEMETRY": "False"}
    for var in ("RAG_LLM__URL", "RAG_STORE__URL"):
        base_env.pop(var, None)
    subprocess.run([python, "-m", "rag", "ingest"], env=base_env, check=True, cwd=ROOT, capture_output=True)

    results: dict[str, Any] = {}
    try:
        port = free_port()
        serve = start([python, "-m", "rag", "serve", "--port", str(port)], base_env, work / "a.log", port, "rag serve")
        try:
            results["a_embedded"] = run_clients(f"http://127.0.0.1:{port}/", questions, opts.clients)
        finally:
            stop(serve)
        print("a", results["a_embedded"], flush=True)

        llm_port = free_port()
        llm = start([python, "-m", "llama_cpp.server", "--model", str(default_model_path()), "--host", "127.0.0.1",
                     "--port", str(llm_port), "--n_ctx", "2048", "--n_threads", str(os.cpu_count() or 2),
                     "--interrupt_requests", "False"],
                    base_env, work / "llm.log", llm_port, "llama_cpp.server")
        servers = [llm]
        try:
            env = {**base_env, "RAG_LLM__URL": f"http://127.0.0.1:{llm_port}/v1"}
            port = free_port()
            serve = start([python, "-m", "rag", "serve", "--port", str(port)], env, work / "b.log", port, "rag serve")
            try:
                results["b_llama_cpp_server"] = run_clients(f"http://127.0.0.1:{port}/", questions, opts.clients)
            finally:
                stop(serve)
            print("b", results["b_llama_cpp_server"], flush=True)
            if opts.with_chroma_server:
                chroma_port = free_port()
                chroma = start([str(Path(python).with_name("chroma")), "run", "--path", str(work / "chroma-server"),
                                "--host", "127.0.0.1", "--port", str(chroma_port)], base_env, work / "chroma.log",
                               chroma_port, "chroma run")
                servers.append(chroma)
                env = {**env, "RAG_STORE__URL": f"http://127.0.0.1:{chroma_port}"}
                subprocess.run([python, "-m", "rag", "ingest"], env=env, check=True, cwd=ROOT, capture_output=True)
                port = free_port()
                serve = start([python, "-m", "rag", "serve", "--port", str(port)], env, work / "c.log", port, "rag serve")
                try:
                    results["c_both_servers"] = run_clients(f"http://127.0.0.1:{port}/", questions, opts.clients)
                finally:
                    stop(serve)
                print("c", results["c_both_servers"], flush=True)
        finally:
            stop(*servers)
    finally:
        shutil.rmtree(work, ignore_errors=True)

    report = {
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "machine": {"cpu": platform.processor() or platform.machine(), "cores": os.cpu_count(),
                    "load_average_before": os.getloadavg()},
        "results": results,
    }
    opts.out.parent.mkdir(parents=True, exist_ok=True)
    opts.out.write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
