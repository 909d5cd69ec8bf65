#!/bin/sh
# Entry point of the shardswarm image: runs `shardswarm "$@"`. For `server` and `node` it turns
# two optional settings into flags, so that a compose file can leave them unset:
#   SHARDSWARM_API_KEY         -> --api-key "$SHARDSWARM_API_KEY"        (when set and not empty)
#   SHARDSWARM_SWARM_KEY_FILE  -> --swarm-key "$SHARDSWARM_SWARM_KEY_FILE" (when set and not empty)
# `shardswarm status` and `chat` read SHARDSWARM_API_KEY themselves.
set -eu
case "${1:-}" in
  server | node)
    if [ -n "${SHARDSWARM_API_KEY:-}" ]; then
      set -- "$@" --api-key "$SHARDSWARM_API_KEY"
    fi
    if [ -n "${SHARDSWARM_SWARM_KEY_FILE:-}" ]; then
      if [ ! -r "$SHARDSWARM_SWARM_KEY_FILE" ]; then
        echo "shardswarm-entrypoint: swarm key $SHARDSWARM_SWARM_KEY_FILE is not readable by uid $(id -u) (chgrp 10001 it and chmod 640 on the host)" >&2
        exit 2
      fi
      set -- "$@" --swarm-key "$SHARDSWARM_SWARM_KEY_FILE"
    fi
    ;;
esac
exec shardswarm "$@"
