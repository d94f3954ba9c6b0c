#!/usr/bin/env bash
# Runs every test suite and prints one summary line over all of them:
#   N passed, N failed
# preceded by "N skipped" when doctest skipped some cases.
# Counts are doctest test cases. Usage: tests/run_all.sh BUILD_DIR
set -u
build=${1:-build}
passed=0 failed=0 skipped=0
failures=""
run_suite() {  # name, command...
  local name=$1; shift
  local log
  log=$(mktemp)
  "$@" 2>&1 | tee "$log"
  local status=${PIPESTATUS[0]}
  local line
  line=$(grep -E '^\[doctest\] test cases:' "$log" | tail -n 1)
  # doctest prints a failure where it happens, so a log cut to its tail can
  # lose it; keep each failing case's name and first error for the summary.
  local failed_cases
  failed_cases=$(awk '/^TEST CASE:/ { name = $0; sub(/^TEST CASE: */, "", name) }
                   / (FATAL )?ERROR: / && name != "" { print "  " name "\n    " $0; name = "" }' "$log")
  [ -n "$failed_cases" ] && failures+="$failed_cases"$'\n'
  rm -f "$log"
  if [ -z "$line" ]; then
    echo "suite $name crashed or printed no summary (exit $status)"
    failed=$((failed + 1))
    return
  fi
  local p f s
  p=$(sed -E 's/.*\| *([0-9]+) passed.*/\1/' <<<"$line")
  f=$(sed -E 's/.*\| *([0-9]+) failed.*/\1/' <<<"$line")
  s=$(sed -E 's/.*\| *([0-9]+) skipped.*/\1/' <<<"$line")
  passed=$((passed + p)) failed=$((failed + f)) skipped=$((skipped + s))
  if [ "$status" -ne 0 ] && [ "$f" -eq 0 ]; then failed=$((failed + 1)); fi
}
export SMARTTRIM_BIN="$build/smarttrim"  # tests/test_cli.cpp runs it
run_suite unit "$build/unit_tests"
if [ -n "$failures" ]; then
  echo "failed test cases:"
  printf "%s" "$failures"
fi
# The last line is exactly "N passed, N failed" (what CI reads); skipped
# cases (the GPU suites on a machine without a GPU) are counted just above it.
[ "$skipped" -gt 0 ] && echo "$skipped skipped"
echo "$passed passed, $failed failed"
[ "$failed" -eq 0 ]
