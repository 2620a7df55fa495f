#!/usr/bin/env bash
# docs/cruxeval-serve/: `howhard serve` in menu mode over the CRUXEval menu (docs/cruxeval-menu.toml),
# in front of a replay upstream (docs/cruxeval-serve.py upstream: a loopback server that answers
# each problem with its pooled samples of the model asked for, in a random order per pass).
# Predictors as docs/cruxeval-menu.sh trains them (char-n-gram logistic, problems 0-399); each
# server calibrates its knob on the pools of problems 0-399 and serves problems 400-799, 2 passes
# in random order (800 requests, 4 in flight), for each (policy, budget) of RUNS in
# docs/cruxeval-serve.py. Offline numbers: docs/cruxeval-menu/compare/report.json and
# docs/cruxeval-menu/sequential/report.json. Run from any
# directory (3.5 minutes here on 2 quiet cores; 15.5 at a load average of 9-19):
#   bash docs/cruxeval-serve.sh [WORK_DIR]
# WORK_DIR (default ./howhard-cruxeval-serve) keeps the predictors, configs, request logs and logs.
set -euo pipefail
# train compares its candidates on one 20% split (--holdout 0.2) here, as these outputs were
# made before its default became 5-fold cross-validation.
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
work=$(realpath -m "${1:-howhard-cruxeval-serve}")
export OMP_WAIT_POLICY=PASSIVE

python -m howhard train --holdout 0.2 --menu "$here/cruxeval-menu.toml" --rows 0:400 \
  --features ngrams --head logistic --feature-cache "$work/features.npz" --out "$work/predictors" > /dev/null
python "$here/cruxeval-serve.py" run --menu "$work/predictors/menu.toml" \
  --compare "$here/cruxeval-menu/compare/report.json" "$here/cruxeval-menu/sequential/report.json" \
  --out "$here/cruxeval-serve" \
  --work "$work" --calibration 0:400 --traffic 400:800 --passes 2 --clients 4
python "$here/cruxeval-serve.py" plot --compare "$here/cruxeval-menu/compare/report.json" \
  "$here/cruxeval-menu/sequential/report.json" --out "$here/cruxeval-serve"
