#!/usr/bin/env bash
# A served deployment on this machine: a Chroma server, a llama.cpp server with the default GGUF (or $RAG_MODEL),
# and `rag serve` pointed at both, all on 127.0.0.1. Ctrl-C stops all three.
#
#   make serve-stack                      # or: scripts/serve-stack.sh
#   CHROMA_PORT=8000 LLM_PORT=8080 UI_PORT=7860 scripts/serve-stack.sh
#
# Other machines reach these servers only if you bind them elsewhere yourself (HOST=...); nothing here does.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${VENV:-.venv}
PY="$VENV/bin/python"
HOST=${HOST:-127.0.0.1}
CHROMA_PORT=${CHROMA_PORT:-8000}
LLM_PORT=${LLM_PORT:-8080}
UI_PORT=${UI_PORT:-7860}
DATA=${RAG_DATA_DIR:-$HOME/.local/share/rag-abstracts}
CHROMA_DATA=${CHROMA_DATA:-$DATA/chroma-server}
MODEL=$("$PY" -c 'from rag.config import Settings; from rag.llm import resolve_model_path as r; s = Settings(); print(r(s.model, s.models_dir))')
N_CTX=$("$PY" -c 'from rag.config import Settings; print(Settings().llm.n_ctx)')

pids=()
cleanup() { for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done; wait 2>/dev/null || true; }
trap cleanup EXIT INT TERM

wait_port() {  # wait_port PORT NAME
  for _ in $(seq 1 240); do
    if "$PY" -c "import socket,sys; socket.create_connection(('$HOST', $1), 1)" 2>/dev/null; then return 0; fi
    sleep 0.5
  done
  echo "serve-stack: $2 did not start on $HOST:$1" >&2; exit 1
}

mkdir -p "$CHROMA_DATA"
echo "serve-stack: Chroma server on http://$HOST:$CHROMA_PORT (data in $CHROMA_DATA)" >&2
ANONYMIZED_TELEMETRY=False "$VENV/bin/chroma" run --path "$CHROMA_DATA" --host "$HOST" --port "$CHROMA_PORT" >/dev/null &
pids+=($!)
echo "serve-stack: llama.cpp server on http://$HOST:$LLM_PORT/v1 with $MODEL" >&2
"$PY" -m llama_cpp.server --model "$MODEL" --host "$HOST" --port "$LLM_PORT" --n_ctx "$N_CTX" \
  --n_threads "$(nproc)" --interrupt_requests False >/dev/null 2>&1 &
pids+=($!)
wait_port "$CHROMA_PORT" "the Chroma server"
wait_port "$LLM_PORT" "the llama.cpp server"

export RAG_STORE__URL="http://$HOST:$CHROMA_PORT" RAG_LLM__URL="http://$HOST:$LLM_PORT/v1"
"$VENV/bin/rag" ingest   # embeds only what the server's index lacks
"$VENV/bin/rag" serve --host "$HOST" --port "$UI_PORT" &
pids+=($!)
wait "${pids[-1]}"
