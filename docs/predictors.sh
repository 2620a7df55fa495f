#!/usr/bin/env bash
# docs/predictors.md: every feature source x head on each real pool (issue 14), trained with
# `howhard train` on a training pool and evaluated with `howhard evaluate --json` on a disjoint
# held-out pool; docs/predictors_table.py turns those outputs into the tables. Run from any dir:
#   bash docs/predictors.sh [WORK] [HUMANEVAL_POOL] [DEMO_DIR]
# WORK (default: a new temporary directory) keeps pools, feature caches, predictors and results;
#   rerun with the same WORK to resume (finished rows are skipped).
# HUMANEVAL_POOL (default /work/data/humaneval-codegen16b.jsonl.gz) is made by
#   docs/humaneval-codegen16b.sh (`howhard score --samples ... --generated-tests ...`, ~45 min);
#   it is not made here.
# DEMO_DIR (default WORK/demo) is a `howhard demo` work directory of the default size (the
#   SmolLM2 arithmetic pools); made when missing (about an hour of labelling on 2 cores).
# CRUXEVAL (environment; default ../../shared/data/cruxeval/output-t0.8 beside this repository)
#   holds the CRUXEval pools. POOLS (environment; default "smollm2 cruxeval humaneval gemma")
#   picks the pools to run; labelling the Gemma pool took 10 min on 2 shared cores.
set -euo pipefail
# train compares its candidates on one 20% split (--holdout 0.2) here, as these outputs were
# made before its default became 5-fold cross-validation.
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
work=$(realpath -m "${1:-$(mktemp -d -t howhard-predictors.XXXXXX)}")
humaneval=$(realpath -m "${2:-/work/data/humaneval-codegen16b.jsonl.gz}")
demo=$(realpath -m "${3:-$work/demo}")
crux=$(realpath -m "${CRUXEVAL:-$here/../../shared/data/cruxeval/output-t0.8}")
pools=" ${POOLS:-smollm2 cruxeval humaneval gemma} "
export OMP_WAIT_POLICY=PASSIVE  # llama.cpp's OpenMP threads spin-wait badly on a shared machine
mkdir -p "$work/results"
echo "work directory: $work"

# One row: train FEATURES x HEAD on DIR/train.jsonl, evaluate on DIR/eval.jsonl. Features are
# cached per pool family in CACHE_DIR: features.npz holds the LM's hidden state (the
# expensive one, computed at most once per family), features.<source>.npz every other source
# (`howhard train --feature-cache`: a cache serves the source it holds, others get a file beside
# it). The commands are written next to the result, with the work directory shown as WORK.
row() {  # POOL_NAME DIR CACHE_DIR FEATURES HEAD
  local name=$1 dir=$2 cache=$3 features=$4 head=$5
  local tag=$features-$head
  [[ $features == *,* ]] && tag=combined-$head  # several combinations: train keeps one
  local res=$work/results/$name/$tag
  [ -f "$res.json" ] && return
  mkdir -p "$work/results/$name" "$dir/models"
  local file=$cache/features.npz
  [[ +${features//,/+}+ == *+hidden+* ]] || file=$cache/features.$features.npz
  local train=(howhard train "$dir/train.jsonl" --features "$features" --head "$head" --holdout 0.2
    "${train_flags[@]}" --feature-cache "$file" --out "$dir/models/$tag.npz")
  local evaluate=(howhard evaluate "$dir/eval.jsonl" --predictor "$dir/models/$tag.npz"
    "${eval_flags[@]}" --feature-cache "$file" --json)
  echo "== $name: $features $head"
  "${train[@]}" | tee "$res.train.txt"
  "${evaluate[@]}" > "$res.json.tmp"
  printf '%s\n' "${train[*]//$work/WORK}" "${evaluate[*]//$work/WORK}" > "$res.cmd"
  mv "$res.json.tmp" "$res.json"
}

# The grid of one pool: each source in SOURCES with the logistic and tail heads (hidden first,
# so that features.npz holds it; on arithmetic also hidden+minilm, a combination without hand
# features), the mlp head on the low-dimensional sources, the combinations with the LM's
# hidden state, among which train keeps the one that saves most on its own held-out share of
# the training pool, and each combination in STACKED with the stacked heads (a logistic head
# per source, its L2 strength by 5-fold CV, under a logistic or a tail head on their
# out-of-fold logits).
grid() {  # POOL_NAME DIR CACHE_DIR TITLE SOURCES MLP_SOURCES COMBINATIONS STACKED
  local name=$1 dir=$2 cache=$3
  mkdir -p "$work/results/$name"
  echo "$4" > "$work/results/$name/title.txt"
  for features in $5; do
    for head in logistic tail; do row "$name" "$dir" "$cache" "$features" "$head"; done
  done
  for features in $6; do row "$name" "$dir" "$cache" "$features" mlp; done
  for head in logistic tail; do row "$name" "$dir" "$cache" "$7" "$head"; done
  for features in $8; do
    for head in stacked stacked-tail; do row "$name" "$dir" "$cache" "$features" "$head"; done
  done
}

# The pool's origin, shown above its table (WORK for the work directory).
origin() {  # POOL_NAME TEXT
  mkdir -p "$work/results/$1"
  printf '%s\n' "${2//$work/WORK}" > "$work/results/$1/origin.txt"
}

# 1. SmolLM2-135M arithmetic: the demo's pools (train 1,000 x 16, held out 500 x 32) and its
#    cached hidden states.
if [[ $pools == *" smollm2 "* ]]; then
  [ -f "$demo/eval-default.jsonl" ] || howhard demo --workdir "$demo"
  d=$work/smollm2
  mkdir -p "$d"
  [ -f "$d/train.jsonl" ] || cp "$demo/train-default.jsonl" "$d/train.jsonl"
  [ -f "$d/eval.jsonl" ] || cp "$demo/eval-default.jsonl" "$d/eval.jsonl"
  if [ ! -f "$d/features.npz" ] && [ -f "$demo/features-hidden.npz" ]; then
    cp "$demo/features-hidden.npz" "$d/features.npz"  # the demo's hidden states: no LM run
  fi
  origin smollm2-arithmetic "howhard demo --workdir DEMO (train-default.jsonl: 1,000 queries x 16 \
samples, eval-default.jsonl: 500 x 32)"
  train_flags=(--task arithmetic)
  eval_flags=(--budgets 1,2,4,8,16 --max-per-query 32)
  grid smollm2-arithmetic "$d" "$d" "SmolLM2-135M arithmetic" \
    "hidden ngrams minilm task hidden+minilm" \
    "hidden task" "hidden+task,hidden+minilm+task,hidden+ngrams+task" \
    "hidden+minilm hidden+minilm+ngrams"
  # The middle of the network (the stream after 18 of SmolLM2's 30 blocks) and transformers'
  # float32 states, against llama.cpp's final ones (docs/predictors.md, "Which hidden state").
  for features in hidden-l18 hf-hidden hf-hidden-l18; do
    for head in logistic tail mlp; do row smollm2-arithmetic "$d" "$d" "$features" "$head"; done
  done
  # The streams after 15 and 22 of the 30 blocks side by side: what train's default candidates
  # (hidden-layers) keep on the demo's own hold-out (docs/demo.md).
  for head in logistic tail mlp; do
    row smollm2-arithmetic "$d" "$d" hidden-l15+hidden-l22 "$head"
  done
  # The same two layers at the end of the whole few-shot prompt (hidden-prompt-lK), alone and
  # beside the bare query's: train's default candidates since 2026-11-29 (docs/demo.md).
  for features in hidden-prompt-l15+hidden-prompt-l22 \
    hidden-l15+hidden-l22+hidden-prompt-l15+hidden-prompt-l22; do
    row smollm2-arithmetic "$d" "$d" "$features" mlp
  done
  # The paper's LoRA head (opt-in, LORA=1: SmolLM2 itself fine-tuned on the query texts, two
  # fits of several epochs; far beyond an hour on 2 shared cores): --features is not used.
  if [[ ${LORA:-0} == 1 ]]; then row smollm2-arithmetic "$d" "$d" hidden lora; fi
fi

# 2. CRUXEval-O (800 problems x 10 samples at T = 0.8): problems 0-399 of each pool's order to
#    train, 400-799 held out (docs/cruxeval-menu.sh's split). The prompts are the same for the
#    three models: one feature cache serves them all. hidden is SmolLM2 reading the program (a
#    proxy model for another model's success).
for model in gpt-3.5-turbo-0613 codellama-13b gpt-4-0613; do
  [[ $pools == *" cruxeval "* ]] || break
  d=$work/cruxeval/$model
  mkdir -p "$d"
  [ -f "$d/eval.jsonl" ] || {
    gzip -dc "$crux/$model.jsonl.gz" | sed -n '1,400p' > "$d/train.jsonl"
    gzip -dc "$crux/$model.jsonl.gz" | sed -n '401,800p' > "$d/eval.jsonl"
  }
  origin "cruxeval-$model" "gzip -dc CRUXEVAL/$model.jsonl.gz | sed -n '1,400p' > \
WORK/cruxeval/$model/train.jsonl; the same with '401,800p' > eval.jsonl"
  train_flags=(--task cruxeval)
  eval_flags=(--budgets 1,2,4,8 --max-per-query 10)
  grid "cruxeval-$model" "$d" "$work/cruxeval" "CRUXEval-O, $model" "hidden ngrams minilm task" \
    "hidden task" "hidden+task,hidden+minilm+task,hidden+ngrams+task" \
    "hidden+task hidden+minilm+ngrams+task"
done

# 3. HumanEval, CodeGen-16B (164 problems x 100 samples), pass/fail: problems 0-99 to train,
#    100-163 held out. No task features; hidden is SmolLM2 reading the prompt (a proxy model).
if [[ $pools == *" humaneval "* ]]; then
  d=$work/humaneval
  mkdir -p "$d"
  [ -f "$d/eval.jsonl" ] || {
    gzip -dc "$humaneval" | sed -n '1,100p' > "$d/train.jsonl"
    gzip -dc "$humaneval" | sed -n '101,164p' > "$d/eval.jsonl"
  }
  origin humaneval-codegen16b "bash docs/humaneval-codegen16b.sh POOL; gzip -dc POOL | sed -n \
'1,100p' > WORK/humaneval/train.jsonl; the same with '101,164p' > eval.jsonl"
  train_flags=(--task humaneval --binarize)
  eval_flags=(--binarize --budgets 1,2,4,8 --max-per-query 100)
  grid humaneval-codegen16b "$d" "$d" "HumanEval, CodeGen-16B (pass/fail)" "hidden ngrams minilm" \
    "hidden" "hidden+minilm,hidden+ngrams,hidden+minilm+ngrams" "hidden+minilm+ngrams"
fi

# 4. Gemma 3 270M arithmetic (train 300 x 8, held out 150 x 16), labelled as docs/pools.sh
#    does; hidden is Gemma's own hidden state.
if [[ $pools == *" gemma "* ]]; then
  d=$work/gemma
  mkdir -p "$d"
  if [ ! -f "$d/eval.jsonl" ]; then
    howhard label --task arithmetic --queries 300 --query-seed 1 --samples 8 \
      --store "$d/train.sqlite" --quiet --model gemma3-270m
    howhard export "$d/train.sqlite" --out "$d/train.jsonl"
    howhard label --task arithmetic --queries 150 --query-seed 2 --exclude "$d/train.jsonl" \
      --samples 16 --store "$d/eval.sqlite" --quiet --model gemma3-270m
    howhard export "$d/eval.sqlite" --out "$d/eval.jsonl"
  fi
  origin gemma-arithmetic "docs/pools.sh's label_pair gemma arithmetic 300 8 150 16 --model \
gemma3-270m (train.jsonl: 300 queries x 8 samples, eval.jsonl: 150 x 16)"
  train_flags=(--task arithmetic --model gemma3-270m)
  eval_flags=(--budgets 1,2,4,8 --max-per-query 16)
  grid gemma-arithmetic "$d" "$d" "Gemma 3 270M arithmetic" \
    "hidden ngrams minilm task hidden+minilm" \
    "hidden task" "hidden+task,hidden+minilm+task,hidden+ngrams+task" \
    "hidden+minilm hidden+minilm+ngrams"
fi

python "$here/predictors_table.py" "$work/results" --doc "$here/predictors.md" \
  --order smollm2-arithmetic,gemma-arithmetic,cruxeval-gpt-3.5-turbo-0613,cruxeval-codellama-13b,cruxeval-gpt-4-0613,humaneval-codegen16b \
  --summary "$here/predictors.json"
