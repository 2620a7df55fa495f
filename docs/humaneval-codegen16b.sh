#!/usr/bin/env bash
# The HumanEval CodeGen-16B pool and its best-of-k report (docs/humaneval-codegen16b.md).
# Run from the repository root:
#   bash docs/humaneval-codegen16b.sh [POOL]     (scoring is resumable: rerun after a crash)
# DATA names the data directory (completions.jsonl.gz, generated_tests.jsonl.gz).
set -euo pipefail
data=${DATA:-/work/shared/data/humaneval-codegen16b}
pool=${1:-/work/data/humaneval-codegen16b.jsonl.gz}
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
out=$here/humaneval-codegen16b
mkdir -p "$out"
export OMP_WAIT_POLICY=PASSIVE

# 1. The pool: 16,400 completions in the sandbox against the benchmark's tests and the
#    generated tests' inputs (skipped when the pool exists; its summary line is kept). 8 workers
#    on 2 cores: a check mostly waits (sandbox start-up, scheduling), see the page.
if [ ! -f "$pool" ]; then
  { echo "start $(date -Iseconds) load $(cut -d' ' -f1-3 /proc/loadavg)"
    /usr/bin/time -f "Elapsed (wall clock) time (h:mm:ss or m:ss): %E" \
      howhard score --task humaneval --samples "$data/completions.jsonl.gz" \
      --generated-tests "$data/generated_tests.jsonl.gz" --output "$pool" --workers 8 --quiet 2>&1
    echo "end $(date -Iseconds) load $(cut -d' ' -f1-3 /proc/loadavg)"; } | tee "$out/score.txt"
fi

# 2. Best-of-k, k = 1..100, pass/fail: oracle vs generated tests (top score; CodeT's dual
#    agreement, a seeded Monte-Carlo estimate) vs behaviour majority vs random.
howhard bestof "$pool" --binarize --title "HumanEval, CodeGen-16B: best-of-k by who chooses" \
  --draws 2000 --seed 0 --out "$out" > /dev/null

# 3. The sandbox's throughput on this workload, against the same checks without it.
python "$here/../bench/bench_sandbox.py" --n 120 --workers 4 | tee "$out/bench_sandbox.txt"
