"""Offline is a promise: no entry point makes a connection or a name lookup that leaves the machine.

Two layers, both on for the namespace tests:
- tests/netguard/sitecustomize.py, put on PYTHONPATH, refuses and records every attempt made through Python's
  socket module (connections, UDP datagrams, name lookups), even those the code would swallow silently;
- a fresh network namespace (`unshare -n`) where only loopback exists, which also stops native code (llama.cpp,
  Rust or C extensions) that the Python guard cannot see. There, any network error on stderr fails the test.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from checks import assert_citations_verbatim
from rag.config import PROJECT_ROOT

GUARD = Path(__file__).parent / "netguard"
CORPUS = PROJECT_ROOT / "corpus"

EXAONE_Q = "Which sizes are the EXAONE 3.5 models offered in?"
EXAONE_SOURCE = ("000_984080258767f917.txt", 1)
KMMLU_Q = "How many expert-level multiple-choice questions does the KMMLU Korean benchmark contain?"
OFF_TOPIC_Q = "What oven temperature and proofing time work best for baking sourdough bread?"

# A stderr line that says something tried the network (and failed, or was refused by the guard).
NETWORK_ERROR = re.compile(
    r"network is unreachable|unreachable|name or service not known|name resolution|nodename nor servname"
    r"|getaddrinfo|gethostbyname|gaierror|connection (?:refused|reset|aborted|error)|connecterror|connecttimeout"
    r"|newconnectionerror|failed to establish|max retries exceeded|connectionpool|urlopen error|could not resolve"
    r"|could not connect|couldn't connect|offline test|\berrno (?:101|111|113|-2|-3|-5)\b|sslerror|proxyerror"
    r"|https?://(?!127\.0\.0\.1|localhost|\[::1\])",
    re.IGNORECASE,
)

# In a new network namespace the loopback device exists but is down: bring it up, then run the command.
LO_UP = ["sh", "-c", 'ip link set lo up && exec "$@"', "sh"]


def _env(root: Path) -> dict[str, str]:
    """The environment of a user with no hub token, no cache settings and no opt-outs of ours: only the guard."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("HF_", "TRANSFORMERS_", "ANONYMIZED_", "GRADIO_"))}
    env["PYTHONPATH"] = os.pathsep.join([str(GUARD), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    env["RAG_NETGUARD_LOG"] = str(root / "net.log")
    env["RAG_DATA_DIR"] = str(root / "data")
    env["HOME"] = str(root / "home")  # no cached hub token or config to lean on
    return env


def _run(args: list[str], env: dict[str, str], prefix: list[str] = (), timeout: int = 300) -> subprocess.CompletedProcess:
    return subprocess.run([*prefix, sys.executable, "-m", "rag", *args], env=env, capture_output=True, text=True,
                          timeout=timeout)


def network_errors(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if NETWORK_ERROR.search(line)]


def guard_log(env: dict[str, str]) -> str:
    log = Path(env["RAG_NETGUARD_LOG"])
    return log.read_text() if log.exists() else ""


def assert_offline_ok(proc: subprocess.CompletedProcess, env: dict[str, str], what: str = "") -> None:
    """Exit 0, no network error on stderr, nothing recorded by the guard."""
    args = [str(a) for a in proc.args]
    what = what or "rag " + " ".join(args[args.index("rag") + 1:] if "rag" in args else args[-3:])
    assert proc.returncode == 0, f"{what}: exit {proc.returncode}\n{proc.stderr[-3000:]}"
    assert not network_errors(proc.stderr), f"{what}: network errors on stderr:\n" + "\n".join(network_errors(proc.stderr))
    assert guard_log(env) == "", f"{what}: the guard refused:\n{guard_log(env)}"


# ------------------------------------------------------------------------------------------ the guard


PROBE = """
import socket, urllib.request

def attempt(name, fn):
    try:
        fn()
        print(name, "allowed")
    except OSError as e:
        print(name, "refused", type(e).__name__)

attempt("urlopen", lambda: urllib.request.urlopen("https://huggingface.co", timeout=2))
attempt("getaddrinfo", lambda: socket.getaddrinfo("example.org", 443))
attempt("gethostbyname", lambda: socket.gethostbyname("example.net"))
attempt("gethostbyname_ex", lambda: socket.gethostbyname_ex("example.com"))
udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
attempt("udp-sendto", lambda: udp.sendto(b"x", ("192.0.2.1", 53)))
attempt("udp-sendto-flags", lambda: udp.sendto(b"x", 0, ("192.0.2.2", 53)))
attempt("udp-connect", lambda: udp.connect(("192.0.2.3", 53)))
attempt("tcp-connect", lambda: socket.socket().connect(("192.0.2.4", 443)))
attempt("tcp-connect_ex", lambda: socket.socket().connect_ex(("192.0.2.5", 443)))
# loopback stays usable: the web app talks to itself
attempt("local-lookup", lambda: (socket.getaddrinfo("localhost", 80), socket.gethostbyname("127.0.0.1")))
sink = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
sink.bind(("127.0.0.1", 0))
attempt("local-udp", lambda: udp.sendto(b"x", sink.getsockname()))
"""


def test_guard_itself_blocks_the_network(tmp_path: Path):
    env = _env(tmp_path)
    out = subprocess.run([sys.executable, "-c", PROBE], env=env, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    results = dict(line.split(" ", 1) for line in out.stdout.splitlines())
    local = {"local-lookup", "local-udp"}
    assert {k for k, v in results.items() if v.startswith("refused")} == set(results) - local, results
    assert all(results[k] == "allowed" for k in local), results
    log = guard_log(env)
    for target in ("huggingface.co", "example.org", "example.net", "example.com", *(f"192.0.2.{i}" for i in range(1, 6))):
        assert target in log, f"{target} not recorded:\n{log}"
    assert "sendto (udp)" in log and "connect (udp)" in log and "gethostbyname_ex" in log


def test_ingest_search_and_ask_never_touch_the_network(tmp_path: Path):
    """The Python guard alone (no namespace): also where `unshare` is not available."""
    env = _env(tmp_path)
    ingest = _run(["ingest", "--json"], env)
    assert ingest.returncode == 0, ingest.stderr
    assert json.loads(ingest.stdout)["papers"] == 150
    search = _run(["search", "Korean language models", "--json"], env)
    assert search.returncode == 0, search.stderr
    ask = _run(["ask", EXAONE_Q, "--json"], env)
    assert ask.returncode == 0, ask.stderr
    answer = json.loads(ask.stdout)
    assert not answer["abstained"] and answer["citations"], answer["answer"]
    assert_citations_verbatim(answer, CORPUS)
    assert guard_log(env) == "", guard_log(env)


# ------------------------------------------------------------------------ every entry point, no network


@pytest.fixture(scope="module")
def netns() -> list[str]:
    """The command prefix that runs a command in a fresh network namespace with loopback up."""
    unshare = ["unshare", "-n"] if os.geteuid() == 0 else ["unshare", "-rn"]
    why = None
    if shutil.which("unshare") is None or shutil.which("ip") is None:
        why = "needs `unshare` (util-linux) and `ip` (iproute2)"
    else:
        probe = subprocess.run([*unshare, *LO_UP, "true"], capture_output=True, text=True, timeout=30)
        if probe.returncode != 0:
            why = f"`{' '.join(unshare)}` with loopback up failed here: {probe.stderr.strip() or probe.returncode}"
    if why:
        if os.environ.get("CI"):
            pytest.fail(f"CI must run the network-namespace offline tests, but {why}")
        pytest.skip(f"no network namespace: {why}")
    return [*unshare, *LO_UP]


@pytest.fixture(scope="module")
def ns_module_env(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """The environment of the namespace runs: one data dir for the module."""
    return _env(tmp_path_factory.mktemp("netns"))


@pytest.fixture(scope="module")
def ns_ingest(netns, ns_module_env) -> subprocess.CompletedProcess:
    """`rag ingest` of the bundled corpus in the namespace, once for the module (the other commands need it)."""
    return _run(["ingest", "--json"], ns_module_env, netns)


@pytest.fixture
def ns_env(ns_module_env, tmp_path: Path) -> dict[str, str]:
    """The module's environment with a guard log of this test's own."""
    return {**ns_module_env, "RAG_NETGUARD_LOG": str(tmp_path / "net.log")}


@pytest.fixture
def ns_index(ns_ingest) -> None:
    if ns_ingest.returncode != 0:
        pytest.fail(f"ingest in the namespace failed (exit {ns_ingest.returncode}):\n{ns_ingest.stderr[-3000:]}")


def test_ingest_offline(netns, ns_module_env, ns_ingest):
    assert_offline_ok(ns_ingest, ns_module_env)
    assert json.loads(ns_ingest.stdout)["papers"] == 150


def test_search_and_status_offline(netns, ns_env, ns_index):
    search = _run(["search", "Korean language models", "--json"], ns_env, netns)
    assert_offline_ok(search, ns_env)
    assert json.loads(search.stdout)
    status = _run(["status", "--json"], ns_env, netns)
    assert_offline_ok(status, ns_env)
    assert json.loads(status.stdout)["papers"] == 150


@pytest.mark.llm
def test_ask_offline(netns, ns_env, ns_index):
    ask = _run(["ask", EXAONE_Q, "--json"], ns_env, netns)
    assert_offline_ok(ask, ns_env)
    answer = json.loads(ask.stdout)
    assert not answer["abstained"] and answer["citations"], answer["answer"]
    assert EXAONE_SOURCE in [(c["source"], c["line"]) for c in answer["citations"]]
    assert_citations_verbatim(answer, CORPUS)


@pytest.mark.llm
def test_batch_offline(netns, ns_env, ns_index, tmp_path: Path):
    questions = tmp_path / "questions.jsonl"
    questions.write_text(json.dumps({"id": "kmmlu", "question": KMMLU_Q}) + "\n"
                         + json.dumps({"id": "bread", "question": OFF_TOPIC_Q}) + "\n")
    out = tmp_path / "answers.jsonl"
    batch = _run(["batch", str(questions), "-o", str(out)], ns_env, netns)
    assert_offline_ok(batch, ns_env)
    records = {r["id"]: r for r in map(json.loads, out.read_text().splitlines())}
    assert set(records) == {"kmmlu", "bread"} and not any(r["error"] for r in records.values())
    assert not records["kmmlu"]["abstained"] and records["kmmlu"]["citations"], records["kmmlu"]["answer"]
    assert records["bread"]["abstained"] and not records["bread"]["citations"]
    for record in records.values():
        assert_citations_verbatim(record, CORPUS)


@pytest.mark.llm
def test_eval_offline(netns, ns_env, ns_index, tmp_path: Path):
    dev = {item["id"]: item for item in map(json.loads, (PROJECT_ROOT / "eval" / "qa_dev.jsonl").read_text().splitlines())}
    chosen = [dev["q003"], dev["q068"]]  # EXAONE 3.5 sizes (answerable), the cost of training it (not in the corpus)
    assert chosen[0]["answerable"] and not chosen[1]["answerable"]
    qa = tmp_path / "qa.jsonl"
    qa.write_text("".join(json.dumps(item) + "\n" for item in chosen))
    report_path, work = tmp_path / "report.json", tmp_path / "work"
    ev = _run(["eval", str(qa), "--json", str(report_path), "--out-dir", str(work)], ns_env, netns)
    assert_offline_ok(ev, ns_env)
    rows = {row["id"]: row for row in json.loads(report_path.read_text())["questions"]}
    assert set(rows) == {"q003", "q068"} and not any(row["error"] for row in rows.values())
    assert rows["q003"]["abstained"] is False and rows["q003"]["citations"], rows["q003"]
    assert rows["q068"]["abstained"] is True, rows["q068"]
    for record in map(json.loads, (work / "answers.jsonl").read_text().splitlines()):
        assert_citations_verbatim(record, CORPUS)


# Runs inside the namespace: starts `rag -v serve` on a free loopback port (with the environment it was given, but its
# own guard log), asks one question through the /ask API with gradio_client, stops the server (Ctrl-C), and prints
# one JSON line: the answer and how the server ended. gradio_client is the test's tool, not the app: it is told
# to stay offline (else huggingface_hub fetches an agent registry and sends telemetry for it).
SERVE_AND_ASK = r"""
import json, os, signal, socket, subprocess, sys, time

question, stderr_path, guard_log = sys.argv[1:4]
with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
with open(stderr_path, "w") as err:
    server = subprocess.Popen([sys.executable, "-m", "rag", "-v", "serve", "--host", "127.0.0.1", "--port", str(port)],
                              env={**os.environ, "RAG_NETGUARD_LOG": guard_log}, stdout=subprocess.DEVNULL, stderr=err)
result = {"port": port}
try:
    deadline = time.monotonic() + 240
    while True:
        if server.poll() is not None:
            sys.exit(f"rag serve exited with {server.returncode} before listening")
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                break
        if time.monotonic() > deadline:
            sys.exit(f"rag serve did not listen on {port} within 240 s")
        time.sleep(0.5)
    os.environ.update(HF_HUB_OFFLINE="1", HF_HUB_DISABLE_TELEMETRY="1")
    from gradio_client import Client

    result["answer"] = Client(f"http://127.0.0.1:{port}/", verbose=False).predict(question, api_name="/ask")
    result["alive"] = server.poll() is None
    # Stop only once the background embedding of the corpus sentences is done: Ctrl-C while it runs aborts the
    # process (SIGABRT; see test_cli.py::test_serve_stops_cleanly_on_ctrl_c_while_it_warms_up).
    deadline = time.monotonic() + 180
    while "new corpus sentences" not in open(stderr_path).read() and time.monotonic() < deadline:
        time.sleep(1)
finally:
    if server.poll() is None:
        server.send_signal(signal.SIGINT)
        try:
            server.wait(60)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()
    result["serve_exit"] = server.returncode
print(json.dumps(result))
"""


@pytest.mark.llm
def test_serve_offline(netns, ns_env, ns_index, tmp_path: Path):
    server_stderr, server_log = tmp_path / "serve.stderr", tmp_path / "serve-net.log"
    proc = subprocess.run([*netns, sys.executable, "-c", SERVE_AND_ASK, EXAONE_Q, str(server_stderr), str(server_log)],
                          env=ns_env, capture_output=True, text=True, timeout=420)
    serve_err = server_stderr.read_text() if server_stderr.exists() else ""
    assert proc.returncode == 0, f"serve-and-ask: exit {proc.returncode}\n{proc.stderr[-3000:]}\nrag serve:\n{serve_err[-3000:]}"
    assert not server_log.exists() or server_log.read_text() == "", f"rag serve: the guard refused:\n{server_log.read_text()}"
    assert not network_errors(serve_err), "rag serve: network errors on stderr:\n" + "\n".join(network_errors(serve_err))
    assert_offline_ok(proc, ns_env, "gradio_client (the test's client)")
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert result["alive"], f"rag serve died while answering:\n{serve_err[-3000:]}"
    assert result["serve_exit"] in (0, 130), f"rag serve ended with {result['serve_exit']} on Ctrl-C:\n{serve_err[-3000:]}"
    assert "Traceback" not in serve_err, serve_err[-3000:]
    answer = result["answer"]
    assert answer["question"] == EXAONE_Q
    assert not answer["abstained"] and answer["citations"], answer["answer"]
    assert EXAONE_SOURCE in [(c["source"], c["line"]) for c in answer["citations"]]
    assert_citations_verbatim(answer, CORPUS)
