#!/usr/bin/env bash
# docs/cruxeval-menu/: the CRUXEval menu of issue 13 (docs/cruxeval-menu.toml: codellama 7b, 13b,
# 34b, GPT-3.5 and GPT-4 at 0.2, 0.3, 0.8, 2 and 60 per sample). One char-n-gram logistic
# success predictor per model is trained on problems 0-399 (pool file order, sample_0 ..
# sample_399) and every method is compared on problems 400-799; then again with task-feature
# predictors (the last three commands). Run from any directory:
#   bash docs/cruxeval-menu.sh [WORK_DIR]
# WORK_DIR (default ./howhard-cruxeval-menu) keeps the predictors and the feature cache.
set -euo pipefail
# train compares its candidates on one 20% split (--holdout 0.2) here, as these outputs were
# made before its default became 5-fold cross-validation.
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
work=$(realpath -m "${1:-howhard-cruxeval-menu}")
out=$here/cruxeval-menu
export OMP_WAIT_POLICY=PASSIVE

howhard train --holdout 0.2 --menu "$here/cruxeval-menu.toml" --rows 0:400 --features ngrams \
  --head logistic --feature-cache "$work/features.npz" --out "$work/predictors"
howhard evaluate --menu "$work/predictors/menu.toml" --rows 400:800 \
  --feature-cache "$work/features.npz" --out "$out/predictors" > /dev/null
howhard compare --menu "$work/predictors/menu.toml" --rows 400:800 --observe majority,verifier \
  --feature-cache "$work/features.npz" --replays 50 \
  --policies probe-escalate,escalate,cascade,esc,adaptive-consistency,routellm,best-single \
  --title "CRUXEval menu, problems 400-799" --out "$out/compare" > /dev/null
# The sequential menu policy, with and without the predictions, on its own: its replays are the
# slowest (10 random sample orders here, not 50)
howhard compare --menu "$work/predictors/menu.toml" --rows 400:800 --observe majority,verifier \
  --feature-cache "$work/features.npz" --replays 10 \
  --policies sequential-menu,sequential-menu-flat \
  --title "CRUXEval menu, problems 400-799: the sequential menu policy" \
  --out "$out/sequential" > /dev/null
# The same comparison with the strongest predictors of docs/predictors.md: the task features (the
# program's AST and a sandboxed run), each decoder keeping its own logistic head or its slice of
# a head shared by the five (train --shared)
howhard train --holdout 0.2 --menu "$here/cruxeval-menu.toml" --rows 0:400 --features task \
  --head logistic --shared --feature-cache "$work/features-task.npz" --out "$work/predictors-task"
howhard evaluate --menu "$work/predictors-task/menu.toml" --rows 400:800 \
  --feature-cache "$work/features-task.npz" --out "$out/predictors-task" > /dev/null
howhard compare --menu "$work/predictors-task/menu.toml" --rows 400:800 \
  --observe majority,verifier --feature-cache "$work/features-task.npz" --replays 50 \
  --policies probe-escalate,routellm \
  --title "CRUXEval menu, problems 400-799, task-feature predictors" \
  --out "$out/compare-task" > /dev/null
