#!/usr/bin/env bash
# A real NDIF server (PyPI ndif, the server behind nnsight's remote=True) on this machine, on
# 127.0.0.1 only: redis, an S3-compatible object store (moto), a Ray head, ndif's controller and API,
# and a model actor (on the CPU unless NDIF_LOCAL_GPU=1). Models are served from the stack's own
# Hugging Face cache under Hub-style ids; clients reach it with NDIF_HOST (no API key: no auth).
#
#   scripts/ndif_local.sh setup            build the venvs (Python 3.12) and install redis; idempotent
#   scripts/ndif_local.sh up               setup, start everything, deploy the models, wait until ready
#   scripts/ndif_local.sh deploy ID=DIR..  place model folders under Hub-style ids and deploy them
#   scripts/ndif_local.sh status           the API's answer and the deployments
#   scripts/ndif_local.sh env              the client settings (eval "$(scripts/ndif_local.sh env)")
#   scripts/ndif_local.sh down             stop what up started (recorded PIDs, then ray stop)
#
# Without deploy arguments, up deploys gar-eval/organism (the model organism) and gar-eval/smollm2
# (the embedded, Q4_1-dequantised SmolLM2-135M-Instruct), and the ID=DIR specs in NDIF_LOCAL_EXTRA
# (space-separated). Settings (environment): NDIF_LOCAL_DIR
# (default .cache/ndif-local in the project), NDIF_LOCAL_PORT (API, default 18801), NDIF_LOCAL_TIMEOUT
# (seconds to wait for readiness, default 240), NDIF_LOCAL_DTYPE (float32), NDIF_LOCAL_THREADS (torch
# threads of the CPU model actor, default all cores), NDIF_LOCAL_SANDBOX (1, the default: the CPU actor
# runs untrusted requests in a separate process, as ndif's sandboxed actor does; 0: in-process only),
# PY312 (the Python 3.12),
# GAR_PY (the project's Python, default .venv/bin/python).
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
W=${NDIF_LOCAL_DIR:-$ROOT/.cache/ndif-local}
mkdir -p "$W"
W=$(cd "$W" && pwd)
PORT=${NDIF_LOCAL_PORT:-18801}
TIMEOUT=${NDIF_LOCAL_TIMEOUT:-240}
GAR_PY=${GAR_PY:-$ROOT/.venv/bin/python}
# Versions known to work together (and with this project's client: the same nnsight and transformers).
NDIF_PIN="ndif[api,ray]==0.1.2"
TORCH_PIN="torch==2.13.0"
TRANSFORMERS_PIN="transformers==5.22.2"
MOTO_PIN="moto[server]==5.2.6"
DEFAULT_MODELS=("gar-eval/organism=organism" "gar-eval/smollm2=smollm2")

server_env() {  # everything the stack's processes read; all addresses on 127.0.0.1
  export PATH=$W/venv/bin:$PATH
  export HF_HOME=$W/hf HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1
  export PYTHONPATH=$ROOT/scripts/ndif
  export NDIF_HOME=$W/ndifhome
  export NDIF_REDIS_URL=redis://127.0.0.1:16379
  export NDIF_OBJECT_STORE_URL=http://127.0.0.1:19000
  export NDIF_OBJECT_STORE_ACCESS_KEY=local NDIF_OBJECT_STORE_SECRET_KEY=local
  export NDIF_API_URL=http://127.0.0.1:$PORT NDIF_API_PORT=$PORT
  export NDIF_RAY_ADDRESS=ray://127.0.0.1:10001 NDIF_RAY_HEAD_PORT=6385 NDIF_RAY_TEMP_DIR=$W/raytmp
  export NDIF_DEFAULT_DTYPE=${NDIF_LOCAL_DTYPE:-float32}  # the server's default is bfloat16
  export NDIF_DEFAULT_PADDING_BIAS=0 NDIF_CONTROLLER_SYNC_INTERVAL_S=5
  export GRPC_ENABLE_FORK_SUPPORT=0 RAY_USAGE_STATS_ENABLED=0
  # Ray resolves 127.0.0.1 to the machine's external address without this.
  export RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0
  if [ "${NDIF_LOCAL_GPU:-0}" != 1 ]; then
    # ndif's placement manages only nodes with a GPU resource: declare one, and run models on the CPU.
    export RAY_OVERRIDE_RESOURCES='{"GPU": 1, "CPU": 4, "cuda_memory_bytes": 16000000000}'
    # the sandboxed actor: untrusted requests (trusted: false) run in a runner process, as on a
    # shared deployment; trusted ones (the default without auth) in-process, as ndif's base does
    if [ "${NDIF_LOCAL_SANDBOX:-1}" = 1 ]; then
      export NDIF_DEFAULT_MODEL_ACTOR_CLASS=cpu_actor.CPUSandboxModelActor
      export NDIF_SANDBOX_POOL_SIZE=${NDIF_SANDBOX_POOL_SIZE:-1}  # each warm runner holds ~0.5 GB
    else
      export NDIF_DEFAULT_MODEL_ACTOR_CLASS=cpu_actor.CPUModelActor
    fi
  fi
}

client_env() {
  echo "export NDIF_HOST=http://127.0.0.1:$PORT"
  echo "export HF_HOME=$W/hf HF_HUB_OFFLINE=1"
}

log() { printf '%6ss ndif-local: %s\n' "$SECONDS" "$*" >&2; }
die() { echo "ndif-local: error: $*" >&2; exit 1; }

find_py312() {  # the first candidate that really runs Python 3.12 (a pyenv shim may not)
  local root c; root=$(pyenv root 2>/dev/null || echo "$HOME/.pyenv")
  for c in ${PY312:-} $(ls -d "$root"/versions/3.12*/bin/python3.12 2>/dev/null | sort -rV) \
           $(command -v python3.12 2>/dev/null); do
    if "$c" -c 'import sys; sys.exit(sys.version_info[:2] != (3, 12))' 2>/dev/null; then echo "$c"; return; fi
  done
}

pip_q() {  # quiet pip without the machine's noise about missing local indexes
  "$@" 2> >(grep -v "^WARNING: Location '.*' is ignored" >&2)
}

setup() {
  mkdir -p "$W/logs"
  if ! command -v redis-server >/dev/null; then
    log "installing redis-server (Debian)"
    { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq redis-server; } > "$W/logs/apt.log" 2>&1 \
      || die "cannot install redis-server (see $W/logs/apt.log)"
  fi
  local py; py=$(find_py312)
  [ -n "$py" ] || die "ndif needs Python 3.12 (none found; set PY312)"
  if [ ! -f "$W/venv/.complete" ]; then
    log "building the server venv with $py (several minutes)"
    rm -rf "$W/venv"
    "$py" -m venv "$W/venv"
    pip_q "$W/venv/bin/python" -m pip install -q "$TORCH_PIN"
    pip_q "$W/venv/bin/python" -m pip install -q "$NDIF_PIN" "$TRANSFORMERS_PIN"
    touch "$W/venv/.complete"
  fi
  # Offline for every process of the stack, the sandbox's runners included: ndif starts them with an
  # allowlisted environment that drops HF_HUB_OFFLINE, and a runner asking the Hub for files its
  # cache lacks times out instead of starting.
  local site; site=$("$W/venv/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
  echo 'import os; os.environ.setdefault("HF_HUB_OFFLINE", "1"); os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")' \
    > "$site/gar_ndif_local_offline.pth"
  if [ ! -f "$W/s3venv/.complete" ]; then
    log "building the object store venv"
    rm -rf "$W/s3venv"
    "$py" -m venv "$W/s3venv"
    pip_q "$W/s3venv/bin/python" -m pip install -q "$MOTO_PIN"
    touch "$W/s3venv/.complete"
  fi
}

alive() { [ -f "$W/logs/$1.pid" ] && kill -0 "$(cat "$W/logs/$1.pid")" 2>/dev/null; }

wait_for() {  # wait_for WHAT COMMAND...: poll until COMMAND succeeds, at most TIMEOUT seconds
  local what=$1; shift
  local end=$((SECONDS + TIMEOUT))
  until "$@" >/dev/null 2>&1; do
    [ $SECONDS -lt $end ] || { tail_logs; die "$what not ready after ${TIMEOUT}s"; }
    sleep 0.5
  done
}

tail_logs() {
  for f in "$W"/logs/*.log; do
    [ -s "$f" ] || continue
    echo "---- $(basename "$f") (last lines)" >&2
    tail -n 15 "$f" >&2
  done
}

start() {  # start NAME COMMAND...: a process group of its own, PID recorded
  local name=$1; shift
  setsid "$@" > "$W/logs/$name.log" 2>&1 < /dev/null &
  echo $! > "$W/logs/$name.pid"
}

up() {
  setup
  server_env
  cd "$W"
  mkdir -p logs ndifhome raytmp hf
  if alive api && curl -sf "http://127.0.0.1:$PORT/connected" >/dev/null 2>&1; then
    log "already running"
  else
    alive redis || start redis redis-server --port 16379 --bind 127.0.0.1 --save '' --appendonly no
    alive moto || start moto ./s3venv/bin/moto_server -H 127.0.0.1 -p 19000
    wait_for redis redis-cli -p 16379 ping
    log "redis up"
    local resources; resources=$(python -m ndif.services.ray.resources --head)
    ray start --head --node-ip-address=127.0.0.1 --resources="$resources" --port=6385 --object-manager-port=8076 \
      --include-dashboard=true --dashboard-host=127.0.0.1 --dashboard-port=8265 --dashboard-agent-grpc-port=52366 \
      --metrics-export-port=8080 --ray-client-server-port=10001 --min-worker-port=20000 --max-worker-port=20999 \
      --temp-dir="$NDIF_RAY_TEMP_DIR" > logs/ray_start.log 2>&1 || { tail_logs; die "ray start failed"; }
    log "ray head up"
    RAY_ADDRESS=127.0.0.1:6385 python -m ndif.services.ray.deployments.controller.controller \
      > logs/controller.log 2>&1 || { tail_logs; die "the controller did not start"; }
    log "controller up"
    NDIF_SERVICE=api start api gunicorn --config python:ndif.services.api.gunicorn_conf --bind "127.0.0.1:$PORT" \
      ndif.services.api.app:app
    wait_for "the API" curl -sf "http://127.0.0.1:$PORT/connected"
    log "API connected to ray on 127.0.0.1:$PORT"
  fi
  # shellcheck disable=SC2206  # NDIF_LOCAL_EXTRA: space-separated ID=DIR specs
  if [ $# -eq 0 ]; then set -- "${DEFAULT_MODELS[@]}" ${NDIF_LOCAL_EXTRA:-}; fi
  deploy "$@"
  client_env
}

model_dir() {  # an embedded model name (organism, smollm2) or a folder
  if [ -d "$1" ]; then (cd "$1" && pwd); return; fi
  [ -x "$GAR_PY" ] || die "no project Python at $GAR_PY (run scripts/setup.sh, or set GAR_PY)"
  "$GAR_PY" -m gar_tasks.cli models "$1" 2>> "$W/logs/models.log" | tail -1
}

deploy() {
  server_env
  cd "$W"
  local yaml="$W/models.yaml" keys=() spec id src dir snap key size
  echo "models:" > "$yaml"
  for spec in "$@"; do
    id=${spec%%=*}; src=${spec#*=}
    [[ "$id" == */* && "$spec" == *=* ]] || die "deploy takes ORG/NAME=FOLDER (or an embedded model name), got $spec"
    dir=$(model_dir "$src")
    [ -f "$dir/config.json" ] || die "$src: no config.json in $dir"
    snap="$HF_HOME/hub/models--${id//\//--}/snapshots/local"
    rm -rf "$snap" && mkdir -p "$snap" "$(dirname "$(dirname "$snap")")/refs"
    for f in "$dir"/*.json "$dir"/*.safetensors "$dir"/*.jinja "$dir"/*.model "$dir"/*.txt; do
      [ -f "$f" ] && cp "$f" "$snap/"
    done
    printf local > "$(dirname "$(dirname "$snap")")/refs/main"
    # the key this project's client sends (its nnsight, offline, from the same cache)
    key=$(HF_HOME=$W/hf HF_HUB_OFFLINE=1 "$GAR_PY" -c \
      "import sys; from interp.core.remote import model_key; print(model_key(sys.argv[1]))" "$id" 2>> logs/models.log \
      | tail -1) || die "cannot compute the model key of $id (see $W/logs/models.log)"
    size=$(du -cb "$snap"/*.safetensors | tail -1 | cut -f1)
    printf '  - checkpoint: %s\n    task: text-generation\n    dtype: %s\n    size_bytes: %s\n    model_key: %s\n' \
      "$id" "$NDIF_DEFAULT_DTYPE" "$size" "'$key'" >> "$yaml"
    keys+=("$key")
  done
  ndif deploy -f "$yaml" > logs/deploy.log 2>&1 || { tail_logs; die "ndif deploy failed"; }
  for key in "${keys[@]}"; do
    wait_for "deployment $key" running "$key"
  done
  log "deployed: $*"
}

running() {  # running KEY: the API reports KEY's deployment RUNNING
  curl -sf "http://127.0.0.1:$PORT/status" | python3 -c '
import json, sys
key = sys.argv[1]
d = json.load(sys.stdin).get("deployments", {})
sys.exit(0 if any(k.endswith(key) and v.get("application_state") == "RUNNING" for k, v in d.items()) else 1)' "$1"
}

status() {
  if curl -sf --max-time 5 "http://127.0.0.1:$PORT/ping" >/dev/null 2>&1; then
    echo "ndif-local: API up on http://127.0.0.1:$PORT ($W)"
    curl -sf --max-time 30 "http://127.0.0.1:$PORT/status" | python3 -c '
import json, sys
for k, v in json.load(sys.stdin).get("deployments", {}).items():
    if "application_state" in v:
        print(" ", v["application_state"], k.split(":", 1)[1])' || true
  else
    echo "ndif-local: not running (no API on 127.0.0.1:$PORT)"
    return 1
  fi
}

down() {
  server_env
  cd "$W" 2>/dev/null || return 0
  local s p i pids=()
  for s in api moto redis; do
    if p=$(cat "logs/$s.pid" 2>/dev/null); then
      kill -TERM -- "-$p" 2>/dev/null || true
      pids+=("$p")
      rm -f "logs/$s.pid"
    fi
  done
  if [ -x "$W/venv/bin/ray" ]; then ray stop > logs/ray_stop.log 2>&1 || true; fi
  for p in "${pids[@]}"; do  # gone before the ports are needed again: 10 s, then KILL
    for i in $(seq 50); do kill -0 -- "-$p" 2>/dev/null || break; sleep 0.2; done
    kill -KILL -- "-$p" 2>/dev/null || true
  done
  log "stopped"
}

cmd=${1:-}
[ $# -gt 0 ] && shift
case "$cmd" in
  setup) setup ;;
  up) up "$@" ;;
  deploy) [ $# -gt 0 ] || set -- "${DEFAULT_MODELS[@]}"; deploy "$@" ;;
  status) status ;;
  env) client_env ;;
  down) down ;;
  logs) tail_logs ;;
  *) echo "usage: scripts/ndif_local.sh setup|up [ID=DIR ...]|deploy [ID=DIR ...]|status|env|down|logs" >&2; exit 2 ;;
esac
