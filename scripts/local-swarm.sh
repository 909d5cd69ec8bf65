#!/usr/bin/env bash
# The local swarm on loopback, today's main job: fetch the default model, split it into 8 shards,
# start a server and 3 nodes as separate processes (`--shards auto --max-shards 3`: the server
# assigns each a window), let them fetch their shards from the server and from each other, and
# wait for swarm ready. (`shardswarm demo` replaces this once distributed inference exists.)
# Usage: scripts/local-swarm.sh [NODES]   — state lives in ./.demo (reused by a second run).
set -euo pipefail
cd "$(dirname "$0")/.."
NODES=${1:-3}
DEMO=.demo
cargo build -p shardswarm-cli   # dev profile; dependencies are built with opt-level 3
BIN=${SHARDSWARM_BIN:-target/debug/shardswarm}
mkdir -p "$DEMO"
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; }
trap cleanup EXIT INT TERM

MODEL=$("$BIN" fetch-model)
[ -f "$DEMO/shards/manifest.json" ] || "$BIN" split "$MODEL" --shards 8 --out "$DEMO/shards"

rm -f "$DEMO/server/server.addrs" "$DEMO/server/http.addr"
"$BIN" server --shards-dir "$DEMO/shards" --data-dir "$DEMO/server" \
  --listen /ip4/127.0.0.1/udp/0/quic-v1 --listen /ip4/127.0.0.1/tcp/0 --http 127.0.0.1:0 \
  > "$DEMO/server.out" 2> "$DEMO/server.log" &
pids+=($!)
for _ in $(seq 100); do [ -s "$DEMO/server/http.addr" ] && break; sleep 0.1; done
[ -s "$DEMO/server/http.addr" ] || { echo "server did not start; see $DEMO/server.log" >&2; exit 1; }
cat "$DEMO/server.out"
SERVER=$(head -1 "$DEMO/server/server.addrs")

for i in $(seq 1 "$NODES"); do
  "$BIN" node --server "$SERVER" --data-dir "$DEMO/node$i" --shards auto --max-shards 3 \
    --listen /ip4/127.0.0.1/udp/0/quic-v1 --listen /ip4/127.0.0.1/tcp/0 \
    > "$DEMO/node$i.out" 2> "$DEMO/node$i.log" &
  pids+=($!)
done
HTTP=$(cat "$DEMO/server/http.addr")
ready=no
for _ in $(seq 600); do
  if "$BIN" status --http "$HTTP" --json | grep -q '"swarm_ready": true'; then ready=yes; break; fi
  sleep 0.2
done
echo "--- node1's log ---"
cat "$DEMO/node1.log"
echo "--- the server's log (assignment and readiness) ---"
grep -E "SWARM|Assigned" "$DEMO/server.log" || true
echo "--- the swarm, as the server sees it ---"
"$BIN" status --http "$HTTP"
[ "$ready" = yes ] || { echo "the swarm did not become ready in 120 s" >&2; exit 1; }
