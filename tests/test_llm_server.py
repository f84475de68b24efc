"""The model as a server (RAG_LLM__URL / --llm-url): a real llama-cpp-python server started here, on 127.0.0.1.

The server runs the default GGUF with `--interrupt_requests False` (by default llama-cpp-python's server cuts a
running answer short whenever another request arrives, token counting included). A few logic tests use a small
fake server instead, for what a llama.cpp server cannot be made to do (llama-server's and Ollama's answers).
"""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import pytest

from rag.config import PROJECT_ROOT, Settings
from rag.errors import ModelError, QuestionError
from rag.llm import LocalLLM, default_model_path
from rag.llm_remote import RemoteLLM, api_base, estimate_tokens

sys.path.insert(0, str(Path(__file__).parent))
from checks import assert_citations_verbatim  # noqa: E402

HOST = "127.0.0.1"  # never any other address
EXAONE_Q = "Which sizes are the EXAONE 3.5 models offered in?"
EXAONE_SOURCE = ("000_984080258767f917.txt", 1)
MID_ANSWER = r"failed (while answering|in the middle of an answer)"  # the kill landed during the generation
KMMLU_Q = "How many expert-level multiple-choice questions does the KMMLU Korean benchmark contain?"


def free_port() -> int:
    with socket.socket() as s:
        s.bind((HOST, 0))
        return s.getsockname()[1]


class ModelServer:
    """`python -m llama_cpp.server` with the default GGUF on 127.0.0.1:port, its log in a file."""

    def __init__(self, log: Path, port: int | None = None):
        self.port = port or free_port()
        self.log = log
        self.proc: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"http://{HOST}:{self.port}/v1"

    def start(self, timeout: float = 180) -> None:
        args = [
            sys.executable, "-m", "llama_cpp.server", "--model", str(default_model_path()), "--host", HOST,
            "--port", str(self.port), "--n_ctx", "2048", "--n_threads", "2", "--interrupt_requests", "False",
        ]
        with self.log.open("a") as log:  # the child keeps its own descriptor
            self.proc = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT, env={**os.environ, "PYTHONUNBUFFERED": "1"})
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"the model server exited ({self.proc.returncode}):\n{self.log.read_text()[-3000:]}")
            try:
                if httpx.get(self.url + "/models", timeout=2).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.25)
        self.stop()
        raise RuntimeError(f"the model server did not answer in {timeout}s:\n{self.log.read_text()[-3000:]}")

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def kill(self) -> None:
        assert self.proc is not None
        os.kill(self.proc.pid, signal.SIGKILL)
        self.proc.wait()

    def stop(self) -> None:
        if self.running:
            assert self.proc is not None
            self.proc.terminate()
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.kill()

    def wait_for_log(self, text: str, start: int, timeout: float = 240) -> None:
        """Wait until `text` is in the log after offset `start`."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if text in self.log.read_text(errors="replace")[start:]:
                return
            time.sleep(0.02)
        raise AssertionError(f"{text!r} not in the server log after {timeout}s")

    def log_size(self) -> int:
        return len(self.log.read_text(errors="replace"))


@pytest.fixture(scope="module")
def model_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ModelServer]:
    server = ModelServer(tmp_path_factory.mktemp("llm-server") / "server.log")
    server.start()
    yield server
    server.stop()


@pytest.fixture
def server(model_server: ModelServer) -> ModelServer:
    """The module's server, started again if a test before killed it."""
    if not model_server.running:
        model_server.start()
    return model_server


@pytest.fixture
def env(ingested_settings: Settings, server: ModelServer) -> dict[str, str]:
    return {**os.environ, "RAG_DATA_DIR": str(ingested_settings.data_dir), "RAG_LLM__URL": server.url}


def rag(args: list[str], env: dict[str, str], timeout: int = 300) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "rag", *args], env=env, capture_output=True, text=True, timeout=timeout)


def rag_popen(args: list[str], env: dict[str, str]) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "rag", *args], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def assert_one_line_error(stderr: str, *needles: str) -> None:
    lines = [line for line in stderr.strip().splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error:"), stderr
    assert "Traceback" not in stderr
    for needle in needles:
        assert needle in lines[0], lines[0]


def assert_cited_exaone(answer: dict[str, Any], server: ModelServer) -> None:
    assert not answer["abstained"] and answer["citations"], answer["answer"]
    assert EXAONE_SOURCE in [(c["source"], c["line"]) for c in answer["citations"]], answer["citations"]
    assert_citations_verbatim(answer, PROJECT_ROOT / "corpus")
    assert answer["model"] == {"name": str(default_model_path()), "sha256": None}  # the server's model id


# ------------------------------------------------------------------------------------ a real server


@pytest.mark.llm
def test_ask_json_through_the_server_is_a_cited_answer(env, server: ModelServer):
    start = server.log_size()
    out = rag(["ask", EXAONE_Q, "--json"], env)
    assert out.returncode == 0, out.stderr
    answer = json.loads(out.stdout)
    assert_cited_exaone(answer, server)
    assert answer["timings"]["completion_tokens"] > 0 and answer["timings"]["prompt_tokens"] > 0
    log = server.log.read_text()[start:]
    assert "POST /v1/chat/completions" in log and "POST /extras/tokenize" in log  # generated and counted there


@pytest.mark.llm
def test_the_server_is_checked_before_any_question(ingested_settings: Settings):
    env = {**os.environ, "RAG_DATA_DIR": str(ingested_settings.data_dir)}
    nobody = f"http://{HOST}:{free_port()}/v1"
    out = rag(["ask", EXAONE_Q, "--llm-url", nobody], env, timeout=120)
    assert out.returncode == 6
    assert_one_line_error(out.stderr, nobody, "RAG_LLM__URL", "llama_cpp.server")
    serve = rag(["serve", "--llm-url", nobody, "--port", str(free_port())], env, timeout=120)
    assert serve.returncode == 6  # the web app does not start without its model server
    assert_one_line_error(serve.stderr, nobody)
    bad = rag(["ask", EXAONE_Q, "--llm-url", "ftp://example/v1"], env, timeout=120)
    assert bad.returncode == 2
    assert_one_line_error(bad.stderr, "http://127.0.0.1:8080/v1")


@pytest.mark.llm
def test_a_server_killed_mid_question_is_one_clear_line(env, server: ModelServer):
    start = server.log_size()
    proc = rag_popen(["ask", EXAONE_Q], env)
    try:
        server.wait_for_log("POST /v1/chat/completions", start)  # logged when the answer's stream starts
        server.kill()
        stdout, stderr = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 6, stderr
    assert_one_line_error(stderr, server.url, "RAG_LLM__URL")
    assert re.search(MID_ANSWER, stderr), stderr


@pytest.mark.llm
def test_batch_records_a_dead_server_goes_on_and_resumes_when_it_is_back(env, server: ModelServer, tmp_path: Path):
    src = tmp_path / "questions.jsonl"
    src.write_text("".join(json.dumps({"id": i, "question": q}) + "\n" for i, q in (("exaone", EXAONE_Q), ("kmmlu", KMMLU_Q))))
    out = tmp_path / "answers.jsonl"
    env = {k: v for k, v in env.items() if k != "RAG_LLM__URL"}  # --llm-url, this time
    start = server.log_size()
    proc = rag_popen(["batch", str(src), "-o", str(out), "--llm-url", server.url], env)
    try:
        server.wait_for_log("POST /v1/chat/completions", start)  # mid-answer of the first question
        server.kill()
        _, stderr = proc.communicate(timeout=300)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, stderr  # the batch went on past the failure
    assert "Traceback" not in stderr and "0 answered, 2 errors" in stderr, stderr
    records = [json.loads(line) for line in out.read_text().splitlines()]
    assert [r["id"] for r in records] == ["exaone", "kmmlu"]
    assert all(r["error"] and server.url in r["error"] for r in records), records
    assert re.search(MID_ANSWER, records[0]["error"]) and "cannot connect" in records[1]["error"], records

    server.start()  # the server is back: the failed ids are answered, nothing else
    rerun = rag(["batch", str(src), "-o", str(out), "--llm-url", server.url], env)
    assert rerun.returncode == 0, rerun.stderr
    assert "2 answered, 0 errors, 0 already done (of 2)" in rerun.stderr, rerun.stderr
    records = [json.loads(line) for line in out.read_text().splitlines()][2:]
    assert [r["id"] for r in records] == ["exaone", "kmmlu"] and not any(r["error"] for r in records)
    assert_cited_exaone(records[0], server)
    assert not records[1]["abstained"] and records[1]["citations"]
    assert_citations_verbatim(records[1], PROJECT_ROOT / "corpus")
    assert records[1]["model"]["sha256"] is None


@pytest.mark.llm
def test_a_context_overflow_from_the_server_is_a_clear_refusal(env, server: ModelServer):
    # The client is told the context is 16384, the server has 2048: only the server can refuse this prompt.
    question = " ".join([EXAONE_Q] * 200)
    env = env | {"RAG_LLM__N_CTX": "16384", "RAG_ANSWER__MAX_QUESTION_CHARS": "20000"}
    out = rag(["ask", question, "--json"], env)
    assert out.returncode == 8, out.stdout[-2000:] + out.stderr
    assert_one_line_error(out.stderr, "does not fit the model server's context", "maximum context length is 2048")
    answered = rag(["ask", EXAONE_Q, "--json"], env)  # and the server still answers the next question
    assert answered.returncode == 0, answered.stderr
    assert_cited_exaone(json.loads(answered.stdout), server)


@pytest.mark.llm
def test_several_questions_are_answered_at_once_with_checked_citations(server: ModelServer, ingested_settings: Settings):
    """No lock around a server's generation: two questions in flight together, both answered and cited as with the
    local model (the same Assistant path checks the citations)."""
    from concurrent.futures import ThreadPoolExecutor

    from rag.answer import Assistant
    from rag.llm_remote import RemoteLLM as Remote

    # llama-cpp-python's server answers one request at a time: the second question's token counts wait behind the
    # first answer, which on a loaded 2-core machine can take minutes
    llm = ingested_settings.llm.model_copy(update={"url": server.url, "request_timeout_s": 600.0})
    assistant = Assistant(ingested_settings.model_copy(update={"llm": llm}))
    assert isinstance(assistant.llm, Remote)
    with ThreadPoolExecutor(2) as pool:
        answers = list(pool.map(assistant.ask, [EXAONE_Q, KMMLU_Q]))
    assert_cited_exaone(answers[0].model_dump(), server)
    assert not answers[1].abstained and answers[1].citations
    assert_citations_verbatim(answers[1], PROJECT_ROOT / "corpus")
    assert all(a.model is not None and a.model.sha256 is None for a in answers)


@pytest.mark.llm
def test_chat_token_counts_are_an_upper_bound_of_the_real_template(server: ModelServer, ingested_settings: Settings):
    """The per-message template allowance covers SmolLM2's real chat template (the local model counts exactly)."""
    from rag.context import render_messages
    from rag.prompts import Prompts

    prompts = Prompts.load(ingested_settings.prompts_dir)
    chats = [
        render_messages(EXAONE_Q, [], prompts),
        [{"role": "user", "content": "Hi"}],  # no system message: the template inserts its own
        [{"role": "system", "content": "a"}, {"role": "user", "content": "b"}, {"role": "assistant", "content": "c"},
         {"role": "user", "content": "d"}],
    ]
    local = LocalLLM(Settings())
    remote = RemoteLLM(Settings(llm={"url": server.url}))
    try:
        for messages in chats:
            exact, counted = local.count_chat_tokens(messages), remote.count_chat_tokens(messages)
            assert exact <= counted <= exact + 40, (messages, exact, counted)
        assert remote._tokenizer == "/extras/tokenize" and remote.n_ctx == Settings().llm.n_ctx
    finally:
        local.close()
        remote.close()


@pytest.mark.llm
def test_the_estimate_is_at_or_above_the_real_count_on_the_corpus():
    local = LocalLLM(Settings())
    lines = [line for path in sorted((PROJECT_ROOT / "corpus").iterdir()) for line in path.read_text().splitlines() if line.strip()]
    extra = ["2.4B, 7.8B, 32B", "1234567890", "日本語のテキスト", "GPT-4o-mini vs. LLaMA-3.1-70B-Instruct (Q4_K_M)", "🙂🙂"]
    try:
        under = [t[:80] for t in lines + extra if estimate_tokens(t) < local.count_tokens(t)]
    finally:
        local.close()
    assert not under, under


# --------------------------------------------------------------------------- a fake server, for logic


class FakeServer:
    """A tiny OpenAI-style server on 127.0.0.1: routes map 'METHOD /path' to (status, JSON body or SSE lines)."""

    def __init__(self, routes: dict[str, Any]):
        self.routes = routes
        self.requests: list[tuple[str, dict[str, Any]]] = []
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:
                pass

            def _answer(self, method: str) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                body = json.loads(self.rfile.read(length) or b"{}")
                key = f"{method} {self.path}"
                fake.requests.append((key, body))
                route = fake.routes.get(key)
                if route is None:
                    self.send_response(404)
                    self.end_headers()
                    return
                status, payload = route(body) if callable(route) else route
                self.send_response(status)
                if isinstance(payload, list):  # SSE lines; the connection then closes (maybe without [DONE])
                    self.send_header("Content-Type", "text/event-stream")
                    self.send_header("Connection", "close")
                    self.end_headers()
                    for line in payload:
                        self.wfile.write(f"{line}\n\n".encode())
                        self.wfile.flush()
                    return
                data = json.dumps(payload).encode()
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def do_GET(self) -> None:  # noqa: N802
                self._answer("GET")

            def do_POST(self) -> None:  # noqa: N802
                self._answer("POST")

        self.httpd = ThreadingHTTPServer((HOST, 0), Handler)
        self.url = f"http://{HOST}:{self.httpd.server_address[1]}/v1"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def hits(self, key: str) -> int:
        return sum(1 for k, _ in self.requests if k == key)

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


def chunk(text: str | None = None, finish: str | None = None, usage: dict[str, int] | None = None) -> str:
    body: dict[str, Any] = {"choices": [] if usage else [{"index": 0, "delta": {"content": text} if text else {}, "finish_reason": finish}]}
    if usage:
        body["usage"] = usage
    return "data: " + json.dumps(body)


MODELS = (200, {"object": "list", "data": [{"id": "tiny-model", "object": "model"}]})
ANSWER = [chunk("Hello"), chunk(" there"), chunk(finish="stop"), chunk(usage={"prompt_tokens": 11, "completion_tokens": 2}), "data: [DONE]"]


@pytest.fixture
def fake() -> Iterator[FakeServer]:
    server = FakeServer({"GET /v1/models": MODELS})
    yield server
    server.close()


def remote(url: str, **llm: Any) -> RemoteLLM:
    return RemoteLLM(Settings(llm={"url": url, **llm}))


def test_urls_are_normalised_to_the_v1_base():
    assert api_base("http://h:8080") == api_base("http://h:8080/") == api_base("http://h:8080/v1/") == "http://h:8080/v1"
    assert api_base("http://h:11434/v1") == "http://h:11434/v1"


def test_llama_server_tokenizer_and_context_are_used_and_probed_once(fake: FakeServer):
    fake.routes["POST /tokenize"] = lambda body: (200, {"tokens": list(range(len(body["content"].split())))})
    fake.routes["GET /props"] = (200, {"default_generation_settings": {"n_ctx": 4096}})
    llm = remote(fake.url)
    assert llm.count_tokens("one two three") == 3 and llm.count_tokens("four five") == 2
    assert llm.count_tokens("four five") == 2  # cached: not asked again
    assert fake.hits("POST /extras/tokenize") == 1 and fake.hits("POST /tokenize") == 2
    assert llm.n_ctx == 4096
    messages = [{"role": "system", "content": "one two"}, {"role": "user", "content": "three"}]
    assert llm.count_chat_tokens(messages) == 3 + 2 * 8 + 8
    assert llm.count_chat_tokens(messages[1:]) == 1 + 8 + 8 + 24  # no system message: a template may add one


def test_without_a_tokenizer_the_estimate_and_the_configured_context_are_used(fake: FakeServer):
    fake.routes["POST /v1/chat/completions"] = (200, ANSWER)
    llm = remote(fake.url, n_ctx=3000, seed=7)
    text = "Which sizes are the EXAONE 3.5 models offered in?"
    assert llm.count_tokens(text) == estimate_tokens(text) and llm.n_ctx == 3000
    events = list(llm.stream_chat([{"role": "user", "content": text}], max_tokens=50, temperature=0.3))
    assert "".join(e.text for e in events) == "Hello there"
    stats = events[-1].stats
    assert events[-1].done and (stats.prompt_tokens, stats.completion_tokens, stats.stop_reason) == (11, 2, "stop")
    body = next(b for k, b in fake.requests if k == "POST /v1/chat/completions")
    assert body["stream"] is True and body["stream_options"] == {"include_usage": True}
    assert (body["model"], body["max_tokens"], body["temperature"], body["seed"]) == ("tiny-model", 50, 0.3, 7)
    assert llm.info().model_dump() == {"name": "tiny-model", "sha256": None}


def test_a_prompt_over_the_context_is_refused_before_it_is_sent(fake: FakeServer):
    llm = remote(fake.url, n_ctx=256)
    with pytest.raises(QuestionError, match="exceeds the model's context"):
        llm.stream_chat([{"role": "user", "content": "word " * 400}], max_tokens=50)
    assert fake.hits("POST /v1/chat/completions") == 0


def test_llama_server_context_error_is_a_question_error(fake: FakeServer):
    error = {"error": {"code": 400, "message": "the request exceeds the available context size, try increasing it",
                       "type": "exceed_context_size_error"}}
    fake.routes["POST /v1/chat/completions"] = (400, error)
    with pytest.raises(QuestionError, match="available context size"):
        list(remote(fake.url).stream_chat([{"role": "user", "content": "hi"}], max_tokens=8))


def test_a_stream_cut_off_or_interrupted_is_a_model_error_never_a_short_answer(fake: FakeServer):
    fake.routes["POST /v1/chat/completions"] = (200, [chunk("Hel"), chunk("lo")])  # closed without finish or [DONE]
    llm = remote(fake.url)
    with pytest.raises(ModelError, match="middle of an answer"):
        list(llm.stream_chat([{"role": "user", "content": "hi"}], max_tokens=8))
    fake.routes["POST /v1/chat/completions"] = (200, [chunk("Hel"), "data: [DONE]"])  # llama-cpp-python's interrupt
    with pytest.raises(ModelError, match="interrupt_requests False"):
        list(llm.stream_chat([{"role": "user", "content": "hi"}], max_tokens=8))
    fake.routes["POST /v1/chat/completions"] = (500, {"error": {"message": "CUDA out of memory"}})
    with pytest.raises(ModelError, match="500 .*CUDA out of memory"):
        list(llm.stream_chat([{"role": "user", "content": "hi"}], max_tokens=8))


def test_an_unknown_server_model_is_named(fake: FakeServer):
    with pytest.raises(ModelError, match="no model 'big-model'.*tiny-model"):
        remote(fake.url, server_model="big-model").check()


def test_the_web_app_shows_the_server_model_and_answers_several_at_once(fake: FakeServer, tmp_path: Path):
    from rag import ui

    settings = Settings(data_dir=tmp_path / "data", llm={"url": fake.url})
    pool = ui.AssistantPool(settings)
    assert pool.remote and pool.default_name == "tiny-model"
    assert pool.choices() == [("tiny-model (model server)", "tiny-model")]
    assert pool.get("SmolLM2-135M-Instruct.Q4_1.gguf") is pool.get(None)  # no Assistant per local GGUF
    assert ui.assistant_concurrency(settings) == ui.SERVER_CONCURRENCY_LIMIT == 4
    assert ui.assistant_concurrency(Settings(data_dir=tmp_path)) == ui.CONCURRENCY_LIMIT == 2
    assert ui.assistant_concurrency(settings.model_copy(update={"ui": settings.ui.model_copy(update={"concurrency": 3})})) == 3
    line = ui.describe_model(pool.get(), settings)
    assert line == f"model: tiny-model on the model server {fake.url} (4 questions at once)"
    local = Settings(data_dir=tmp_path / "data")
    assert ui.describe_model(ui.AssistantPool(local).get(), local).startswith(f"model: {default_model_path()} (local GGUF")
    app = ui.build_app(settings, pool.get())
    limits = {fn.concurrency_limit for fn in app.fns.values() if fn.concurrency_id == "assistant"}
    assert limits == {4}
