"""Where is the signal a CRUXEval success predictor misses? (docs/predictors.md, issue 14)

Problems 0-399 train, 400-799 are held out (the split of docs/predictors.sh). Each row fits
`howhard.SuccessPredictor` (logistic head; its L2 strength the best of a grid on a fixed
80-problem hold-out of the training half, then refit on all 400) for one model's pool and prints
the share of the held-out Avg→Opt log-loss gap it closes:

- ``task``: the task's own features (`howhard train --features task`): the program's AST and a
  sandboxed traced run;
- ``other models (oracle)``: one feature, the logit of the pooled one-sample success of every
  *other* model on the same problem (leaving out the model's own family, with and without
  ``+cot``): what knowing exactly how hard the problem is for code models in general is worth;
- ``two-stage``: a ridge regression from the task features to that shared difficulty (the logit of
  all 31 models' pooled rate), fitted on the training problems, as the one feature;
- ``shared, menu`` and ``shared, all 31``: the task features with one head shared by several
  models' pools (`howhard.MultiPredictor`, rank-1 lowrank: one difficulty direction, each model
  its own scale and offset; what ``howhard train --menu --shared`` tries), fitted on the five
  models of docs/cruxeval-menu.toml or on all 31 pools at once, its L2 strength the best pooled
  score on the same 80-problem hold-out;
- ``task + likelihood`` (with ``--likelihood``, about 6 minutes on 2 cores): the task features and
  five more, SmolLM2's log-likelihood of the true output (known from running the program) after
  the task's prompt: sum, mean and minimum token log-probability, token count, and the share of
  tokens it ranks first.

It also prints R² of the ridge regression on the held-out problems: how much of the shared
difficulty the task features explain.

    python docs/cruxeval-predictability.py [--likelihood]
"""

from __future__ import annotations

import argparse
import gzip
import json
from pathlib import Path

import numpy as np
from scipy.special import logit
from sklearn.linear_model import RidgeCV

from howhard import SuccessPredictor
from howhard.predict import MultiPredictor
from howhard.predict.metrics import loss_table
from howhard.tasks import get_task

DATA = Path(__file__).resolve().parents[2] / "shared/data/cruxeval"
MODELS = ("gpt-3.5-turbo-0613", "codellama-13b", "gpt-4-0613")
MENU = ("codellama-7b", "codellama-13b", "codellama-34b", "gpt-3.5-turbo-0613", "gpt-4-0613")
TRAIN, HELD = np.arange(400), np.arange(400, 800)
ALPHAS = (1e-3, 1e-2, 1e-1, 1.0, 10.0)


def load() -> tuple[list[str], list[str], list[str], np.ndarray, np.ndarray]:
    """Problem ids and prompts (in pool order), the pools' names, and successes and trials of
    shape (800, number of pools)."""
    names = sorted(p.name.removesuffix(".jsonl.gz") for p in (DATA / "output-t0.8").glob("*.gz"))
    rows = {}
    for name in names:
        with gzip.open(DATA / "output-t0.8" / f"{name}.jsonl.gz", "rt") as f:
            rows[name] = [json.loads(line) for line in f]
    ids = [r["id"] for r in rows[names[0]]]
    assert all([r["id"] for r in rows[n]] == ids for n in names), "pools not aligned"
    c = np.array([[sum(r["rewards"]) for r in rows[n]] for n in names], dtype=float).T
    n = np.array([[len(r["rewards"]) for r in rows[n]] for n in names], dtype=float).T
    return ids, [r["prompt"] for r in rows[names[0]]], names, c, n


def gap_closed(x: np.ndarray, c: np.ndarray, n: np.ndarray) -> float:
    """Held-out share of the gap closed by a logistic head on ``x`` for one pool's (c, n)."""
    rng = np.random.default_rng(0)
    order = rng.permutation(TRAIN)
    hold, fit = order[:80], order[80:]
    mean = c[fit].sum() / n[fit].sum()

    def score(rows: np.ndarray, alpha: float, test: np.ndarray, train_mean: float) -> float:
        model = SuccessPredictor(alpha=alpha).fit(x[rows], np.c_[c[rows], n[rows]])
        lam = model.predict_proba_success(x[test])
        return loss_table(lam, c[test], n[test], train_mean)["gap_closed"]

    best = max(ALPHAS, key=lambda a: score(fit, a, hold, mean))
    return score(TRAIN, best, HELD, c[TRAIN].sum() / n[TRAIN].sum())


def shared_gaps(x: np.ndarray, c: np.ndarray, n: np.ndarray) -> np.ndarray:
    """Held-out share of the gap closed for every pool (column of c) by one rank-1 lowrank
    head fitted on all the columns at once."""
    rng = np.random.default_rng(0)
    order = rng.permutation(TRAIN)
    hold, fit = order[:80], order[80:]
    counts = np.stack([c, n], axis=2)

    def model(rows: np.ndarray, alpha: float) -> MultiPredictor:
        return MultiPredictor(head="lowrank", hidden=1, alpha=alpha).fit(x[rows], counts[rows])

    best = max(ALPHAS, key=lambda a: model(fit, a).score(x[hold], counts[hold]))
    lam = model(TRAIN, best).predict_proba_success(x[HELD])
    means = c[TRAIN].sum(axis=0) / n[TRAIN].sum(axis=0)
    return np.array(
        [
            loss_table(lam[:, j], c[HELD, j], n[HELD, j], means[j])["gap_closed"]
            for j in range(c.shape[1])
        ]
    )


def likelihood(ids: list[str], prompts: list[str]) -> np.ndarray:
    """SmolLM2's log-likelihood features of each problem's true output after its prompt."""
    import torch

    from howhard.backends.transformers import load_model

    with open(DATA / "problems.jsonl") as f:
        output = {r["id"]: r["output"] for r in map(json.loads, f)}
    task, lm = get_task("cruxeval"), load_model(device="cpu")
    out = []
    with torch.inference_mode():
        for i, prompt in zip(ids, prompts, strict=True):
            head = lm.tokenizer(task.render(prompt) + " ", add_special_tokens=False)["input_ids"]
            ans = lm.tokenizer(output[i], add_special_tokens=False)["input_ids"]
            logits = lm.model(input_ids=torch.tensor([head + ans])).logits[0].float()
            lp = torch.log_softmax(logits[len(head) - 1 : -1], dim=-1)
            target = torch.tensor(ans)
            tok = lp[torch.arange(len(ans)), target].numpy()
            first = (lp.argmax(dim=-1) == target).float().mean().item()
            out.append([tok.sum(), tok.mean(), tok.min(), len(ans), first])
    return np.array(out)


def standardized(x: np.ndarray) -> np.ndarray:
    return (x - x[TRAIN].mean(axis=0)) / (x[TRAIN].std(axis=0) + 1e-9)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--likelihood", action="store_true", help="add the SmolLM2 rows")
    args = parser.parse_args()
    ids, prompts, names, c, n = load()
    task = standardized(get_task("cruxeval").query_features(prompts))
    shared = logit((c.sum(axis=1) + 0.5) / (n.sum(axis=1) + 1.0))
    ridge = RidgeCV(alphas=np.logspace(-2, 4, 13)).fit(task[TRAIN], shared[TRAIN])
    r2 = ridge.score(task[HELD], shared[HELD])
    print(f"R² of the task features for the shared difficulty: {r2:.2f}")
    two_stage = ridge.predict(task)[:, None]
    menu = [names.index(m) for m in MENU]
    in_menu = dict(zip(menu, shared_gaps(task, c[:, menu], n[:, menu]), strict=True))
    in_all = shared_gaps(task, c, n)
    extra = standardized(likelihood(ids, prompts)) if args.likelihood else None
    print(
        "\n| model | task | other models (oracle) | two-stage | shared, menu | shared, all 31 "
        "| task + likelihood |"
    )
    print("|---|---|---|---|---|---|---|")
    for model in MODELS:
        j = names.index(model)
        family = model.split("+")[0]
        others = [k for k, name in enumerate(names) if name.split("+")[0] != family]
        oracle = logit((c[:, others].sum(axis=1) + 0.5) / (n[:, others].sum(axis=1) + 1.0))
        cells = [
            *(gap_closed(x, c[:, j], n[:, j]) for x in (task, oracle[:, None], two_stage)),
            in_menu[j],
            in_all[j],
            *(() if extra is None else (gap_closed(np.c_[task, extra], c[:, j], n[:, j]),)),
        ]
        shown = " | ".join(f"{100 * g:.0f}%" for g in cells)
        print(
            f"| {model} | {shown}{'' if extra is not None else ' | (--likelihood)'} |", flush=True
        )


if __name__ == "__main__":
    main()
