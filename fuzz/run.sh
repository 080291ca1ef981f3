#!/usr/bin/env bash
# Builds the libFuzzer targets (clang, `fuzz` preset) and fuzzes each for SECONDS (default 60),
# growing the committed corpus in fuzz/corpus/<target>. Findings land as crash-* files in the
# current directory. Usage: fuzz/run.sh [SECONDS] [TARGET...]
set -euo pipefail
cd "$(dirname "$0")/.."
secs=${1:-60}
shift || true
targets=("$@")
# Default: every target of fuzz/CMakeLists.txt's NICMUX_FUZZ_TARGETS.
[ ${#targets[@]} -gt 0 ] || read -r -a targets <<< "$(sed -n '/^set(NICMUX_FUZZ_TARGETS/,/)/p' fuzz/CMakeLists.txt |
  tr -d '()' | sed 's/set//; s/NICMUX_FUZZ_TARGETS//' | tr '\n' ' ')"
cmake --preset fuzz >/dev/null
cmake --build --preset fuzz --target "${targets[@]}"
for t in "${targets[@]}"; do
  echo "== fuzzing $t for ${secs}s"
  ./build/fuzz/fuzz/"$t" -max_total_time="$secs" -rss_limit_mb=2048 -print_final_stats=1 \
    -max_len=16384 "fuzz/corpus/$t"
done
