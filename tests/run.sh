#!/usr/bin/env bash
# tests/run.sh — run every test suite of the project and print one summary line for CI:
# "N passed, N failed". Each suite's output goes to build/test-logs/<suite>.log; failures are
# printed in full. Counts come from cmocka's own summary or a suite's "N passed, N failed" line.
# Environment: CMTP_FUZZ_SECONDS (default 5 per target: a smoke run from the committed corpus;
# long runs by hand, see README), CMTP_TEST_FILTER (substring of suite
# names to run), CMTP_INTEGRATION_BUILDS (default "build/asan build").
set -u
cd "$(dirname "$0")/.."
logs=build/test-logs
mkdir -p "$logs"
total_pass=0
total_fail=0
failed_suites=()
filter=${CMTP_TEST_FILTER:-}

# run_suite NAME CMD...: run CMD, log it, add its counts.
run_suite() {
  local name=$1; shift
  if [ -n "$filter" ] && [[ "$name" != *"$filter"* ]]; then return 0; fi
  local log="$logs/${name//\//_}.log" rc p f t0 t1
  t0=$(date +%s.%N)
  "$@" >"$log" 2>&1 </dev/null
  rc=$?
  t1=$(date +%s.%N)
  p=0; f=0
  # cmocka: "[  PASSED  ] 12 test(s)." / "[  FAILED  ] 1 test(s), listed below:"
  local cp cf plain
  cp=$(grep -E '^\[  PASSED  \] [0-9]+ test' "$log" | awk '{s+=$4} END {print s+0}')
  cf=$(grep -E '^\[  FAILED  \] [0-9]+ test' "$log" | awk '{s+=$4} END {print s+0}')
  plain=$(grep -E '^([A-Za-z-]+: )?[0-9]+ passed, [0-9]+ failed' "$log" | tail -n 1)
  if [ -n "$plain" ]; then
    p=$(echo "$plain" | sed -E 's/^([A-Za-z-]+: )?([0-9]+) passed.*/\2/')
    f=$(echo "$plain" | sed -E 's/.* ([0-9]+) failed.*/\1/')
  fi
  p=$((p + cp)); f=$((f + cf))
  if [ $rc -ne 0 ] && [ $f -eq 0 ]; then f=1; fi
  if [ $rc -eq 0 ] && [ $p -eq 0 ] && [ $f -eq 0 ]; then p=1; fi
  total_pass=$((total_pass + p)); total_fail=$((total_fail + f))
  printf '%-48s %4d passed %3d failed  %6.1fs\n' "$name" "$p" "$f" "$(awk -v a="$t0" -v b="$t1" 'BEGIN{print b-a}')"
  if [ $f -ne 0 ]; then
    failed_suites+=("$name")
    echo "----- $log (last 60 lines) -----"
    tail -n 60 "$log"
    echo "-----"
  fi
}

# Static checks.
run_suite check-deps bash scripts/check-deps.sh .
run_suite check-deps-catches bash tests/integration/check_deps_selftest.sh
run_suite fmt-check make -s fmt-check

# Unit tests, release and ASan+UBSan.
for b in build build/asan; do
  for t in "$b"/tests/test_*; do
    [ -x "$t" ] || continue
    run_suite "unit:${b#build}:$(basename "$t")" env CMOCKA_MESSAGE_OUTPUT=stdout CMTPCTL_BIN="$PWD/$b/cmtpctl" "$t"
  done
done

# Integration tests drive the real binaries (ASan build first, then release).
for b in ${CMTP_INTEGRATION_BUILDS:-build/asan build}; do
  for s in tests/integration/test_*.sh; do
    [ -f "$s" ] || continue
    run_suite "integration:${b#build}:$(basename "$s" .sh)" env CMTP_BUILD="$b" bash "$s"
  done
done

# Fuzz targets: regressions first, then a bounded run from the committed corpus.
secs=${CMTP_FUZZ_SECONDS:-5}
seed=${CMTP_FUZZ_SEED:-1} # fixed: the same verdict on the same code (0: libFuzzer draws one)
for fz in build/fuzz/fuzz_*; do
  [ -x "$fz" ] || continue
  n=$(basename "$fz"); n=${n#fuzz_}
  if [ -d "tests/fuzz/regressions/$n" ] && [ -n "$(ls -A "tests/fuzz/regressions/$n")" ]; then
    run_suite "fuzz-regress:$n" "$fz" tests/fuzz/regressions/"$n"/*
  fi
  tmp=$(mktemp -d)
  run_suite "fuzz:$n" "$fz" -max_total_time="$secs" -seed="$seed" -rss_limit_mb=2048 -timeout=10 \
    -print_final_stats=1 "$tmp" "tests/fuzz/corpus/$n"
  rm -rf "$tmp"
done

echo
if [ ${#failed_suites[@]} -ne 0 ]; then
  echo "failed suites: ${failed_suites[*]}"
fi
echo "$total_pass passed, $total_fail failed"
[ $total_fail -eq 0 ]
