"""The command line as a user runs it: real index, real model, real processes (kill -9 included)."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from click.testing import CliRunner

from checks import assert_citations_verbatim
from rag.cli import cli
from rag.config import PROJECT_ROOT, Settings

CORPUS = PROJECT_ROOT / "corpus"
EXAONE_Q = "In which sizes are the EXAONE 3.5 language models offered?"
EXAONE_SOURCE = ("000_984080258767f917.txt", 1)


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


def printed_citations(stdout: str) -> list[dict]:
    """The citations `rag ask` prints under "Sources:": '  [n] title — source:line' then '      "quote"'."""
    lines = stdout.splitlines()
    out = []
    for i, line in enumerate(lines):
        head = re.match(r"^  \[(\d+)\] .* — (\S+):(\d+)$", line)
        if head:
            quote = re.match(r'^      "(.*)"$', lines[i + 1])
            assert quote, f"no quoted line under {line!r}"
            out.append({"n": int(head[1]), "source": head[2], "line": int(head[3]), "quote": quote[1]})
    return out


@pytest.mark.llm
def test_ask_streams_then_lists_sources(env):
    out = _rag(["ask", EXAONE_Q], env)
    assert out.returncode == 0, out.stderr
    assert "Nearest passages (not enough to answer)" not in out.stdout, out.stdout
    assert "\nSources:\n" in out.stdout and "[1]" in out.stdout
    citations = printed_citations(out.stdout)
    assert EXAONE_SOURCE in [(c["source"], c["line"]) for c in citations], out.stdout
    assert_citations_verbatim({"citations": citations}, CORPUS)


@pytest.mark.llm
def test_ask_json_is_a_cited_answer(env):
    out = _rag(["ask", EXAONE_Q, "--json"], env)
    assert out.returncode == 0, out.stderr
    answer = json.loads(out.stdout)
    assert not answer["abstained"] and answer["citations"], answer["answer"]
    assert EXAONE_SOURCE in [(c["source"], c["line"]) for c in answer["citations"]]
    assert_citations_verbatim(answer, CORPUS)


@pytest.mark.llm
def test_ask_off_topic_abstains(env):
    out = _rag(["ask", "What oven temperature and proofing time work best for baking sourdough bread?", "--json"], env)
    assert out.returncode == 0, out.stderr
    answer = json.loads(out.stdout)
    assert answer["abstained"] and not answer["citations"] and answer["passages"]


@pytest.mark.llm
def test_batch_survives_kill_9_and_resumes(env, tmp_path: Path):
    questions = [
        EXAONE_Q,
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
        assert_citations_verbatim(r, CORPUS)
    exaone = by_id["q0"]
    assert not exaone["abstained"]
    assert EXAONE_SOURCE in [(c["source"], c["line"]) for c in exaone["citations"]]


@pytest.mark.llm
def test_serve_stops_cleanly_on_ctrl_c_while_it_warms_up(tmp_path: Path, ingested_settings: Settings):
    """`rag serve` on a data dir with no saved sentence vectors is stopped with Ctrl-C as soon as it listens, while
    it is still embedding the corpus sentences in the background. It must exit 0 (or 130), not crash. Twice, as the
    crash depends on timing."""
    for attempt in range(2):
        data = tmp_path / f"data{attempt}"
        shutil.copytree(ingested_settings.data_dir, data, ignore=shutil.ignore_patterns("sentence_vectors*", "*.lock"))
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        err_path = tmp_path / f"serve{attempt}.err"
        with open(err_path, "w") as err:
            proc = subprocess.Popen([sys.executable, "-m", "rag", "serve", "--port", str(port)],
                                    env={**os.environ, "RAG_DATA_DIR": str(data)}, stdout=subprocess.DEVNULL, stderr=err)
        try:
            deadline = time.monotonic() + 180
            while time.monotonic() < deadline and proc.poll() is None:
                with socket.socket() as s:
                    if s.connect_ex(("127.0.0.1", port)) == 0:
                        break
                time.sleep(0.2)
            assert proc.poll() is None, err_path.read_text()
            proc.send_signal(signal.SIGINT)
            code = proc.wait(60)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
        assert code in (0, 130), f"attempt {attempt + 1}: exit {code}:\n{err_path.read_text()[-2000:]}"
