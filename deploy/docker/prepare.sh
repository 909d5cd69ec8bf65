#!/bin/sh
# One-shot preparation of the server's shards directory, safe to run again:
#   1. the model: $SHARDSWARM_MODEL (a GGUF path inside the container) or, when unset, the
#      default model from `shardswarm fetch-model` (cached in $XDG_CACHE_HOME, SHA-256 checked);
#   2. the shards: `shardswarm split MODEL --shards $SHARDSWARM_SHARDS --out $SHARDSWARM_SHARDS_DIR`,
#      skipped when that directory's manifest.json already describes this model (its SHA-256)
#      split into that many shards. `split` is deterministic, so a re-split writes the same bytes.
# Shard files left over from an earlier split into more shards are removed.
set -eu
shards="${SHARDSWARM_SHARDS:-8}"
out="${SHARDSWARM_SHARDS_DIR:-/shards}"
case "$shards" in
  '' | *[!0-9]*) echo "shardswarm-prepare: SHARDSWARM_SHARDS must be a number, got '$shards'" >&2; exit 2 ;;
esac

if [ -n "${SHARDSWARM_MODEL:-}" ]; then
  model="$SHARDSWARM_MODEL"
  [ -r "$model" ] || { echo "shardswarm-prepare: cannot read SHARDSWARM_MODEL=$model" >&2; exit 2; }
else
  echo "shardswarm-prepare: fetching the default model" >&2
  model="$(shardswarm fetch-model)"
fi
sha="$(sha256sum "$model" | cut -d' ' -f1)"

manifest="$out/manifest.json"
if [ -f "$manifest" ] \
  && grep -q "\"source_sha256\": \"$sha\"" "$manifest" \
  && grep -q "\"total_shards\": $shards," "$manifest"; then
  echo "shardswarm-prepare: $out already holds $model split into $shards shards; nothing to do" >&2
  exit 0
fi

echo "shardswarm-prepare: splitting $model into $shards shards in $out" >&2
mkdir -p "$out"
rm -f "$manifest"
shardswarm split "$model" --shards "$shards" --out "$out"
# Shards of an earlier split into more pieces: the manifest ignores them, a reader without it
# would not.
for f in "$out"/shard-*.gguf; do
  [ -e "$f" ] || continue
  n="${f##*/shard-}"
  n="${n%.gguf}"
  case "$n" in
    '' | *[!0-9]*) continue ;;
  esac
  if [ "$n" -ge "$shards" ]; then
    rm -f "$f"
  fi
done
echo "shardswarm-prepare: done" >&2
