"""Is the rest of the arithmetic gap in how sure the model is of its own answer, or in the
noise of the labels? (predictors.md)

On the demo's SmolLM2 pools (`howhard demo`'s work directory: ``train-default.jsonl``,
``eval-default.jsonl`` and the hidden-state caches ``features-hidden*.npz``), four mlp
predictors of λ(x), each fitted on the training pool and scored on the held-out pool:

- ``layers``: the four hidden-state layers the demo kept until 2026-11-29 (one split's choice);
- ``greedy``: SmolLM2 answers each query greedily after the task's whole prompt (at most
  ``max_tokens`` tokens, up to the first newline), and each of the answer's first 8 steps gives
  the log-probability of its token, its second choice's, and the next-token entropy (at
  temperature 1, zeros after the answer ends), plus the answer's total log-probability: 25
  features of how sure the model is of the answer it would give;
- ``layers+greedy``: both side by side;
- ``layers, exact labels``: the four layers, fitted on each training query's exact λ(x) instead
  of its 16 samples' successes. λ(x) is summed over every token path of one sample that writes
  the answer right after the prompt's "A:" (with or without a space) and then a token that ends
  the integer, each step's probability taken from the backend's sampler chain at temperature 1
  (top-k, top-p, min-p): a lower bound that leaves out rarer spellings. The same λ(x) of the
  held-out queries, scored as a predictor, is about the most any predictor can close of a gap
  whose Opt is the held-out pool's own noisy rates.

Each is the mlp head at the L2 strength ``howhard train`` keeps for the demo's predictor
(0.01), fitted on the whole training pool. Printed: the held-out share
of the Avg→Opt log-loss gap closed (95% bootstrap interval), and the compute the paper's greedy
allocation saves at B = 1/2/4/8/16 (``howhard evaluate``'s measure), as is and with the greedy
answer charged as one more sample per query: reading it costs a decode of the answer, about
what one sample costs here (the prompt's states are shared with the samples).

    python docs/arithmetic-confidence.py DEMO_DIR

The greedy features and the exact λ(x) of the 1,500 queries take about 6 minutes together on 2
quiet cores; they are saved in DEMO_DIR/features-greedy.npz and DEMO_DIR/exact-rates.npz and read
from there on a second run.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

import numpy as np

from howhard import SuccessPredictor
from howhard.backends.base import SamplingParams
from howhard.backends.llamacpp import (
    _MIN_P,
    _TOP_K,
    _common_prefix,
    _llama,
    _load,
    default_threads,
    resolve_model,
)
from howhard.evaluate import evaluate, gap_closed_interval, savings
from howhard.pool import Pool, read_pool
from howhard.predict.metrics import loss_table
from howhard.runs.inputs import featurize_sources
from howhard.tasks import get_task
from howhard.tasks.arithmetic import answer_of

LAYERS = "hidden-l15+hidden-l22+hidden-prompt-l15+hidden-prompt-l22"
ALPHA = 0.01  # the L2 strength howhard train keeps for those layers
BUDGETS = [1, 2, 4, 8, 16]
STEPS = 8


def logits_after(llm: Any, tokens: list[int]) -> np.ndarray:
    """The next-token logits after ``tokens``, keeping the cells of the prefix they share with
    what the model last read (the few-shot prompt)."""
    kept = min(_common_prefix(llm.input_ids[: llm.n_tokens].tolist(), tokens), len(tokens) - 1)
    llm.n_tokens = kept
    llm.eval(tokens[kept:])
    return np.ctypeslib.as_array(llm._ctx.get_logits(), shape=(llm.n_vocab(),))


def greedy_features(llm: Any, prompts: list[str]) -> np.ndarray:
    """(len(prompts), 3 * STEPS + 1): per step of the greedy answer to each prompt, log p of its
    token, log p of the second choice and the entropy; then the answer's total log p."""
    task = get_task("arithmetic")
    newline = set(llm.tokenize(b"\n", add_bos=False))
    out = np.zeros((len(prompts), 3 * STEPS + 1))
    for i, query in enumerate(prompts):
        z = logits_after(llm, llm.tokenize(task.render(query).encode()))
        for step in range(min(STEPS, task.max_tokens)):
            if step:
                z = np.ctypeslib.as_array(llm._ctx.get_logits(), shape=(llm.n_vocab(),))
            logp = z - z.max()
            logp = logp - np.log(np.exp(logp).sum())
            top2 = np.sort(logp)[-2:]
            out[i, 3 * step : 3 * step + 3] = top2[1], top2[0], -(np.exp(logp) * logp).sum()
            token = int(z.argmax())
            if token in newline or token == llm.token_eos():
                break
            out[i, -1] += top2[1]
            llm.eval([token])
        if i % 250 == 0:
            print(f"  greedy answers: {i}/{len(prompts)}", flush=True)
    return out


def sampler(z: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The tokens one sample can draw from logits ``z`` and their probabilities: the backend's
    chain at temperature 1, top-k, then top-p (the shortest head reaching it), then min-p."""
    z = z.astype(float)
    top = np.argsort(z)[::-1][:_TOP_K]
    p = np.exp(z[top] - z[top[0]])
    p /= p.sum()
    head = np.searchsorted(np.cumsum(p), SamplingParams().top_p) + 1
    top, p = top[:head], p[:head]
    keep = p >= _MIN_P * p[0]
    return top[keep], p[keep] / p[keep].sum()


def exact_rates(llm: Any, prompts: list[str]) -> np.ndarray:
    """λ(x) of each prompt: the probability that one sample's first integer is the answer, over
    the token paths that write it right after "A:" (module docstring), by depth-first search."""
    task = get_task("arithmetic")
    text = [llm.detokenize([t]).decode("utf-8", "replace") for t in range(llm.n_vocab())]
    llama_cpp = _llama()  # not imported at the top: howhard sets OMP_WAIT_POLICY first
    vocab = llama_cpp.llama_model_get_vocab(llm.model)
    out = np.zeros(len(prompts))
    for i, query in enumerate(prompts):
        prompt = llm.tokenize(task.render(query).encode())
        answer = str(answer_of(query))
        spellings = (" " + answer, answer)
        stack: list[tuple[list[int], str, float]] = [([], "", 1.0)]
        while stack:
            path, written, mass = stack.pop()
            for token, p in zip(*sampler(logits_after(llm, prompt + path)), strict=True):
                if llama_cpp.llama_vocab_is_eog(vocab, int(token)):
                    out[i] += mass * p if written in spellings else 0.0
                    continue
                now, longer = written + text[token], len(path) + 1 < task.max_tokens
                done = next((s for s in spellings if now.startswith(s)), None)
                if done is not None and now != done:  # the integer ends unless a digit follows
                    out[i] += mass * p if now[len(done)] not in "0123456789," else 0.0
                elif done is not None and not longer:
                    out[i] += mass * p  # max_tokens cut the sample right after the answer
                elif longer and any(s.startswith(now) for s in spellings):
                    stack.append(([*path, int(token)], now, mass * p))
        if i % 250 == 0:
            print(f"  exact rates: {i}/{len(prompts)}", flush=True)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("demo_dir", type=Path)
    work = parser.parse_args().demo_dir
    train, held = (read_pool(work / f"{s}-default.jsonl") for s in ("train", "eval"))
    llm = None  # loaded once, only when a cache is missing
    computed = {"features-greedy.npz": greedy_features, "exact-rates.npz": exact_rates}
    for name, compute in computed.items():
        if not (work / name).exists():
            if llm is None:
                llm = _load(resolve_model(None), default_threads(), 1024)
            train_part, held_part = compute(llm, train.prompts), compute(llm, held.prompts)
            np.savez(work / name, train=train_part, held=held_part)
    greedy, exact = (np.load(work / name) for name in computed)
    hidden = str(work / "features-hidden.npz")
    layers = [featurize_sources(p, LAYERS, "arithmetic", None, hidden) for p in (train, held)]
    width = greedy["train"].shape[1]
    rows = {
        "layers": ([layers[0][0], layers[1][0]], list(layers[0][1])),
        "greedy": ([greedy["train"], greedy["held"]], None),
        "layers+greedy": (
            [np.hstack([layers[0][0], greedy["train"]]), np.hstack([layers[1][0], greedy["held"]])],
            [*layers[0][1], width],
        ),
    }
    for name, ((x_train, x_held), groups) in rows.items():
        model = SuccessPredictor(head="mlp", alpha=ALPHA).fit(x_train, counts(train), groups=groups)
        report(name, model, x_held, held, counts(train), charged="greedy" in name)
    soft = np.column_stack([exact["train"] * train.n_samples, train.n_samples])
    model = SuccessPredictor(head="mlp", alpha=ALPHA).fit(layers[0][0], soft, groups=layers[0][1])
    report("layers, exact labels", model, layers[1][0], held, counts(train), charged=False)
    for name, pool, part in (("training", train, "train"), ("held-out", held, "held")):
        rates = exact[part]
        print(f"{name} pool: mean exact λ {rates.mean():.4f}, mean sampled rate {rate(pool):.4f}")
    y = counts(held)
    lam = np.clip(exact["held"], 1e-6, 1 - 1e-6)
    ceiling = loss_table(lam, y[:, 0], y[:, 1], rate(train))["gap_closed"]
    print(f"the held-out queries' exact λ as a predictor: gap closed {100 * ceiling:.1f}%")


def counts(pool: Pool) -> np.ndarray:
    return np.column_stack([pool.successes(), pool.n_samples])


def rate(pool: Pool) -> float:
    return float(pool.successes().sum() / pool.n_samples.sum())


def report(
    name: str,
    model: SuccessPredictor,
    x: np.ndarray,
    held: Pool,
    y_train: np.ndarray,
    charged: bool,
) -> None:
    y = counts(held)
    mean = y_train[:, 0].sum() / y_train[:, 1].sum()
    lam = model.predict_proba_success(x)
    gap = loss_table(lam, y[:, 0], y[:, 1], mean)["gap_closed"]
    low, high = gap_closed_interval(lam, y[:, 0], y[:, 1], mean, 1000)
    cap = int(y[:, 1].min())
    ev = evaluate(held, BUDGETS, cap, model.predict_gains(x, cap))
    line = f"{name}: gap closed {100 * gap:.1f}% [{100 * low:.0f}, {100 * high:.0f}]; saved "
    line += percents(ev.saving_vs_uniform["adaptive"])
    if charged:
        spend = [s + 1 for s in ev.spend["adaptive"]]
        line += "; with the greedy answer charged as a sample "
        line += percents(savings(ev.curves["adaptive"], spend, ev.uniform_curve, cap)[0])
    print(line + f" (oracle {percents(ev.saving_vs_uniform['oracle'])})")


def percents(values: list[float]) -> str:
    return "/".join(f"{100 * v:.0f}" for v in values) + "%"


if __name__ == "__main__":
    main()
