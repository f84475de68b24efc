"""The command line as a user runs it: real index, real model, real processes (kill -9 included)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from click.testing import CliRunner

from rag.cli import cli
from rag.config import Settings


@pytest.fixture
def env(ingested_settings: Settings) -> dict[str, str]:
    return {**os.environ, "RAG_DATA_DIR": str(ingested_settings.data_dir)}


def _rag(args: list[str], env: dict[str, str], timeout: int = 300) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "rag", *args], env=env, capture_output=True, text=True, timeout=timeout)


def test_ingest_json_summary_and_warm_noop(tmp_path: Path, corpus_dir: Path):
    small = tmp_path / "corpus"
    small.mkdir()
    (small / "003_ce4bc02b0d96118d.txt").write_bytes((corpus_dir / "003_ce4bc02b0d96118d.txt").read_bytes())
    runner = CliRunner()
    args = ["--data-dir", str(tmp_path / "data"), "ingest", str(small), "--json"]
    first = runner.invoke(cli, args)
    assert first.exit_code == 0, first.output
    summary = json.loads(first.stdout.strip().splitlines()[-1])
    assert {"records", "duplicates", "papers", "chunks_added", "chunks_unchanged", "chunks_removed", "seconds"} <= summary.keys()
    assert summary["papers"] == 10 and summary["chunks_added"] > 0
    second = json.loads(runner.invoke(cli, args).stdout.strip().splitlines()[-1])
    assert second["chunks_added"] == 0 and second["chunks_unchanged"] == summary["chunks_added"]


def test_search_json(env):
    out = _rag(["search", "Korean benchmark with expert-level questions", "--k", "3", "--json"], env)
    assert out.returncode == 0, out.stderr
    passages = json.loads(out.stdout)
    assert [p["rank"] for p in passages] == [1, 2, 3]
    assert {"rank", "score", "paper_id", "title", "source", "line", "text"} <= passages[0].keys()
    assert ("003_ce4bc02b0d96118d.txt", 4) in [(p["source"], p["line"]) for p in passages]


def test_errors_are_one_line_with_an_exit_code(env, tmp_path: Path):
    missing = _rag(["ask", "What is KMMLU?", "--model", str(tmp_path / "nope.gguf")], env)
    assert missing.returncode == 6
    assert missing.stderr.strip().startswith("error:") and "nope.gguf" in missing.stderr
    no_index = _rag(["--data-dir", str(tmp_path / "empty"), "search", "anything"], env)
    assert no_index.returncode == 4 and "rag ingest" in no_index.stderr
    empty = _rag(["ask", "   "], env)
    assert empty.returncode != 0 and "error" in empty.stderr.lower()
    assert "Traceback" not in missing.stderr + no_index.stderr + empty.stderr


@pytest.mark.llm
def test_ask_streams_then_lists_sources(env):
    out = _rag(["ask", "In which sizes are the EXAONE 3.5 language models offered?"], env)
    assert out.returncode == 0, out.stderr
    assert "000_984080258767f917.txt:1" in out.stdout
    assert "[1]" in out.stdout


@pytest.mark.llm
def test_batch_survives_kill_9_and_resumes(env, tmp_path: Path):
    questions = [
        "In which sizes are the EXAONE 3.5 language models offered?",
        "How many questions does the KMMLU benchmark contain?",
        "What is Text4VPR?",
        "What sparsity can sparse finetuning reach for MPT without accuracy loss?",
        "What does Generative Context Distillation internalize?",
    ]
    src = tmp_path / "q.jsonl"
    src.write_text("".join(json.dumps({"id": f"q{i}", "question": q}) + "\n" for i, q in enumerate(questions)) + "{oops\n")
    out = tmp_path / "answers.jsonl"
    proc = subprocess.Popen([sys.executable, "-m", "rag", "batch", str(src), "-o", str(out)], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 240
    while time.time() < deadline and (not out.exists() or out.read_text().count("\n") < 1):
        time.sleep(0.2)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    finished = out.read_text().count("\n")
    assert 1 <= finished < len(questions) + 1, "the kill should land mid-batch"

    rerun = _rag(["batch", str(src), "-o", str(out)], env)
    assert rerun.returncode == 0, rerun.stderr
    records = [json.loads(line) for line in out.read_text().splitlines()]
    ids = [r["id"] for r in records]
    assert sorted(ids) == sorted([f"q{i}" for i in range(len(questions))] + ["6"])  # each once, error line included
    by_id = {r["id"]: r for r in records}
    assert "not valid JSON" in by_id["6"]["error"]
    for r in records:
        if r["error"]:
            continue
        assert r["model"]["sha256"] and r["index"] and r["prompt_version"]
        assert [p["rank"] for p in r["passages"]] == list(range(1, len(r["passages"]) + 1))
        assert {"retrieve_s", "first_token_s", "total_s", "prompt_tokens", "completion_tokens"} <= r["timings"].keys()
        for c in r["citations"]:
            assert {"n", "source", "line", "paper_id", "title", "quote", "score"} <= c.keys()
    exaone = by_id["q0"]
    assert not exaone["abstained"]
    assert ("000_984080258767f917.txt", 1) in [(c["source"], c["line"]) for c in exaone["citations"]]
