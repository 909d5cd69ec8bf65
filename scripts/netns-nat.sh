#!/usr/bin/env bash
# A small "internet" of Linux network namespaces for the NAT traversal test
# (crates/cli/tests/nat_netns.rs), also usable by hand:
#
#   scripts/netns-nat.sh up   PREFIX [cone|symmetric]
#   scripts/netns-nat.sh down PREFIX
#
#   PREFIX-pub   the public segment: a bridge, 10.77.0.1/24 (the shardswarm server runs here)
#   PREFIX-r1    NAT router: 10.77.0.11 on the public segment, 10.77.1.1/24 on its LAN
#   PREFIX-r2    NAT router: 10.77.0.12 on the public segment, 10.77.2.1/24 on its LAN
#   PREFIX-h1    a host behind r1: 10.77.1.2, default route via r1
#   PREFIX-h2    a host behind r2: 10.77.2.2, default route via r2
#
# Each router masquerades its LAN behind its public address (iptables MASQUERADE) and forwards
# into its LAN only what belongs to connections opened from inside (conntrack ESTABLISHED,RELATED)
# and drops the rest, also what is addressed to itself: a home router. `cone` (default) keeps source ports where it can, as Linux does, so hole
# punching can work; `symmetric` maps every new flow to a random port (--random-fully), which
# defeats hole punching and leaves the relay.
#
# Run processes inside with `ip netns exec PREFIX-h1 COMMAND`. Needs root, iproute2 and iptables.
# `down` kills whatever still runs in the namespaces, then deletes them (their links go with
# them); it is safe to call more than once.
set -euo pipefail

usage() {
  echo "usage: $0 up PREFIX [cone|symmetric] | down PREFIX" >&2
  exit 2
}

[ $# -ge 2 ] || usage
cmd=$1
p=$2
mode=${3:-cone}
case "$mode" in cone | symmetric) ;; *) usage ;; esac
# Namespace names are files under /run/netns; keep them short and plain.
[[ "$p" =~ ^[A-Za-z0-9_-]{1,40}$ ]] || { echo "bad prefix: $p" >&2; exit 2; }

nss=("$p-h1" "$p-h2" "$p-r1" "$p-r2" "$p-pub")

down() {
  for ns in "${nss[@]}"; do
    [ -e "/run/netns/$ns" ] || continue
    for pid in $(ip netns pids "$ns" 2>/dev/null); do
      kill -9 "$pid" 2>/dev/null || true
    done
    ip netns del "$ns" 2>/dev/null || true
  done
}

nsx() {
  local ns=$1
  shift
  ip netns exec "$ns" "$@"
}

router() {
  local r=$1 pub_ip=$2 lan_net=$3 h=$4
  ip netns add "$p-$r"
  ip netns add "$p-$h"
  # wan (router) <-> port on the public bridge; lan (router) <-> eth0 (host).
  ip link add "wan" netns "$p-$r" type veth peer name "port-$r" netns "$p-pub"
  ip -n "$p-pub" link set "port-$r" master br0 up
  ip link add "lan" netns "$p-$r" type veth peer name "eth0" netns "$p-$h"
  ip -n "$p-$r" link set lo up
  ip -n "$p-$r" addr add "$pub_ip/24" dev wan
  ip -n "$p-$r" link set wan up
  ip -n "$p-$r" addr add "$lan_net.1/24" dev lan
  ip -n "$p-$r" link set lan up
  ip -n "$p-$h" link set lo up
  ip -n "$p-$h" addr add "$lan_net.2/24" dev eth0
  ip -n "$p-$h" link set eth0 up
  ip -n "$p-$h" route add default via "$lan_net.1"
  nsx "$p-$r" sh -c 'echo 1 > /proc/sys/net/ipv4/ip_forward'
  local masq=(-j MASQUERADE)
  [ "$mode" = symmetric ] && masq=(-j MASQUERADE --random-fully)
  nsx "$p-$r" iptables -t nat -A POSTROUTING -o wan "${masq[@]}"
  nsx "$p-$r" iptables -A FORWARD -i lan -o wan -j ACCEPT
  nsx "$p-$r" iptables -A FORWARD -i wan -o lan -m conntrack --ctstate ESTABLISHED,RELATED -j ACCEPT
  nsx "$p-$r" iptables -P FORWARD DROP
  # Unsolicited packets to the router itself are dropped, not refused (a home router's
  # firewall): a hole punch's first packet must not be answered with a TCP RST.
  nsx "$p-$r" iptables -A INPUT -i wan -m conntrack --ctstate ESTABLISHED,RELATED -j ACCEPT
  nsx "$p-$r" iptables -A INPUT -i wan -j DROP
}

up() {
  trap 'echo "netns-nat: setup failed at line $LINENO; tearing down" >&2; down' ERR
  ip netns add "$p-pub"
  ip -n "$p-pub" link set lo up
  ip -n "$p-pub" link add br0 type bridge
  ip -n "$p-pub" addr add 10.77.0.1/24 dev br0
  ip -n "$p-pub" link set br0 up
  router r1 10.77.0.11 10.77.1 h1
  router r2 10.77.0.12 10.77.2 h2
  trap - ERR
  echo "netns-nat: up ($mode NAT): $p-pub 10.77.0.1; $p-h1 10.77.1.2 behind $p-r1 10.77.0.11; $p-h2 10.77.2.2 behind $p-r2 10.77.0.12"
}

case "$cmd" in
  up) up ;;
  down) down ;;
  *) usage ;;
esac
