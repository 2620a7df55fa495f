#!/usr/bin/env bash
# The real pools of docs/pools.md: each labeled with the embedded models through llama.cpp,
# trained on a training pool and evaluated on a disjoint one. Run from any directory:
#   bash docs/pools.sh WORKDIR        (labels are resumable: rerun after a crash)
# Reports land in WORKDIR/<pool>/report*/; docs/pools.md quotes them.
set -euo pipefail
work=${1:-howhard-pools}
# train compares its candidates on one 20% split (--holdout 0.2) here, as these outputs were
# made before its default became 5-fold cross-validation.
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
mkdir -p "$work" && cd "$work"
export OMP_WAIT_POLICY=PASSIVE  # llama.cpp's OpenMP threads spin-wait badly on a shared machine

label_pair() {  # name task train-queries train-samples eval-queries eval-samples [label flags...]
  local name=$1 task=$2 nt=$3 st=$4 ne=$5 se=$6
  shift 6
  mkdir -p "$name"
  howhard label --task "$task" --queries "$nt" --query-seed 1 --samples "$st" \
    --store "$name/train.sqlite" --quiet "$@"
  howhard export "$name/train.sqlite" --out "$name/train.jsonl"
  howhard label --task "$task" --queries "$ne" --query-seed 2 --exclude "$name/train.jsonl" \
    --samples "$se" --store "$name/eval.sqlite" --quiet "$@"
  howhard export "$name/eval.sqlite" --out "$name/eval.jsonl"
}

# HumanEval, SmolLM2: continuous reward (fraction of test assertions passed) and pass/fail.
label_pair humaneval humaneval 100 4 64 8
howhard train --holdout 0.2 humaneval/train.jsonl --task humaneval --out humaneval/gains.npz \
  --feature-cache humaneval/features.npz
howhard evaluate humaneval/eval.jsonl --predictor humaneval/gains.npz --budgets 1,2,4 \
  --max-per-query 8 --feature-cache humaneval/features.npz --out humaneval/report-fraction
howhard train --holdout 0.2 humaneval/train.jsonl --task humaneval --binarize \
  --out humaneval/pass.npz --feature-cache humaneval/features.npz
howhard evaluate humaneval/eval.jsonl --binarize --predictor humaneval/pass.npz --budgets 1,2,4 \
  --max-per-query 8 --feature-cache humaneval/features.npz --out humaneval/report-pass

# Routing on arithmetic: weak = one SmolLM2 sample, strong = the majority answer of 5 samples.
label_pair weak arithmetic 300 8 150 8
label_pair strong arithmetic 300 4 150 4 --vote 5
howhard train --holdout 0.2 weak/train.jsonl --strong strong/train.jsonl --out weak/router.npz \
  --feature-cache weak/features.npz
howhard evaluate weak/eval.jsonl --strong strong/eval.jsonl --predictor weak/router.npz \
  --feature-cache weak/features.npz --out weak/report-routing

# Arithmetic, Gemma 3 270M (a base model; SmolLM2's arithmetic pools are the demo's).
label_pair gemma arithmetic 300 8 150 16 --model gemma3-270m
howhard train --holdout 0.2 gemma/train.jsonl --model gemma3-270m --out gemma/predictor.npz \
  --feature-cache gemma/features.npz
howhard evaluate gemma/eval.jsonl --predictor gemma/predictor.npz --budgets 1,2,4,8 \
  --max-per-query 16 --feature-cache gemma/features.npz --out gemma/report

# GSM8K and MATH-500, SmolLM2: how often a 135M model solves them at all.
for task in gsm8k math500; do
  label_pair "$task" "$task" 30 2 30 4 --max-tokens 200
  howhard train --holdout 0.2 "$task/train.jsonl" --task "$task" --out "$task/predictor.npz" \
    --feature-cache "$task/features.npz"
  howhard evaluate "$task/eval.jsonl" --predictor "$task/predictor.npz" --budgets 1,2,4 \
    --max-per-query 4 --feature-cache "$task/features.npz" --out "$task/report"
done

# Copy the reports (and plots) next to this script: docs/pools/<pool>.md quotes them verbatim.
docs=$here/pools
mkdir -p "$docs"
for report in */report*/report.md; do
  name=$(dirname "$report" | tr / -)
  sed "s|](plot.png)|]($name.png)|" "$report" > "$docs/$name.md"
  cp "$(dirname "$report")/plot.png" "$docs/$name.png"
done
