"""Bad input and faults, through the real CLI and a real `rag serve`: a clear error, a test, nothing lost.

Each case here was found by a probe of the app as a careless or hostile user would use it (issue 12): every
one failed on the code before it was fixed.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from rag.config import PROJECT_ROOT, Settings
from rag.ingest import REBUILD_SUFFIX
from rag.store import Store

CORPUS = PROJECT_ROOT / "corpus"
EXAONE = "Which sizes are the EXAONE 3.5 models offered in?"
SENTENCE = (
    "We study how retrieval helps small language models answer questions about scientific abstracts with "
    "citations that can be checked against the source text. "
)


def rag(args: list[str], env: dict[str, str], timeout: float = 300, **kw) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "rag", *args], env=env, capture_output=True, text=True, timeout=timeout, **kw
    )


def one_line_error(result: subprocess.CompletedProcess) -> str:
    """The process failed with exactly one 'error: ...' line on stderr and no traceback."""
    assert result.returncode != 0, result.stdout
    assert "Traceback" not in result.stderr, result.stderr
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, result.stderr
    return errors[0]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def env(tmp_path: Path) -> dict[str, str]:
    e = dict(os.environ)
    e["RAG_DATA_DIR"] = str(tmp_path / "data")
    e.pop("PYTHONHASHSEED", None)
    return e


def write_jsonl(path: Path, records: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")
    return path


# ------------------------------------------------------------------------------------------- corpus records


def test_a_huge_abstract_is_refused_with_file_and_line_before_anything_is_written(tmp_path: Path, env):
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    huge = SENTENCE * (5_000_000 // len(SENTENCE))
    write_jsonl(corpus / "big.jsonl", [{"title": "Fine", "abstract": SENTENCE * 3}, {"title": "Huge", "abstract": huge}])
    result = rag(["ingest", str(corpus)], env)
    line = one_line_error(result)
    assert "big.jsonl:2" in line and "limit" in line
    assert not (tmp_path / "data" / "chroma").exists()  # nothing written


def test_a_long_abstract_is_stored_once_not_once_per_chunk(tmp_path: Path, settings, embedder):
    from rag.ingest import ingest
    from rag.retrieval import Retriever
    from rag.store import Store

    abstract = " ".join(f"Sentence number {i} says something about retrieval models and their citations." for i in range(200))
    write_jsonl(tmp_path / "long.jsonl", [{"title": "Long one", "abstract": abstract}, {"title": "Short", "abstract": SENTENCE}])
    summary = ingest(settings, [tmp_path / "long.jsonl"], embedder=embedder)
    assert summary.chunks_added > 10
    got = Store(settings.chroma_dir, settings.collection).collection().get(include=["metadatas", "documents"])
    copies = [m for m in got["metadatas"] if "abstract" in m]
    assert len(copies) == 1 and copies[0]["ordinal"] == 0  # once, on the long paper's first chunk
    stored_text = sum(len(d) for d in got["documents"]) + sum(len(json.dumps(m)) for m in got["metadatas"])
    assert stored_text < 6 * len(abstract)  # documents + embed_text + one copy, not one copy per chunk
    passages = Retriever(settings, embedder=embedder).search("Sentence number 150 retrieval citations", k=2)
    assert {p.text for p in passages} == {abstract, SENTENCE.strip()}  # the whole abstract still comes back


def test_an_index_of_the_old_layout_is_rewritten_without_re_embedding(tmp_path: Path, settings, embedder):
    from rag.ingest import ingest
    from rag.store import META_LAYOUT, Store

    abstract = " ".join(f"Claim {i} concerns dense retrieval of scientific abstracts in many languages." for i in range(60))
    write_jsonl(tmp_path / "c.jsonl", [{"title": "Split", "abstract": abstract}])
    ingest(settings, [tmp_path / "c.jsonl"], embedder=embedder)
    store = Store(settings.chroma_dir, settings.collection)
    got = store.collection().get(include=["metadatas"])
    old = [{**m, "abstract": abstract} for m in got["metadatas"]]  # the old layout: the abstract on every chunk
    store.update_metadatas(got["ids"], old)
    store.update_metadata(**{META_LAYOUT: "old"})
    summary = ingest(settings, [tmp_path / "c.jsonl"], embedder=embedder)
    assert summary.chunks_added == 0 and summary.chunks_updated == len(got["ids"])
    after = Store(settings.chroma_dir, settings.collection).collection().get(include=["metadatas"])
    assert sum("abstract" in m for m in after["metadatas"]) == 1


def test_a_file_of_nul_bytes_is_refused_with_file_and_line(tmp_path: Path, env):
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    (corpus / "nul.txt").write_bytes(b"\x00" * 4096)
    line = one_line_error(rag(["ingest", str(corpus)], env))
    assert "nul.txt:1" in line and "no letters or digits" in line


def test_a_record_that_is_not_valid_unicode_is_refused_with_file_and_line(tmp_path: Path, env):
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    (corpus / "s.jsonl").write_text('{"abstract": "fine text"}\n{"abstract": "bad \\ud800 text"}\n', encoding="utf-8")
    line = one_line_error(rag(["ingest", str(corpus)], env))
    assert "s.jsonl:2" in line and "not valid Unicode" in line


def test_search_never_crashes_on_text_with_no_terms(tmp_path: Path, settings, embedder):
    from rag.ingest import ingest
    from rag.retrieval import Retriever

    write_jsonl(tmp_path / "t.jsonl", [{"abstract": "It is what it is, and that is that."}, {"abstract": SENTENCE}])
    ingest(settings, [tmp_path / "t.jsonl"], embedder=embedder)
    retriever = Retriever(settings, embedder=embedder)
    assert retriever.search("the of and it", k=2)  # no BM25 term at all: dense ranking only
    assert retriever.search("retrieval citations", k=2)[0].text == SENTENCE.strip()


# --------------------------------------------------------------------------------------------- questions


@pytest.mark.llm
def test_a_question_that_is_not_valid_unicode_is_one_clear_error(ingested_settings, env):
    env["RAG_DATA_DIR"] = str(ingested_settings.data_dir)
    question = os.fsdecode(b"Qwen\xff")  # what Python makes of the bytes a shell passes
    line = one_line_error(rag(["ask", question], env))
    assert "not valid UTF-8" in line and "0xFF" in line
    assert "not valid" in one_line_error(rag(["search", question], env))


def test_questions_and_k_are_checked_in_one_place():
    from rag.errors import QuestionError
    from rag.inputs import passages_k, question_text

    assert question_text(12345, 100) == "12345"
    assert question_text("  two \x00 words\n", 100) == "two words"
    for bad in ("", "   ", "\x00\x00", None, ["a list"], "x" * 101, "a \ud800 b"):
        with pytest.raises(QuestionError):
            question_text(bad, 100)
    assert passages_k(None) is None and passages_k(5) == 5 and passages_k(7.0) == 7 and passages_k("3") == 3
    for bad in (0, -5, 51, 1_000_000, 2.5, "many", True):
        with pytest.raises(QuestionError, match="k"):
            passages_k(bad)


@pytest.mark.llm
def test_a_run_on_abstract_sentence_is_cut_to_fit_not_blamed_on_the_question(tmp_path: Path, embedder):
    from rag.answer import Assistant
    from rag.config import LLMSettings, Settings
    from rag.ingest import ingest

    settings = Settings(data_dir=tmp_path / "data", llm=LLMSettings(n_ctx=512))
    run_on = "The Zorblax method " + " and then ".join(f"improves retrieval step {i} by a wide margin" for i in range(200))
    write_jsonl(tmp_path / "r.jsonl", [{"title": "Zorblax", "abstract": run_on + "."}])
    ingest(settings, [tmp_path / "r.jsonl"], embedder=embedder)
    answer = Assistant(settings).ask("What does the Zorblax method improve?")
    assert not answer.abstained and answer.citations
    assert answer.citations[0].quote.endswith("…")
    assert run_on.startswith(answer.citations[0].quote.rstrip("…").strip())


# -------------------------------------------------------------------------------------------- data dir


def test_a_data_dir_that_is_a_file_is_one_clear_error(tmp_path: Path, env):
    (tmp_path / "afile").write_text("x")
    env["RAG_DATA_DIR"] = str(tmp_path / "afile")
    line = one_line_error(rag(["ingest", str(PROJECT_ROOT / "tests" / "data" / "sample.jsonl")], env))
    assert "is a file" in line and "RAG_DATA_DIR" in line
    env["RAG_DATA_DIR"] = str(tmp_path / "afile" / "below")
    assert "RAG_DATA_DIR" in one_line_error(rag(["ingest", str(PROJECT_ROOT / "tests" / "data" / "sample.jsonl")], env))


@pytest.mark.skipif(os.geteuid() == 0 and not Path("/usr/bin/setpriv").exists(), reason="needs setpriv to drop root")
def test_a_data_dir_under_a_read_only_parent_is_one_clear_error(tmp_path: Path, env):
    import tempfile

    parent = Path(tempfile.mkdtemp(prefix="rag-ro-"))  # directly in /tmp: reachable by the unprivileged user
    parent.chmod(0o555)
    env["RAG_DATA_DIR"] = str(parent / "data")
    command = [sys.executable, "-m", "rag", "ingest", str(PROJECT_ROOT / "tests" / "data" / "sample.jsonl")]
    if os.geteuid() == 0:  # root writes anywhere: run as nobody
        command = ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", *command]
        env["HOME"] = str(parent)
    try:
        result = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)
    finally:
        parent.chmod(0o755)
        parent.rmdir()
    line = one_line_error(result)
    assert "data dir" in line and "RAG_DATA_DIR" in line


def test_a_read_only_index_still_answers_search(env, embedder):
    import shutil
    import tempfile

    from rag.config import Settings
    from rag.ingest import ingest

    root = Path(tempfile.mkdtemp(prefix="rag-ro-index-"))  # directly in /tmp: reachable by the unprivileged user
    root.chmod(0o755)
    settings = Settings(data_dir=root / "data")
    env["RAG_DATA_DIR"] = str(settings.data_dir)
    env["HOME"] = str(root)
    ingest(settings, [PROJECT_ROOT / "tests" / "data" / "sample.jsonl"], embedder=embedder)
    for path in [settings.data_dir, *settings.data_dir.rglob("*")]:
        path.chmod(0o555 if path.is_dir() else 0o444)
    try:
        command = [sys.executable, "-m", "rag", "search", "language models", "--json"]
        if os.geteuid() == 0:  # root writes anywhere: run as nobody, for whom the index is read-only
            command = ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", *command]
        result = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)
        assert result.returncode == 0, result.stderr
        assert json.loads(result.stdout)
    finally:
        for path in [settings.data_dir, *settings.data_dir.rglob("*")]:
            path.chmod(0o755 if path.is_dir() else 0o644)
        shutil.rmtree(root)


def test_two_rebuilds_at_once_take_turns(tmp_path: Path, env):
    sample = str(PROJECT_ROOT / "tests" / "data" / "sample.jsonl")
    assert rag(["ingest", sample], env).returncode == 0
    procs = [
        subprocess.Popen([sys.executable, "-m", "rag", "ingest", "--rebuild", "--json", sample], env=env,
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        for _ in range(2)
    ]
    outs = [p.communicate(timeout=300) for p in procs]
    for p, (out, err) in zip(procs, outs):
        assert p.returncode == 0, err
        assert "Traceback" not in err
    status = rag(["status", "--json"], env)
    assert status.returncode == 0, status.stderr
    assert json.loads(status.stdout)["papers"] == json.loads(outs[0][0])["papers"]


def test_an_interrupted_rebuild_leaves_the_old_index_answering(tmp_path: Path, env):
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    for f in CORPUS.iterdir():
        (corpus / f.name).write_bytes(f.read_bytes())
    assert rag(["ingest", str(corpus)], env).returncode == 0
    before = json.loads(rag(["status", "--json"], env).stdout)
    slow = {**env, "RAG_EMBEDDING__INGEST_WINDOW": "8"}  # many small windows: the kill lands mid-rebuild
    proc = subprocess.Popen([sys.executable, "-m", "rag", "ingest", "--rebuild", str(corpus)], env=slow,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    rebuilding = Store.for_settings(Settings(data_dir=Path(env["RAG_DATA_DIR"])), Settings().collection + REBUILD_SUFFIX)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and proc.poll() is None:
        try:
            if rebuilding.count() >= 8:  # the embedder is loaded and writing
                break
        except Exception:  # noqa: BLE001 - not created yet
            rebuilding = Store.for_settings(Settings(data_dir=Path(env["RAG_DATA_DIR"])), Settings().collection + REBUILD_SUFFIX)
        time.sleep(0.2)
    assert proc.poll() is None, "the rebuild finished before it could be killed"
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)
    after = rag(["status", "--json"], env)
    assert after.returncode == 0, after.stderr
    assert json.loads(after.stdout) == before
    search = rag(["search", "Korean benchmark", "--json"], env)
    assert search.returncode == 0 and json.loads(search.stdout)
    again = rag(["ingest", "--json", str(corpus)], env)  # a later ingest drops the unfinished rebuild quietly
    assert again.returncode == 0 and json.loads(again.stdout)["chunks_added"] == 0


# ------------------------------------------------------------------------------------------ the server


class Server:
    """A real `rag serve` subprocess on a free loopback port, with its log."""

    def __init__(self, env: dict[str, str], log: Path):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}/"
        self.log = log
        self._log_file = log.open("w")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "rag", "-v", "serve", "--port", str(self.port)],
            env=env, stdout=self._log_file, stderr=subprocess.STDOUT,
        )
        deadline = time.monotonic() + 180
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise AssertionError(f"rag serve exited: {log.read_text()}")
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=1):
                    break
            except OSError:
                time.sleep(0.5)
        else:
            raise AssertionError(f"rag serve did not start: {log.read_text()}")

    def client(self):
        from gradio_client import Client

        return Client(self.url, verbose=False)

    def rss_mb(self) -> float:
        import psutil

        return psutil.Process(self.proc.pid).memory_info().rss / 1e6

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
        self._log_file.close()


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Server, dict[str, str], Path]]:
    root = tmp_path_factory.mktemp("served")
    corpus = root / "corpus"
    corpus.mkdir()
    for f in CORPUS.iterdir():
        (corpus / f.name).write_bytes(f.read_bytes())
    env = dict(os.environ)
    env["RAG_DATA_DIR"] = str(root / "data")
    env["RAG_CORPUS_PATHS"] = json.dumps([str(corpus)])
    assert rag(["ingest"], env).returncode == 0
    server = Server(env, root / "serve.log")
    try:
        yield server, env, corpus
    finally:
        server.stop()


def ask(server: Server, question: str, k=None) -> dict:
    return server.client().predict(question, [], k, api_name="/ask")


def raw_ask(server: Server, body: str) -> str:
    """POST a raw JSON body to /ask through Gradio's HTTP API; the event stream it answers, as text."""
    import httpx

    started = httpx.post(server.url + "gradio_api/call/ask", content=body.encode(),
                         headers={"content-type": "application/json"}, timeout=60)
    assert started.status_code == 200, started.text
    event_id = started.json()["event_id"]
    return httpx.get(server.url + f"gradio_api/call/ask/{event_id}", timeout=120).text


@pytest.mark.llm
def test_ask_checks_k_in_one_place(served):
    from gradio_client.exceptions import AppError

    server, _, _ = served
    for bad in (-5, 0, 51, 1_000_000):
        with pytest.raises(AppError, match="k"):
            ask(server, EXAONE, bad)
    assert len(ask(server, EXAONE, 3)["passages"]) == 3


@pytest.mark.llm
def test_ask_takes_a_numeric_question_and_refuses_bad_text_cleanly(served):
    from gradio_client.exceptions import AppError

    server, _, _ = served
    answer = ask(server, 12345)
    assert answer["question"] == "12345"
    # gradio_client cannot even encode a lone surrogate; a raw JSON body can (as "\ud800"), as any client may send
    assert "not valid Unicode" in raw_ask(server, '{"data": ["Qwen \\ud800 model", [], null]}')
    with pytest.raises(AppError, match="empty"):
        ask(server, "   ")
    log = server.log.read_text()
    assert "Traceback" not in log
    assert sum("/ask refused" in line for line in log.splitlines()) >= 2  # one line per rejected request


@pytest.mark.llm
def test_the_upload_route_refuses_big_files(served):
    import httpx

    server, _, _ = served
    big = b"x" * (2 * 1024 * 1024)
    upload = server.url + "gradio_api/upload"
    r = httpx.post(upload, files={"files": ("big.bin", big)}, timeout=60)
    assert r.status_code == 413, (r.status_code, r.text[:200])
    for origin in ("http://evil.example", f"http://127.0.0.1:{server.port + 1}", "null"):
        r = httpx.post(upload, files={"files": ("ok.txt", b"tiny")}, headers={"Origin": origin}, timeout=60)
        assert r.status_code == 403, (origin, r.status_code, r.text[:200])
        r = httpx.post(server.url + "gradio_api/call/ask", json={"data": [EXAONE, [], None]}, headers={"Origin": origin})
        assert r.status_code == 403, (origin, r.status_code)
    same = httpx.get(server.url, headers={"Origin": server.url.rstrip("/")}, timeout=60)
    assert same.status_code == 200  # the app's own page is its own origin


@pytest.mark.llm
def test_the_server_keeps_answering_through_an_outside_ingest_and_rebuild(served):
    server, env, corpus = served
    errors: list[str] = []
    answers: list[dict] = []
    stop = threading.Event()

    def keep_asking() -> None:
        client = server.client()
        while not stop.is_set():
            try:
                answers.append(client.predict(EXAONE, [], None, api_name="/ask"))
            except Exception as e:  # noqa: BLE001 - every failure is a finding
                errors.append(repr(e))

    worker = threading.Thread(target=keep_asking)
    worker.start()
    try:
        write_jsonl(corpus / "new.jsonl", [{"title": "Quokka-LM", "abstract": "Quokka-LM is a 7B model trained on 2T tokens "
                                            "of marsupial literature, evaluated on twelve zoology benchmarks."}])
        added = rag(["ingest"], env)
        assert added.returncode == 0, added.stderr
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:  # the server sees the new paper without a restart
            hits = ask(server, "Which model was trained on marsupial literature?")["passages"]
            if hits and hits[0]["title"] == "Quokka-LM":
                break
            time.sleep(1)
        else:
            raise AssertionError("the server never saw the paper added by an outside ingest")
        rebuilt = rag(["ingest", "--rebuild"], env)
        assert rebuilt.returncode == 0, rebuilt.stderr
        time.sleep(2)
    finally:
        stop.set()
        worker.join(timeout=120)
    assert not errors, errors[:3]
    assert len(answers) >= 3 and all(a["citations"] for a in answers)
    assert ask(server, "Which model was trained on marsupial literature?")["passages"][0]["title"] == "Quokka-LM"
    assert "does not exist" not in server.log.read_text()


@pytest.mark.llm
@pytest.mark.slow
def test_twenty_concurrent_clients_for_a_minute(served, record_property):
    server, _, _ = served
    questions = [
        EXAONE,
        "How many expert-level multiple-choice questions does the KMMLU Korean benchmark contain?",
        "What sparsity level can sparse finetuning reach for MPT text generation without an accuracy drop?",
        "How does Text4VPR match text descriptions to images for place recognition?",
    ]
    ask(server, EXAONE)  # warm
    rss_start = server.rss_mb()
    deadline = time.monotonic() + 60
    errors: list[str] = []
    done: list[float] = []

    def client_loop(i: int) -> None:
        client = server.client()
        n = 0
        while time.monotonic() < deadline:
            started = time.monotonic()
            try:
                result = client.predict(questions[(i + n) % len(questions)], [], None, api_name="/ask")
                assert result["answer"]
                done.append(time.monotonic() - started)
            except Exception as e:  # noqa: BLE001
                errors.append(repr(e))
            n += 1

    with ThreadPoolExecutor(20) as pool:
        list(pool.map(client_loop, range(20)))
    rss_end = server.rss_mb()
    record_property("rss_start_mb", round(rss_start))
    record_property("rss_end_mb", round(rss_end))
    record_property("answers", len(done))
    print(f"20 clients, 60 s: {len(done)} answers, {len(errors)} errors, RSS {rss_start:.0f} -> {rss_end:.0f} MB")
    assert not errors, errors[:3]
    assert server.proc.poll() is None
    assert len(done) >= 20
    assert rss_end < rss_start * 1.25 + 50, (rss_start, rss_end)  # steady, not growing per request
    assert "Traceback" not in server.log.read_text()
