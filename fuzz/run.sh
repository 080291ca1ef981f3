#!/usr/bin/env bash
# Builds the libFuzzer targets (clang, `fuzz` preset) and fuzzes each for SECONDS (default 60),
# growing the committed corpus in fuzz/corpus/<target>. Findings land as crash-* files in the
# current directory. Usage: fuzz/run.sh [--scratch] [SECONDS] [TARGET...]
# --scratch (the test suite's brief run): the committed corpora are only read; what the run
# finds goes to a temporary directory, removed after; findings land in build/fuzz/. One line
# per target: `fuzz TARGET: N runs in S s, cov C, ft F, corpus K (+NEW)`. A finding (crash,
# leak, timeout, sanitizer report) stops the script with status 1 and the fuzzer's output.
# Every target by default (fuzz/CMakeLists.txt's NICMUX_FUZZ_TARGETS). docs/fuzzing.md.
set -euo pipefail
cd "$(dirname "$0")/.."
scratch=0
if [ "${1:-}" = --scratch ]; then
  scratch=1
  shift
fi
secs=${1:-60}
shift || true
targets=("$@")
[ ${#targets[@]} -gt 0 ] || read -r -a targets <<< "$(sed -n '/^set(NICMUX_FUZZ_TARGETS/,/)/p' fuzz/CMakeLists.txt |
  tr -d '()' | sed 's/set//; s/NICMUX_FUZZ_TARGETS//' | tr '\n' ' ')"
cmake --preset fuzz >/dev/null
cmake --build --preset fuzz --target "${targets[@]}"
for t in "${targets[@]}"; do
  if [ $scratch = 0 ]; then
    echo "== fuzzing $t for ${secs}s"
    ./build/fuzz/fuzz/"$t" -max_total_time="$secs" -rss_limit_mb=2048 -print_final_stats=1 \
      -max_len=16384 "fuzz/corpus/$t"
    continue
  fi
  new=$(mktemp -d /tmp/nicmux-fuzz.XXXXXX)
  log=build/fuzz/$t.log
  if ! ./build/fuzz/fuzz/"$t" -max_total_time="$secs" -rss_limit_mb=2048 -print_final_stats=1 -max_len=16384 \
    -artifact_prefix="build/fuzz/$t-" "$new" "fuzz/corpus/$t" >"$log" 2>&1; then
    rm -rf "$new"
    echo "FAIL: fuzz $t found something (build/fuzz/$t-*):" >&2
    tail -n 60 "$log" >&2
    exit 1
  fi
  rm -rf "$new"
  stat() { sed -n "s/^stat::$1: *//p" "$log" | tail -n 1; }
  last=$(grep -E '^#[0-9]+' "$log" | tail -n 1)
  cov=$(sed -n 's/.* cov: \([0-9]*\).*/\1/p' <<<"$last")
  ft=$(sed -n 's/.* ft: \([0-9]*\).*/\1/p' <<<"$last")
  corp=$(sed -n 's/.* corp: \([0-9]*\).*/\1/p' <<<"$last")
  echo "fuzz $t: $(stat number_of_executed_units) runs in ${secs} s, cov ${cov:-?}, ft ${ft:-?}, corpus ${corp:-?} (+$(stat new_units_added))"
done
