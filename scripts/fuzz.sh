#!/usr/bin/env bash
# Long fuzzing run: every property of tests/fuzz (datagrams, protobuf messages and tensors,
# plans, chat bodies, GGUF headers, peers files) for a time budget, with fresh random cases
# each round. `cargo test --test fuzz` runs the same properties briefly.
#
#   scripts/fuzz.sh [minutes]        default 10, split evenly over the targets
#
# Environment: EXO_FUZZ_CASES   cases per round (default 1000; a round is one proptest run)
#              EXO_FUZZ_FILTER  run only the tests whose name contains this
#              NICE             niceness for the run (default 19)
# Prints the cases run per target and the total; exits non-zero if any target failed (its
# shrunk input is in the log printed above the summary: keep it as a regression test).
set -euo pipefail
cd "$(dirname "$0")/.."

minutes="${1:-10}"
nice_level="${NICE:-19}"
export EXO_FUZZ_CASES="${EXO_FUZZ_CASES:-1000}"
export RUST_BACKTRACE=0

echo "building the fuzz targets..."
binary=$(nice -n "$nice_level" cargo test --test fuzz --no-run --message-format=json 2>/dev/null \
  | python3 -c 'import json,sys
for line in sys.stdin:
    m = json.loads(line)
    if m.get("reason") == "compiler-artifact" and m.get("target", {}).get("name") == "fuzz" and m.get("executable"):
        print(m["executable"])' | tail -1)
if [[ -z "$binary" ]]; then
  echo "could not build tests/fuzz (run: cargo test --test fuzz --no-run)" >&2
  exit 2
fi

# Run a copy, so that a rebuild during a long run does not swap the binary under it.
run_dir=$(mktemp -d -t exo-fuzz.XXXXXX)
trap 'rm -rf "$run_dir"' EXIT
cp "$binary" "$run_dir/fuzz"
binary="$run_dir/fuzz"

mapfile -t tests < <("$binary" --list --format terse 2>/dev/null | sed -n 's/: test$//p' \
  | grep -F -- "${EXO_FUZZ_FILTER:-}")
if [[ ${#tests[@]} -eq 0 ]]; then
  echo "no fuzz tests match '${EXO_FUZZ_FILTER:-}'" >&2
  exit 2
fi
# Regression tests (kept failing cases) run once; the budget is split over the others.
fuzzing=$(printf '%s\n' "${tests[@]}" | grep -vc "::regression_" || true)
per_test=$(python3 -c "print(round(max(1.0, $minutes * 60 / max(1, $fuzzing)), 1))")
echo "fuzzing $fuzzing targets (and $((${#tests[@]} - fuzzing)) regression tests) for ${minutes} min (${per_test} s each, ${EXO_FUZZ_CASES} cases per round)"

log=$(mktemp -t exo-fuzz-log.XXXXXX)
failed=()
for test in "${tests[@]}"; do
  if ! EXO_FUZZ_SECONDS="$per_test" nice -n "$nice_level" "$binary" --exact "$test" \
      --test-threads=1 --nocapture >>"$log" 2>&1; then
    failed+=("$test")
    echo "FAILED: $test"
  fi
done

echo
echo "cases run per target:"
# libtest prints "test NAME ... " before a test's output, so the lines are found anywhere.
grep -ao "fuzz [^ ]*: [0-9]* cases, 0 failures, [0-9.]* s" "$log" | sed 's/^fuzz /  /' || true
total=$(grep -ao "fuzz [^ ]*: [0-9]* cases" "$log" | awk '{s += $3} END {print s + 0}')
panics=$(grep -ac "panicked at" "$log" || true)
echo "total: $total cases in ${#tests[@]} tests, ${#failed[@]} failed, $panics panics"
if [[ ${#failed[@]} -gt 0 ]]; then
  echo "failures (full log: $log):"
  grep -a -B2 -A30 "failed after" "$log" | head -120 || true
  printf '  %s\n' "${failed[@]}"
  exit 1
fi
rm -f "$log"
echo "zero panics, zero failures"
