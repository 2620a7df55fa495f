#!/usr/bin/env bash
# docs/compare/: every allocation method at matched realised spend on the real pools
# (docs/compare.md quotes these reports). Run from any directory:
#   bash docs/compare.sh [DEMO_DIR] [POOLS_DIR]
# DEMO_DIR is a `howhard demo` work directory of the default size, POOLS_DIR the pools of
# docs/pools.sh; each is made when missing (resumable) and reused when present.
set -euo pipefail
# train compares its candidates on one 20% split (--holdout 0.2) here, as these outputs were
# made before its default became 5-fold cross-validation.
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
demo=$(realpath -m "${1:-howhard-demo}")
pools=$(realpath -m "${2:-howhard-pools}")
out=$here/compare
export OMP_WAIT_POLICY=PASSIVE  # llama.cpp's OpenMP threads spin-wait badly on a shared machine

[ -f "$demo/predictor-default.npz" ] || howhard demo --workdir "$demo"
for f in gemma/predictor.npz humaneval/gains.npz weak/router.npz strong/eval.jsonl; do
  [ -f "$pools/$f" ] || { bash "$here/pools.sh" "$pools"; break; }
done

# SmolLM2 arithmetic (the demo's evaluation pool, 500 queries x 32 samples), re-exported so that
# every sample carries its extracted answer (for majority vote) and token count.
howhard export "$demo/eval.sqlite" --out "$demo/eval-answers.jsonl"
howhard compare "$demo/eval-answers.jsonl" --predictor "$demo/predictor-default.npz" \
  --feature-cache "$demo/features-hidden.npz" --budgets 1,2,4,8,16 --max-per-query 32 \
  --replays 200 --title "SmolLM2-135M arithmetic (demo)" --out "$out/smollm2-arithmetic"

# Gemma 3 270M arithmetic (150 queries x 16 samples).
howhard compare "$pools/gemma/eval.jsonl" --predictor "$pools/gemma/predictor.npz" \
  --feature-cache "$pools/gemma/features.npz" --budgets 1,2,4,8 --max-per-query 16 \
  --replays 200 --title "Gemma 3 270M arithmetic" --out "$out/gemma-arithmetic"

# HumanEval, SmolLM2, continuous reward (fraction of test assertions passed; 64 x 8 samples).
howhard compare "$pools/humaneval/eval.jsonl" --predictor "$pools/humaneval/gains.npz" \
  --feature-cache "$pools/humaneval/features.npz" --budgets 1,2,4 --max-per-query 8 \
  --replays 200 --title "HumanEval (SmolLM2, fraction of tests passed)" --out "$out/humaneval"

# Routing pools (weak = one SmolLM2 sample, strong = majority of 5; 150 x 8 and 150 x 4 samples):
# success predictors of each decoder for the joint choice of decoder and k.
for side in weak strong; do
  [ -f "$pools/$side/success.npz" ] || howhard train --holdout 0.2 "$pools/$side/train.jsonl" \
    --out "$pools/$side/success.npz" --feature-cache "$pools/weak/features.npz"
done
howhard compare "$pools/weak/eval.jsonl" --strong "$pools/strong/eval.jsonl" \
  --predictor "$pools/weak/success.npz" --strong-predictor "$pools/strong/success.npz" \
  --feature-cache "$pools/weak/features.npz" --budgets 1,2,4,8 --max-per-query 8 \
  --replays 200 --title "Joint decoder x samples (SmolLM2 weak vs vote-of-5 strong)" \
  --out "$out/routing-joint"
# The same with the strong decoder's success rate from the router instead of its own predictor.
howhard compare "$pools/weak/eval.jsonl" --strong "$pools/strong/eval.jsonl" \
  --predictor "$pools/weak/success.npz" --router "$pools/weak/router.npz" --observe verifier \
  --feature-cache "$pools/weak/features.npz" --budgets 1,2,4,8 --max-per-query 8 \
  --replays 200 --title "Joint decoder x samples, strong predicted by the router" \
  --out "$out/routing-joint-router"
