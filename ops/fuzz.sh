#!/usr/bin/env bash
# ops/fuzz.sh - build the fuzz targets in fuzz/ and run each for a bounded time.
#
# Usage: ops/fuzz.sh [SECONDS_PER_TARGET] [TARGET...]
#   SECONDS_PER_TARGET  how long each target runs, in seconds (default 30; libFuzzer's
#                       -max_total_time)
#   TARGET...           only these targets (default: all, as `cargo fuzz list` names
#                       them: routes, tokens, payload, merge_patch, bulk_lines,
#                       stream_entry; docs/development.md says what each covers)
#
# It needs the nightly toolchain (`rustup toolchain install nightly`) and installs
# cargo-fuzz with `cargo install cargo-fuzz --locked` when it is missing. It builds every
# target once (`cargo +nightly fuzz build`), then runs the built binaries one after
# another, each on one core at low priority, and stops by itself. Each runs on a 2 MiB
# stack (`ulimit -s`), a tokio worker's, so recursion that would overflow a worker fails
# here too. Corpora grow in fuzz/corpus/<target>/ (gitignored), seeded from
# fuzz/seeds/<target>/; the JSON targets use fuzz/json.dict. A crash, a failed property
# or a slow input (10 s) leaves its input in fuzz/artifacts/<target>/; the script goes on
# with the other targets, then exits 1 and lists them. Reproduce one with
# `cd fuzz && cargo +nightly fuzz run <target> artifacts/<target>/<file>`.
#
# Not part of `ops/dev.sh test` (CI): fuzzing is open-ended and needs nightly.
#
# Environment: FUZZ_ARGS, extra libFuzzer flags for every run (e.g. "-max_len=65536");
# CARGO_TARGET_DIR, where the build goes (default fuzz/target).
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd -P)
SECONDS_PER_TARGET=${1:-30}
shift || true

log() { printf 'fuzz.sh: %s\n' "$*" >&2; }
die() { printf 'fuzz.sh: error: %s\n' "$*" >&2; exit 2; }

if ! [[ $SECONDS_PER_TARGET =~ ^[0-9]+$ ]] || ((SECONDS_PER_TARGET == 0)); then
  die "SECONDS_PER_TARGET must be a positive number of seconds, got '$SECONDS_PER_TARGET'"
fi
cargo +nightly --version >/dev/null 2>&1 ||
  die "the nightly toolchain is missing: rustup toolchain install nightly"
if ! cargo fuzz --version >/dev/null 2>&1; then
  log "installing cargo-fuzz"
  cargo install cargo-fuzz --locked
fi

cd "$ROOT/fuzz"
log "building the fuzz targets"
nice cargo +nightly fuzz build
# The runs use the binaries of this build (`cargo fuzz run` would rebuild whenever the
# tree changes under it).
host=$(rustc +nightly -vV | sed -n 's/^host: //p')
bin_dir=${CARGO_TARGET_DIR:-$ROOT/fuzz/target}/$host/release
if (($# > 0)); then
  targets=("$@")
else
  mapfile -t targets < <(cargo +nightly fuzz list)
fi

failed=()
for target in "${targets[@]}"; do
  [[ -x $bin_dir/$target ]] || die "no fuzz target '$target' in $bin_dir"
  mkdir -p "corpus/$target" "artifacts/$target"
  dirs=("corpus/$target")
  [[ -d seeds/$target ]] && dirs+=("seeds/$target")
  flags=(-artifact_prefix="artifacts/$target/" -max_total_time="$SECONDS_PER_TARGET"
    -timeout=10 -rss_limit_mb=2048 -print_final_stats=1)
  case $target in
    payload | merge_patch | bulk_lines) flags+=(-dict=json.dict) ;;
  esac
  log "running $target for ${SECONDS_PER_TARGET}s"
  # shellcheck disable=SC2086 # FUZZ_ARGS is a list of flags
  if ! (ulimit -s 2048 && nice "$bin_dir/$target" "${flags[@]}" ${FUZZ_ARGS:-} "${dirs[@]}"); then
    failed+=("$target")
  fi
done

if ((${#failed[@]} > 0)); then
  log "FAILED: ${failed[*]} (inputs in fuzz/artifacts/<target>/)"
  exit 1
fi
log "no crash in ${targets[*]} (${SECONDS_PER_TARGET}s each)"
