import itertools
import json
import math
import socket
import threading
from collections import Counter
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import httpx
import numpy as np
import pytest

from howhard.errors import (
    BackendError,
    BudgetError,
    ConfigError,
    ModelNotFoundError,
    UnknownNameError,
)
from howhard.pool import Pool, expected_best_of
from howhard.rerank import (
    RERANKERS,
    HFEndpointRewardClient,
    LocalRewardModel,
    MajorityVote,
    OracleReranker,
    RewardModelReranker,
    VerifierReranker,
    VLLMRewardClient,
    get_reranker,
    majority_best_of,
    reranked_q,
    reward_client,
    reward_of,
    scored_best_of,
    top_index,
)
from howhard.tasks import Arithmetic, Query

# ------------------------------------------------------------------ brute force references


def brute_scored(rewards, scores, b, permutations=False):
    """Mean over all b-subsets of the reward of the top-scored sample; ties broken by averaging
    over the tied ones, or (``permutations``) over every priority order of the n samples."""
    n = len(rewards)
    orders = list(itertools.permutations(range(n))) if permutations else [None]
    total = 0.0
    subsets = list(itertools.combinations(range(n), b))
    for subset in subsets:
        top = max(scores[i] for i in subset)
        tied = [i for i in subset if scores[i] == top]
        if permutations:
            total += np.mean([rewards[min(tied, key=order.index)] for order in orders])
        else:
            total += np.mean([rewards[i] for i in tied])
    return total / len(subsets)


def brute_majority(answers, rewards, b):
    total = 0.0
    subsets = list(itertools.combinations(range(len(rewards)), b))
    for subset in subsets:
        votes = Counter(answers[i] for i in subset if answers[i] is not None)
        if not votes:
            total += np.mean([rewards[i] for i in subset])
            continue
        top = max(votes.values())
        winners = [a for a in votes if votes[a] == top]
        total += np.mean(
            [np.mean([rewards[i] for i in subset if answers[i] == a]) for a in winners]
        )
    return total / len(subsets)


# ------------------------------------------------------------------ scored_best_of


def test_scored_best_of_matches_brute_force_with_ties_and_continuous_rewards():
    rng = np.random.default_rng(0)
    for case in range(60):
        n = int(rng.integers(1, 8))
        rewards = rng.random(n) if case % 2 else rng.integers(0, 2, n).astype(float)
        scores = rng.integers(0, 3, n).astype(float)  # many ties
        exact = scored_best_of(rewards, scores, n)
        brute = [brute_scored(rewards, scores, b, permutations=n <= 5) for b in range(1, n + 1)]
        np.testing.assert_allclose(exact, brute, rtol=0, atol=1e-12)


def test_scored_best_of_small_exact_case():
    # scores 2, 1, 1 (rewards 0, 1, 0): b=1 mean 1/3; b=2: {0,1},{0,2} -> 0, {1,2} -> 1/2
    np.testing.assert_allclose(scored_best_of([0, 1, 0], [2, 1, 1], 3), [1 / 3, 1 / 6, 0.0])


def test_scored_best_of_with_oracle_scores_is_expected_best_of():
    rng = np.random.default_rng(1)
    for n in (1, 5, 16, 40):
        binary = rng.integers(0, 2, n).astype(float)
        continuous = rng.random(n)
        for r in (binary, continuous):
            np.testing.assert_allclose(
                scored_best_of(r, r, n), expected_best_of(r[None, :], n)[0], atol=1e-12
            )


def test_scored_best_of_rejects_bad_input():
    with pytest.raises(ConfigError, match="2 scores for 3 rewards"):
        scored_best_of([1, 0, 1], [0.1, 0.2], 2)
    with pytest.raises(ConfigError, match="NaN"):
        scored_best_of([1, 0], [0.1, float("nan")], 2)
    with pytest.raises(BudgetError, match="b up to 3 asked from 2"):
        scored_best_of([1, 0], [0.1, 0.2], 3)


# ------------------------------------------------------------------ majority_best_of


def test_majority_best_of_matches_brute_force():
    rng = np.random.default_rng(2)
    for case in range(70):
        n = int(rng.integers(1, 9))
        alphabet = ["a", "b", "c", None][: int(rng.integers(1, 5))]
        answers = [alphabet[j] for j in rng.integers(0, len(alphabet), n)]
        rewards = rng.random(n) if case % 2 else rng.integers(0, 2, n).astype(float)
        exact = majority_best_of(answers, rewards, n)
        brute = [brute_majority(answers, rewards, b) for b in range(1, n + 1)]
        np.testing.assert_allclose(exact, brute, rtol=0, atol=1e-12)


def test_majority_best_of_small_exact_case():
    # pairs of {7,7,8,None} (rewards 1,1,0,0): 77 ->1, 7|8 tie ->1/2 (twice), 7N ->1 (twice), 8N ->0
    np.testing.assert_allclose(
        majority_best_of(["7", "7", "8", None], [1, 1, 0, 0], 4),
        [0.5, 4 / 6, 3 / 4, 1.0],
    )
    # nobody votes: a uniformly random sample of the subset
    np.testing.assert_allclose(majority_best_of([None, None], [1.0, 0.0], 2), [0.5, 0.5])


def test_majority_best_of_large_pool_full_subset_is_the_plain_majority():
    rng = np.random.default_rng(3)
    n = 300
    answers = [["a", "b", "c", "d", None][j] for j in rng.choice(5, n, p=[0.4, 0.2, 0.2, 0.1, 0.1])]
    rewards = rng.random(n)
    q = majority_best_of(answers, rewards, n)
    counts = Counter(a for a in answers if a is not None)
    (top, _), (_, second) = counts.most_common(2)
    assert counts[top] > second
    expected = np.mean([r for a, r in zip(answers, rewards, strict=True) if a == top])
    assert q[-1] == pytest.approx(expected, abs=1e-9)
    assert np.all((q >= 0) & (q <= 1))
    assert q[0] == pytest.approx(  # b = 1: a random sample's own reward
        np.mean(rewards), abs=1e-12
    )


def test_majority_best_of_rejects_bad_input():
    with pytest.raises(ConfigError, match="2 answers for 3 rewards"):
        majority_best_of(["a", "b"], [1, 0, 1], 2)
    with pytest.raises(ConfigError, match="strings or None, got 7"):
        majority_best_of(["a", 7], [1, 0], 2)
    with pytest.raises(BudgetError):
        majority_best_of(["a"], [1], 2)


def test_rerankers_choose_what_the_estimators_compute():
    """Simulate serving: draw random b-subsets, let the reranker choose, average the reward."""
    rng = np.random.default_rng(4)
    task = Arithmetic()
    texts = ["7", "7", "8", "8", "no idea", "9", "7", "8"]
    rewards = np.array([1.0 if t == "7" else 0.0 for t in texts])
    scores = np.array([3, 1, 3, 2, 0, 3, 2, 1], dtype=float)  # ties at the top
    b, draws = 3, 2500
    majority, scored = [], []
    vote = MajorityVote(task.answer)
    for _ in range(draws):
        subset = rng.choice(len(texts), b, replace=False)
        chosen = vote.choose("What is 3 + 4?", [texts[i] for i in subset], rng)
        majority.append(rewards[subset[chosen]])
        picked = top_index(scores[subset], rng)
        scored.append(rewards[subset[picked]])
    answers = [task.answer(t) for t in texts]
    for sim, exact in (
        (majority, majority_best_of(answers, rewards, b)[-1]),
        (scored, scored_best_of(rewards, scores, b)[-1]),
    ):
        se = math.sqrt(exact * (1 - exact) / draws)
        assert abs(np.mean(sim) - exact) < 4 * se + 1e-9


# ------------------------------------------------------------------ reranked_q


def test_reranked_q_is_a_drop_in_for_pool_q():
    rng = np.random.default_rng(5)
    rewards = [rng.integers(0, 2, n).astype(float) for n in (4, 6, 5)]
    pool = Pool(("a", "b", "c"), ("p", "q", "r"), tuple(rewards))
    np.testing.assert_allclose(reranked_q(rewards, None, 4, "oracle"), pool.q(4), atol=1e-12)
    scores = [rng.random(len(r)) for r in rewards]
    q = reranked_q(rewards, scores, 4, "reward-model")
    assert q.shape == (3, 5) and np.all(q[:, 0] == 0)
    for x in range(3):
        np.testing.assert_array_equal(q[x, 1:], scored_best_of(rewards[x], scores[x], 4))
    answers = [["1", None, "2", "1", "2", "2"][: len(r)] for r in rewards]
    q = reranked_q(rewards, answers, 4, "majority")
    for x in range(3):
        np.testing.assert_array_equal(q[x, 1:], majority_best_of(answers[x], rewards[x], 4))


def test_reranked_q_errors_name_the_query():
    rewards = [np.ones(4), np.ones(2)]
    with pytest.raises(BudgetError, match="query 1: b up to 3 asked from 2"):
        reranked_q(rewards, [[0.0] * 4, [0.0] * 2], 3, "scored")
    with pytest.raises(ConfigError, match="needs per-sample data for each of the 2 queries"):
        reranked_q(rewards, None, 2, "majority")
    with pytest.raises(ConfigError, match="unknown reranker estimator 'best'"):
        reranked_q(rewards, None, 2, "best")


# ------------------------------------------------------------------ rerankers and registry


def test_majority_vote_scores_and_choice():
    vote = MajorityVote(Arithmetic().answer)
    completions = [" 7", " 8", "7 apples", "no"]
    np.testing.assert_array_equal(vote.scores("What is 3 + 4?", completions), [2, 1, 2, 0])
    chosen = {vote.choose("q", completions, np.random.default_rng(s)) for s in range(40)}
    assert chosen == {0, 2}
    chosen = {vote.choose("q", ["x", "y"], np.random.default_rng(s)) for s in range(40)}
    assert chosen == {0, 1}  # nobody votes: any sample


def test_verifier_oracle_and_reward_model_rerankers():
    rng = np.random.default_rng(0)
    verifier = VerifierReranker(lambda c: float(len(c)))
    assert verifier.choose("p", ["ab", "abcd", "a"], rng) == 1
    oracle = OracleReranker(Arithmetic())
    np.testing.assert_array_equal(oracle.scores("What is 3 + 4?", ["8", "7"]), [0.0, 1.0])
    meta = OracleReranker(Arithmetic(), [Query("q1", "What is 3 + 4?", {"answer": 8})])
    assert meta.choose("What is 3 + 4?", ["8", "7"], rng) == 0

    class Fixed:
        def __init__(self, values):
            self.values = values

        def score(self, prompt, completions):
            return self.values

    assert RewardModelReranker(Fixed([0.1, 0.9, 0.3])).choose("p", ["a", "b", "c"], rng) == 1
    with pytest.raises(BackendError, match="one finite score per completion"):
        RewardModelReranker(Fixed([0.1])).scores("p", ["a", "b"])
    with pytest.raises(ConfigError, match="nothing to choose from"):
        top_index([], rng)


def test_registry_names_and_typos():
    assert RERANKERS.names() == ["majority", "oracle", "reward-model"]
    task = Arithmetic()
    assert isinstance(get_reranker("majority", task), MajorityVote)
    assert isinstance(get_reranker("oracle", task, queries=[]), OracleReranker)
    with pytest.raises(UnknownNameError, match="did you mean 'majority'"):
        get_reranker("majorty", task)


# ------------------------------------------------------------------ HTTP clients (exact dicts)


def recording(responder):
    seen = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append((str(request.url), dict(request.headers), json.loads(request.content)))
        return responder(json.loads(request.content))

    return seen, httpx.MockTransport(handler)


def classify_response(rows):
    return {
        "id": "classify-1",
        "object": "list",
        "created": 1,
        "model": "rm",
        "data": [
            {"index": i, "label": "LABEL_0", "probs": p, "num_classes": len(p)} for i, p in rows
        ],
        "usage": {"prompt_tokens": 3, "total_tokens": 3},
    }


def test_vllm_client_chat_requests_and_parsing():
    logits = iter([[0.5], [-1.25]])
    seen, transport = recording(
        lambda body: httpx.Response(200, json=classify_response([(0, next(logits))]))
    )
    client = VLLMRewardClient("http://rm:8000/v1/", "rm", api_key="k", transport=transport)
    assert client.score("What is 3 + 4?", ["7", "8"]) == [0.5, -1.25]
    assert [s[0] for s in seen] == ["http://rm:8000/classify"] * 2
    assert seen[0][1]["authorization"] == "Bearer k"
    assert seen[1][2] == {
        "model": "rm",
        "use_activation": False,
        "messages": [
            {"role": "user", "content": "What is 3 + 4?"},
            {"role": "assistant", "content": "8"},
        ],
    }
    assert client.score("p", []) == []


def test_vllm_client_text_requests_and_two_class_softmax():
    body = classify_response([(1, [0.0, 0.0]), (0, [0.0, math.log(3.0)])])  # out of order
    seen, transport = recording(lambda _: httpx.Response(200, json=body))
    client = VLLMRewardClient("http://rm:8000", "rm", chat=False, transport=transport)
    assert client.score("Q", ["a", "b"]) == pytest.approx([0.75, 0.5])
    assert seen == [
        (
            "http://rm:8000/classify",
            seen[0][1],
            {"model": "rm", "use_activation": False, "input": ["Q\na", "Q\nb"]},
        )
    ]
    assert "authorization" not in seen[0][1]


@pytest.mark.parametrize(
    "body",
    [
        {"object": "error"},
        {"data": [{"index": 0, "probs": [1.0]}]},  # one result for two inputs
        {"data": [{"index": 0, "probs": [1.0]}, {"index": 0, "probs": [2.0]}]},
        {"data": [{"index": 0, "probs": []}, {"index": 1, "probs": [2.0]}]},
        {"data": [{"index": 0, "probs": ["x"]}, {"index": 1, "probs": [2.0]}]},
        [1, 2],
    ],
)
def test_vllm_client_malformed_responses(body):
    _, transport = recording(lambda _: httpx.Response(200, json=body))
    client = VLLMRewardClient("http://rm:8000", "rm", chat=False, transport=transport)
    with pytest.raises(BackendError, match=r"http://rm:8000/classify answered .*not"):
        client.score("Q", ["a", "b"])


def test_clients_report_http_errors_and_unreachable_servers():
    _, transport = recording(lambda _: httpx.Response(500, text="model crashed"))
    client = VLLMRewardClient("http://rm:8000", "rm", transport=transport)
    with pytest.raises(BackendError, match=r"HTTP 500: 'model crashed'; start it with `vllm"):
        client.score("Q", ["a"])
    _, transport = recording(lambda _: httpx.Response(200, text="not json"))
    with pytest.raises(BackendError, match="invalid JSON"):
        HFEndpointRewardClient("http://tei:8080", transport=transport).score("Q", ["a"])
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    client = HFEndpointRewardClient(f"http://127.0.0.1:{port}", timeout=5)
    with pytest.raises(BackendError, match=rf"cannot reach http://127.0.0.1:{port}/predict"):
        client.score("Q", ["a"])
    with pytest.raises(ConfigError, match="must start with http"):
        HFEndpointRewardClient("tei:80")

    def slow(request):
        raise httpx.ReadTimeout("timed out", request=request)

    client = VLLMRewardClient(
        "http://rm:8000", "rm", timeout=2, transport=httpx.MockTransport(slow)
    )
    with pytest.raises(BackendError, match="http://rm:8000/classify did not answer within 2 s"):
        client.score("Q", ["a"])


def test_tei_client_request_and_label_choice():
    rows = [
        [{"label": "LABEL_1", "score": 2.0}, {"label": "LABEL_0", "score": 0.0}],
        [{"label": "LABEL_0", "score": 1.0}, {"label": "LABEL_1", "score": 1.0}],
    ]
    seen, transport = recording(lambda _: httpx.Response(200, json=rows))
    client = HFEndpointRewardClient("http://tei:8080/", api_key="hf", transport=transport)
    expected = [1 / (1 + math.exp(-2.0)), 0.5]
    assert client.score("Q", ["a", "b"]) == pytest.approx(expected)
    assert seen[0][0] == "http://tei:8080/predict"
    assert seen[0][1]["authorization"] == "Bearer hf"
    assert seen[0][2] == {"inputs": [["Q", "a"], ["Q", "b"]], "raw_scores": True, "truncate": True}
    picked = HFEndpointRewardClient("http://tei:8080", label="LABEL_0", transport=transport)
    assert picked.score("Q", ["a", "b"]) == pytest.approx([1 - expected[0], 0.5])

    single = [[{"label": "LABEL_0", "score": -3.5}]]
    _, transport = recording(lambda _: httpx.Response(200, json=single))
    assert HFEndpointRewardClient("http://tei:8080", transport=transport).score("Q", ["a"]) == [
        -3.5
    ]

    named = [[{"label": "good", "score": 1.0}, {"label": "bad", "score": 0.0}]]
    _, transport = recording(lambda _: httpx.Response(200, json=named))
    with pytest.raises(ConfigError, match=r"labels \['bad', 'good'\]; pass label=NAME"):
        HFEndpointRewardClient("http://tei:8080", transport=transport).score("Q", ["a"])
    with pytest.raises(ConfigError, match="label 'LABEL_1' is not among"):
        HFEndpointRewardClient("http://tei:8080", label="LABEL_1", transport=transport).score(
            "Q", ["a"]
        )


@pytest.mark.parametrize(
    "body",
    [
        {"error": "oops"},
        [[{"label": "LABEL_0", "score": 1.0}]],  # one row for two inputs
        [[{"label": "LABEL_0", "score": "high"}], [{"label": "LABEL_0", "score": 1.0}]],
        [[], [{"label": "LABEL_0", "score": 1.0}]],
        [[{"score": 1.0}], [{"label": "LABEL_0", "score": 1.0}]],
    ],
)
def test_tei_client_malformed_responses(body):
    _, transport = recording(lambda _: httpx.Response(200, json=body))
    client = HFEndpointRewardClient("http://tei:8080", transport=transport)
    with pytest.raises(BackendError, match="http://tei:8080/predict answered"):
        client.score("Q", ["a", "b"])


def test_reward_of_and_reward_client_choice(tmp_path):
    assert reward_of([1.5]) == 1.5
    assert reward_of([0.0, math.log(3.0)]) == pytest.approx(0.75)
    assert isinstance(reward_client("http://h:1", model="rm"), VLLMRewardClient)
    assert isinstance(reward_client("http://h:1", api="tei"), HFEndpointRewardClient)
    with pytest.raises(ConfigError, match="served model name"):
        reward_client("http://h:1")
    with pytest.raises(ConfigError, match="unknown reward model API 'openai'"):
        reward_client("http://h:1", api="openai")
    with pytest.raises(ModelNotFoundError, match=r"no config\.json"):
        reward_client(str(tmp_path))


# ------------------------------------------------------------------ a real tiny local model

WORDS = [*"0123456789+-*?", "what", "is", "apples", "no", "idea", "the", "answer"]


def make_model(directory: Path, num_labels: int, chat_template: str | None = None) -> Path:
    """A randomly initialised tiny BERT classifier and a WordLevel tokenizer, built offline."""
    import torch
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors
    from transformers import BertConfig, BertForSequenceClassification, PreTrainedTokenizerFast

    vocab = {w: i for i, w in enumerate(["[PAD]", "[UNK]", "[CLS]", "[SEP]", *WORDS])}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    tok.normalizer = normalizers.Lowercase()
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]",
        pair="[CLS] $A [SEP] $B:1 [SEP]:1",
        special_tokens=[("[CLS]", 2), ("[SEP]", 3)],
    )
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        unk_token="[UNK]",
        pad_token="[PAD]",
        cls_token="[CLS]",
        sep_token="[SEP]",
    )
    if chat_template:
        tokenizer.chat_template = chat_template
    torch.manual_seed(num_labels)
    config = BertConfig(
        vocab_size=len(vocab),
        hidden_size=16,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=32,
        max_position_embeddings=64,
        num_labels=num_labels,
        initializer_range=0.5,  # large weights, so different inputs score differently
    )
    BertForSequenceClassification(config).save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    return directory


@pytest.fixture(scope="module")
def tiny_models(tmp_path_factory):
    root = tmp_path_factory.mktemp("rm")
    return {
        1: make_model(root / "one", 1),
        3: make_model(root / "three", 3),
        "chat": make_model(
            root / "chat", 1, "{% for m in messages %}{{ m['content'] }} ? {% endfor %}"
        ),
    }


PROMPT = "What is 3 + 4?"
COMPLETIONS = ["7", "8 apples", "no idea", "the answer is 7", "7 7 7 7 7 7 7 7", "?"]


def reference_logits(directory: Path, texts, special_tokens=True) -> np.ndarray:
    """The model run on each input alone (no padding), straight through transformers."""
    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(directory)
    model = AutoModelForSequenceClassification.from_pretrained(directory).eval()
    rows = []
    with torch.inference_mode():
        for args in texts:
            rows.append(
                model(**tokenizer(*args, add_special_tokens=special_tokens, return_tensors="pt"))
                .logits[0]
                .numpy()
            )
    return np.array(rows)


@pytest.mark.integration
@pytest.mark.slow  # importing torch and transformers takes seconds
def test_local_reward_model_scores_real_tiny_models(tiny_models):
    pairs = [(PROMPT, c) for c in COMPLETIONS]
    one = LocalRewardModel(tiny_models[1], batch_size=4)  # two batches, padded
    ref = reference_logits(tiny_models[1], pairs)
    np.testing.assert_allclose(one.score(PROMPT, COMPLETIONS), ref[:, 0], atol=1e-5)
    assert np.ptp(ref[:, 0]) > 0.01  # the inputs really score differently

    three = LocalRewardModel(tiny_models[3])
    ref = reference_logits(tiny_models[3], pairs)
    probs = np.exp(ref) / np.exp(ref).sum(axis=1, keepdims=True)
    np.testing.assert_allclose(three.score(PROMPT, COMPLETIONS), probs[:, -1], atol=1e-6)
    assert three.labels == ["LABEL_0", "LABEL_1", "LABEL_2"]

    chat = LocalRewardModel(tiny_models["chat"])
    rendered = [(f"{PROMPT} ? {c} ? ",) for c in COMPLETIONS]
    ref = reference_logits(tiny_models["chat"], rendered, special_tokens=False)
    np.testing.assert_allclose(chat.score(PROMPT, COMPLETIONS), ref[:, 0], atol=1e-5)

    reranker = RewardModelReranker(one)
    assert reranker.choose(PROMPT, COMPLETIONS, np.random.default_rng(0)) == int(
        np.argmax(one.score(PROMPT, COMPLETIONS))
    )


class TEIHandler(BaseHTTPRequestHandler):
    """Serves text-embeddings-inference's /predict for a batch of pairs from a LocalRewardModel."""

    model: LocalRewardModel

    def do_POST(self):
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        if self.path != "/predict" or body.get("raw_scores") is not True:
            self.send_response(422)
            self.end_headers()
            return
        logits = self.model.logits([tuple(p) for p in body["inputs"]])
        labels = self.model.labels
        out = [
            sorted(
                ({"label": labels[j], "score": float(v)} for j, v in enumerate(row)),
                key=lambda p: -p["score"],
            )
            for row in logits
        ]
        data = json.dumps(out).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args):
        pass


@pytest.mark.integration
@pytest.mark.slow
@pytest.mark.parametrize("labels", [1, 3])
def test_tei_loopback_server_equals_local_model(tiny_models, labels):
    local = LocalRewardModel(tiny_models[labels])
    handler = type("Handler", (TEIHandler,), {"model": LocalRewardModel(tiny_models[labels])})
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        client = HFEndpointRewardClient(f"http://127.0.0.1:{server.server_address[1]}")
        remote = client.score(PROMPT, COMPLETIONS)
        client.close()
    finally:
        server.shutdown()
        server.server_close()
        thread.join()
    np.testing.assert_allclose(remote, local.score(PROMPT, COMPLETIONS), atol=1e-5)


@pytest.mark.integration
@pytest.mark.slow
def test_export_scores_samples_and_evaluate_reports_the_reward_model(tiny_models, tmp_path):
    """`howhard export --reward-model DIR` scores each stored sample with a real (tiny) local
    model; `howhard evaluate` then reports success when that model picks the answer."""
    from howhard.backends.base import SamplingParams
    from howhard.cli import main
    from howhard.pool import read_pool
    from howhard.store import LabelStore, SampleRecord, StoreConfig
    from howhard.tasks import Query

    config = StoreConfig("arithmetic", "m", SamplingParams().to_json())
    queries = [Query(f"q{i}", f"What is {i} + 4?", {"answer": i + 4}) for i in range(6)]
    with LabelStore(tmp_path / "s.sqlite", config) as store:
        store.add_queries(queries)
        for i, q in enumerate(queries):
            texts = [COMPLETIONS[(i + j) % len(COMPLETIONS)] for j in range(4)]
            store.add_samples(
                q, [SampleRecord(j, t, float(j == i % 4), 1, 0.0) for j, t in enumerate(texts)]
            )
    out = tmp_path / "p.jsonl"
    model = str(tiny_models[1])
    assert (
        main(["export", str(tmp_path / "s.sqlite"), "--out", str(out), "--reward-model", model])
        == 0
    )
    pool = read_pool(out)
    local = LocalRewardModel(model)
    for i, (q, extra) in enumerate(zip(queries, pool.extras, strict=True)):
        texts = [COMPLETIONS[(i + j) % len(COMPLETIONS)] for j in range(4)]
        assert extra["scores"] == pytest.approx(local.score(q.prompt, texts), abs=1e-5)

    from howhard.runs import EvaluateSpec, run_evaluate

    ev = run_evaluate(EvaluateSpec(pool=out, budgets=[1, 4], max_per_query=4))
    expected = reranked_q(pool.rewards, [e["scores"] for e in pool.extras], 4, "reward-model")
    assert ev.reranked["reward-model"]["uniform"] == pytest.approx(
        [expected[:, 1].mean(), expected[:, 4].mean()]
    )
