"""The index on a real Chroma server (`chroma run`, started here on a free loopback port and stopped after):
ingest -> search -> ask -> re-ingest, seen by a process that is already running; clear errors when it is not there."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from rag.config import PROJECT_ROOT, Settings, StoreSettings

CORPUS = PROJECT_ROOT / "corpus"
EXAONE = "Which sizes are the EXAONE 3.5 models offered in?"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class ChromaServer:
    """`chroma run` on 127.0.0.1 and a free port, its data in a folder of the test's."""

    def __init__(self, path: Path):
        self.path = path
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        chroma = shutil.which("chroma", path=str(Path(sys.executable).parent)) or "chroma"
        env = {**os.environ, "ANONYMIZED_TELEMETRY": "False"}
        self.proc = subprocess.Popen(
            [chroma, "run", "--path", str(path), "--host", "127.0.0.1", "--port", str(self.port)],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env,
        )
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=1):
                    return
            except OSError:
                if self.proc.poll() is not None:
                    raise AssertionError("chroma run exited at start")
                time.sleep(0.3)
        raise AssertionError("chroma run did not start")

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


@pytest.fixture(scope="module")
def chroma(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ChromaServer]:
    server = ChromaServer(tmp_path_factory.mktemp("chroma-server"))
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("corpus")
    for f in CORPUS.iterdir():
        (folder / f.name).write_bytes(f.read_bytes())
    return folder


def rag(args: list[str], env: dict[str, str], timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "rag", *args], env=env, capture_output=True, text=True, timeout=timeout)


@pytest.fixture(scope="module")
def env(chroma: ChromaServer, corpus: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    e = dict(os.environ)
    e["RAG_STORE__URL"] = chroma.url
    e["RAG_DATA_DIR"] = str(tmp_path_factory.mktemp("client-data"))  # only the sentence-vector cache lives here
    e["RAG_CORPUS_PATHS"] = json.dumps([str(corpus)])
    ingest = rag(["ingest", "--json"], e)
    assert ingest.returncode == 0, ingest.stderr
    assert json.loads(ingest.stdout)["papers"] == 150
    return e


def test_ingest_search_and_status_use_the_server(env, chroma: ChromaServer):
    status = json.loads(rag(["status", "--json"], env).stdout)
    assert status["papers"] == 150 and status["location"] == f"Chroma server {chroma.url}"
    assert not (Path(env["RAG_DATA_DIR"]) / "chroma").exists()  # nothing embedded on this side
    search = rag(["search", "Korean expert-level benchmark", "--json"], env)
    assert search.returncode == 0, search.stderr
    assert json.loads(search.stdout)[0]["source"]
    again = rag(["ingest", "--json"], env)  # incremental: nothing to embed
    assert again.returncode == 0 and json.loads(again.stdout)["chunks_added"] == 0


@pytest.mark.llm
def test_ask_answers_from_the_served_index(env):
    from checks import assert_citations_verbatim

    result = rag(["ask", EXAONE, "--json"], env)
    assert result.returncode == 0, result.stderr
    answer = json.loads(result.stdout)
    assert not answer["abstained"] and answer["citations"]
    assert_citations_verbatim(answer, CORPUS)


def test_a_running_process_sees_a_re_ingest_by_another(env, corpus: Path, embedder):
    from rag.retrieval import Retriever

    settings = Settings(data_dir=Path(env["RAG_DATA_DIR"]), store=StoreSettings(url=env["RAG_STORE__URL"]))
    retriever = Retriever(settings, embedder=embedder)
    before = retriever.fingerprint()
    assert retriever.search("marsupial literature", k=1)[0].title != "Quokka-LM"
    (corpus / "zz_new.jsonl").write_text(json.dumps({
        "title": "Quokka-LM", "abstract": "Quokka-LM is a 7B model trained on marsupial literature and zoology texts."
    }) + "\n")
    try:
        added = rag(["ingest", "--json"], env)
        assert added.returncode == 0, added.stderr
        assert json.loads(added.stdout)["chunks_added"] == 1
        assert retriever.search("marsupial literature", k=1)[0].title == "Quokka-LM"
        assert retriever.fingerprint() != before
        rebuilt = rag(["ingest", "--rebuild", "--json"], env)  # a rebuild on the server swaps in a new collection
        assert rebuilt.returncode == 0, rebuilt.stderr
        assert retriever.search("marsupial literature", k=1)[0].title == "Quokka-LM"
    finally:
        (corpus / "zz_new.jsonl").unlink()
        assert rag(["ingest"], env).returncode == 0


def one_line_error(result: subprocess.CompletedProcess) -> str:
    assert result.returncode != 0
    assert "Traceback" not in result.stderr, result.stderr
    lines = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(lines) == 1, result.stderr
    return lines[0]


def test_no_server_or_a_wrong_one_is_one_clear_error(env, tmp_path: Path):
    unreachable = {**env, "RAG_STORE__URL": f"http://127.0.0.1:{free_port()}"}
    line = one_line_error(rag(["status"], unreachable))
    assert "cannot reach the Chroma server at http://127.0.0.1:" in line and "chroma run" in line
    line = one_line_error(rag(["search", "anything"], unreachable))
    assert "cannot reach the Chroma server" in line
    (tmp_path / "index.html").write_text("<!DOCTYPE html><p>not chroma</p>")
    web = subprocess.Popen([sys.executable, "-m", "http.server", "0", "--bind", "127.0.0.1", "-d", str(tmp_path)],
                           stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        port = None
        deadline = time.monotonic() + 20
        while port is None and time.monotonic() < deadline:
            line = web.stdout.readline()
            if "port" in line:
                port = int(line.split("port")[1].split()[0])
        assert port
        wrong = {**env, "RAG_STORE__URL": f"http://127.0.0.1:{port}"}
        line = one_line_error(rag(["status"], wrong))
        assert f"http://127.0.0.1:{port} does not answer as a Chroma server" in line
    finally:
        web.kill()
        web.wait()
    bad = {**env, "RAG_STORE__URL": "ftp://somewhere"}
    assert "not an http(s)://HOST:PORT address" in one_line_error(rag(["status"], bad))


def test_a_server_that_goes_away_is_one_clear_error(env, tmp_path_factory: pytest.TempPathFactory, corpus: Path):
    server = ChromaServer(tmp_path_factory.mktemp("doomed"))
    doomed = {**env, "RAG_STORE__URL": server.url}
    try:
        assert rag(["ingest", str(PROJECT_ROOT / "tests" / "data" / "sample.jsonl")], doomed).returncode == 0
        assert rag(["search", "decoding"], doomed).returncode == 0
    finally:
        server.stop()
    line = one_line_error(rag(["search", "decoding"], doomed))
    assert server.url in line
