"""Offline is a promise: the CLI, from ingest to a cited answer, makes no connection and no name lookup."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

GUARD = Path(__file__).parent / "netguard"


def _run(args: list[str], env: dict[str, str]) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "rag", *args], env=env, capture_output=True, text=True, timeout=300)


@pytest.fixture
def guarded_env(tmp_path: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("HF_", "TRANSFORMERS_", "ANONYMIZED_", "GRADIO_"))}
    env["PYTHONPATH"] = os.pathsep.join([str(GUARD), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    env["RAG_NETGUARD_LOG"] = str(tmp_path / "net.log")
    env["RAG_DATA_DIR"] = str(tmp_path / "data")
    env["HOME"] = str(tmp_path / "home")  # no cached hub token or config to lean on
    return env


def test_guard_itself_blocks_the_network(guarded_env):
    probe = "import urllib.request\ntry:\n    urllib.request.urlopen('https://huggingface.co', timeout=2)\nexcept Exception as e:\n    print(type(e).__name__)"
    out = subprocess.run([sys.executable, "-c", probe], env=guarded_env, capture_output=True, text=True, timeout=60)
    assert "huggingface.co" in Path(guarded_env["RAG_NETGUARD_LOG"]).read_text()
    assert out.stdout.strip()


def test_ingest_search_and_ask_never_touch_the_network(guarded_env):
    log = Path(guarded_env["RAG_NETGUARD_LOG"])
    ingest = _run(["ingest", "--json"], guarded_env)
    assert ingest.returncode == 0, ingest.stderr
    assert json.loads(ingest.stdout)["papers"] == 150
    search = _run(["search", "Korean language models", "--json"], guarded_env)
    assert search.returncode == 0, search.stderr
    ask = _run(["ask", "Which sizes are the EXAONE 3.5 models offered in?", "--json"], guarded_env)
    assert ask.returncode == 0, ask.stderr
    assert json.loads(ask.stdout)["passages"]
    assert not log.exists() or log.read_text() == "", log.read_text()
