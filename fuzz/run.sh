#!/usr/bin/env bash
# The recorded long fuzz runs (issue #9): every target in turn for SECONDS (default 600) on
# stable without sanitizers, niced, with an RSS limit so unbounded allocation is a crash. New
# inputs go to fuzz/corpus-grown/<target> (not committed); the seeds in fuzz/corpus/<target>
# are only read. One summary line per target goes to stdout; full logs to fuzz/corpus-grown/.
#   fuzz/run.sh [SECONDS] [TARGET...]
set -uo pipefail
cd "$(dirname "$0")"
secs=${1:-600}
shift || true
targets=("$@")
[ ${#targets[@]} -gt 0 ] || targets=(gguf_load gguf resume metainfo piece_wire pipeline_frame envelope response manifest bt_wire)
mkdir -p corpus-grown
cargo fuzz build -s none >/dev/null 2>&1 || { echo "cargo fuzz build failed"; exit 1; }
for t in "${targets[@]}"; do
  max_len=4096
  case $t in gguf|gguf_load) max_len=65536 ;; envelope|response|manifest) max_len=16384 ;; esac
  mkdir -p "corpus-grown/$t"
  start=$(date +%s)
  nice -n 19 cargo fuzz run "$t" -s none "corpus-grown/$t" "corpus/$t" -- \
    -max_total_time="$secs" -rss_limit_mb=2048 -timeout=20 -max_len="$max_len" \
    -print_final_stats=1 > "corpus-grown/$t.log" 2>&1
  rc=$?
  end=$(date +%s)
  runs=$(grep -o 'stat::number_of_executed_units: *[0-9]*' "corpus-grown/$t.log" | grep -o '[0-9]*$')
  rss=$(grep -o 'stat::peak_rss_mb: *[0-9]*' "corpus-grown/$t.log" | grep -o '[0-9]*$')
  n=$(ls "corpus-grown/$t" | wc -l)
  crashes=$(ls "artifacts/$t" 2>/dev/null | wc -l)
  echo "$t: exit $rc, $((end - start)) s, ${runs:-?} executions, peak RSS ${rss:-?} MB, grown corpus $n inputs, artifacts $crashes"
done
