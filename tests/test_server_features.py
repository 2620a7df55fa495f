"""Server-side embeddings as features (``--features server``): the request each API is sent and
the answer it gives, on exact dicts; then a real ``llama_cpp.server`` with embeddings on loopback
(the embedded SmolLM2): features, predictors trained and reloaded with a URL, and the proxy."""

from __future__ import annotations

import json

import httpx
import numpy as np
import pytest
from conftest import needs_model

from howhard.errors import BackendError, ConfigError
from howhard.features import EmbeddingServer, cached_transform
from howhard.features.server import (
    ServerEmbeddings,
    embeddings_request,
    parse_embeddings,
)
from howhard.pool import Pool
from howhard.runs.inputs import feature_source, featurize

URL = "http://127.0.0.1:9"  # nothing listens: a request there fails


# --- requests and answers, on exact dicts ------------------------------------------------------


def test_each_api_is_sent_the_texts_in_its_own_request_shape():
    assert embeddings_request("openai", "m", ["a", "b"]) == (
        "/v1/embeddings",
        {"model": "m", "input": ["a", "b"]},
    )
    assert embeddings_request("pooling", "m", ["a"]) == ("/pooling", {"model": "m", "input": ["a"]})
    assert embeddings_request("llamacpp", "m", ["a", "b"]) == (
        "/embedding",
        {"content": ["a", "b"]},
    )


def test_pooled_vectors_of_openai_and_vllm_are_read_in_index_order():
    body = {
        "object": "list",
        "data": [
            {"object": "embedding", "index": 1, "embedding": [3.0, 4.0]},
            {"object": "embedding", "index": 0, "embedding": [1.0, 2.0]},
        ],
        "model": "m",
        "usage": {"prompt_tokens": 4, "total_tokens": 4},
    }
    np.testing.assert_array_equal(parse_embeddings(body, "openai", 2, "server"), [[1, 2], [3, 4]])
    pooling = {"data": [{"index": 0, "object": "pooling", "data": [0.5, -1.0]}]}
    np.testing.assert_array_equal(parse_embeddings(pooling, "pooling", 1, "server"), [[0.5, -1]])


def test_per_token_vectors_are_pooled_by_the_last_token_or_the_mean():
    # llama-cpp-python's /v1/embeddings for a causal LM: a vector per token
    body = {"data": [{"index": 0, "embedding": [[1.0, 0.0], [3.0, 2.0]]}]}
    np.testing.assert_array_equal(parse_embeddings(body, "openai", 1, "last"), [[3, 2]])
    np.testing.assert_array_equal(parse_embeddings(body, "openai", 1, "mean"), [[2, 1]])
    # llama-server's /embedding: a list of {index, embedding: rows}
    tokens = [{"index": 0, "embedding": [[1.0, 1.0], [0.0, 5.0], [2.0, 0.0]]}]
    np.testing.assert_array_equal(parse_embeddings(tokens, "llamacpp", 1, "last"), [[2, 0]])
    pooled = [{"index": 1, "embedding": [[7.0, 8.0]]}, {"index": 0, "embedding": [[5.0, 6.0]]}]
    np.testing.assert_array_equal(
        parse_embeddings(pooled, "llamacpp", 2, "server"), [[5, 6], [7, 8]]
    )
    older = {"embedding": [0.25, 0.75]}  # an older llama-server, one text
    np.testing.assert_array_equal(parse_embeddings(older, "llamacpp", 1, "server"), [[0.25, 0.75]])


@pytest.mark.parametrize(
    ("body", "api", "pooling", "message"),
    [
        ({"data": [{"index": 0, "embedding": [1.0]}]}, "openai", "last", "pass pooling='server'"),
        (
            {"data": [{"index": 0, "embedding": [[1.0], [2.0]]}]},
            "openai",
            "server",
            "one vector per token \\(2 for text 0\\).*pass pooling='last' or 'mean'",
        ),
        ({"data": []}, "openai", "server", "0 vectors for 1 texts"),
        ({"error": "busy"}, "openai", "server", "no 'data' list"),
        ({"data": [{"index": 0, "vector": [1.0]}]}, "openai", "server", "no numeric 'embedding'"),
        ({"data": [{"index": 0, "embedding": [float("nan")]}]}, "openai", "server", "NaN"),
        ({"embeddings": []}, "llamacpp", "last", "not a list of embeddings"),
    ],
)
def test_an_answer_that_is_not_what_was_asked_names_the_fix(body, api, pooling, message):
    with pytest.raises(BackendError, match=message):
        parse_embeddings(body, api, 1, pooling)


def test_the_options_are_checked_and_name_their_parameter():
    with pytest.raises(ConfigError, match="feature_api must be one of openai, llamacpp, pooling"):
        EmbeddingServer(URL, api="tei")
    with pytest.raises(ConfigError, match="feature_pooling must be one of last, mean, server"):
        EmbeddingServer(URL, pooling="first")
    with pytest.raises(ConfigError, match="not an http"):
        EmbeddingServer("localhost:8080")
    assert EmbeddingServer("http://h:8000/v1/").root == "http://h:8000"
    assert "sk-secret" not in repr(EmbeddingServer(URL, "sk-secret"))


def _featurizer(handler, **server):
    sleeps: list[float] = []
    settings = {"batch_size": 2, "retries": 2, "backoff": 0.5, **server}
    f = ServerEmbeddings(
        EmbeddingServer("http://emb:8000", **settings),
        "m",
        transport=httpx.MockTransport(handler),
        sleep=sleeps.append,
    )
    return f, sleeps


def _pooled(request: httpx.Request) -> dict:
    texts = json.loads(request.content)["input"]
    return {"data": [{"index": i, "embedding": [len(t), 1.0]} for i, t in enumerate(texts)]}


def test_batches_of_batch_size_and_a_busy_server_is_retried_with_backoff():
    seen, answers = [], iter([503, 200, 200])

    def handler(request):
        seen.append(json.loads(request.content)["input"])
        status = next(answers)
        return httpx.Response(status, json=_pooled(request) if status == 200 else {"error": "x"})

    f, sleeps = _featurizer(handler, pooling="server")
    x = f.transform(["a", "bb", "ccc"])
    np.testing.assert_array_equal(x, [[1, 1], [2, 1], [3, 1]])
    assert seen == [["a", "bb"], ["a", "bb"], ["ccc"]] and sleeps == [0.5]
    assert f.dim == 2


def test_a_server_without_embeddings_is_not_retried_and_the_error_says_how_to_start_it():
    calls = []

    def handler(request):
        calls.append(request)
        message = "Llama model must be created with embedding=True to call this method"
        return httpx.Response(500, json={"error": {"message": message}})

    f, sleeps = _featurizer(handler)
    with pytest.raises(BackendError, match=r"start llama_cpp\.server with --embedding true") as e:
        f.transform(["a"])
    assert "http://emb:8000/v1/embeddings: HTTP 500" in str(e.value)
    assert len(calls) == 1 and sleeps == []
    f, _ = _featurizer(lambda r: httpx.Response(404, text="Not Found"), api="pooling")
    with pytest.raises(
        BackendError, match="does not offer /pooling; check the URL and feature_api"
    ):
        f.transform(["a"])


def test_the_key_is_sent_as_a_bearer_token_and_never_shown():
    def handler(request):  # a server that echoes the key in its error
        return httpx.Response(401, text=f"bad key {request.headers['authorization']}")

    f, _ = _featurizer(handler, api_key="sk-secret-1")
    with pytest.raises(BackendError) as e:
        f.transform(["a"])
    assert "HTTP 401" in str(e.value) and "sk-secret-1" not in str(e.value)


def test_a_server_that_stays_down_names_its_url_after_the_retries():
    def handler(request):
        raise httpx.ConnectError("refused")

    f, sleeps = _featurizer(handler)
    with pytest.raises(BackendError, match="http://emb:8000/v1/embeddings: no embeddings after 3"):
        f.transform(["a"])
    assert sleeps == [0.5, 1.0]


# --- the feature cache --------------------------------------------------------------------------


class Rows:
    name = "rows"

    def transform(self, texts):
        return np.array([[len(t), 0.0] for t in texts], dtype=np.float32)


def test_the_cache_is_keyed_by_the_served_model_never_by_its_url(tmp_path):
    """Features cached for model A are found from any URL (the one here is down) and are never
    given for model B."""
    prompts = ("What is 1 + 2?", "What is 3 + 4?")
    pool = Pool(("a", "b"), prompts, (np.array([1.0]), np.array([0.0])))
    cache = tmp_path / "features.npz"
    server = EmbeddingServer(URL)
    source = feature_source("server", "model-a", "arithmetic", server)
    assert source == "server(openai, last):model-a:arithmetic"
    cached_transform(source, Rows, prompts, cache)
    x = featurize(pool, "server", "arithmetic", "model-a", str(cache), server)
    np.testing.assert_array_equal(x, [[14, 0], [14, 0]])
    with pytest.raises(ConfigError, match="holds features of server\\(openai, last\\):model-a"):
        featurize(pool, "server", "arithmetic", "model-b", str(cache), server)
    mean = EmbeddingServer(URL, pooling="mean")
    with pytest.raises(ConfigError, match="not server\\(openai, mean\\):model-a"):
        featurize(pool, "server", "arithmetic", "model-a", str(cache), mean)


# --- a real llama_cpp.server with embeddings ----------------------------------------------------


@pytest.fixture(scope="module")
def embedding_server():
    from servers import llama_server

    with llama_server(extra_args=["--embedding", "true"]) as server:
        yield server


TEXTS = [f"Q: What is {a} + {b}?\nA:" for a, b in [(3, 4), (12, 7), (250, 31), (9, 9), (1, 0)]]


@pytest.mark.integration
@needs_model
def test_features_from_a_real_server_are_its_hidden_state_one_per_text(embedding_server):
    """A row per text, the same on every call, the same batched as one at a time, and equal to
    the ``hidden`` source's state of the same model."""
    from howhard.backends.llamacpp import LlamaCppHiddenState
    from howhard.features.server import served_model

    server = EmbeddingServer(embedding_server.url, batch_size=4)
    model = served_model(server)
    assert model.endswith("SmolLM2-135M-Instruct.Q4_1.gguf")
    f = ServerEmbeddings(server, model)
    x = f.transform(TEXTS)
    assert x.shape == (5, 576) and x.dtype == np.float32 and f.dim == 576
    np.testing.assert_array_equal(f.transform(TEXTS), x)
    one = np.concatenate([ServerEmbeddings(server, model).transform([t]) for t in TEXTS])
    np.testing.assert_array_equal(one, x)  # llama-cpp-python's batches are wrong: not used
    assert f.one_per_request
    hidden = LlamaCppHiddenState(None, n_threads=1).transform(TEXTS)
    np.testing.assert_allclose(x, hidden, atol=1e-4)
    mean = ServerEmbeddings(EmbeddingServer(embedding_server.url, pooling="mean"), model)
    assert not np.allclose(mean.transform(TEXTS[:1]), x[:1])


@pytest.mark.integration
@needs_model
def test_a_server_started_without_embeddings_gives_the_clear_error():
    from servers import llama_server

    with llama_server() as plain:
        f = ServerEmbeddings(EmbeddingServer(plain.url, retries=0), "smollm2")
        with pytest.raises(BackendError) as e:
            f.transform(["Q: What is 1 + 1?\nA:"])
    message = str(e.value)
    assert message.startswith(f"{plain.url}/v1/embeddings: HTTP 500")
    assert "start llama_cpp.server with --embedding true" in message


def _pool(path, n=24, seed=3):
    from howhard.tasks import get_task

    rows = []
    for i, q in enumerate(get_task("arithmetic").queries(n, seed)):
        wins = 6 if len(q.prompt) < 16 else i % 2
        rows.append({"id": q.id, "prompt": q.prompt, "rewards": [1.0] * wins + [0.0] * (8 - wins)})
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


@pytest.mark.integration
@needs_model
def test_a_predictor_on_server_features_records_no_url_and_is_rebuilt_from_one(
    embedding_server, tmp_path
):
    from howhard.pool import read_pool
    from howhard.predict import load_predictor
    from howhard.runs import TrainSpec, predictor_features, run_train

    pool_path, out = _pool(tmp_path / "pool.jsonl"), tmp_path / "p.npz"
    server = EmbeddingServer(embedding_server.url, batch_size=8)
    spec = TrainSpec(
        pool=pool_path, out=out, features="server", head="logistic", feature_server=server
    )
    trained = run_train(spec).predictor
    predictor = load_predictor(out)
    meta = predictor.meta_
    assert meta["features"] == "server" and meta["feature_dim"] == 576
    assert meta["feature_model"].endswith("SmolLM2-135M-Instruct.Q4_1.gguf")
    assert (meta["feature_api"], meta["feature_pooling"]) == ("openai", "last")
    with np.load(out) as saved:
        header = str(saved["header"])
    assert meta["feature_model"] in header and "127.0.0.1" not in header  # no URL saved
    pool = read_pool(_pool(tmp_path / "held-out.jsonl", n=6, seed=4))
    with pytest.raises(ConfigError, match="pass the URL of a server of that model as feature_url"):
        predictor_features(predictor, out, pool, None)
    # at load only the URL is given: the API and pooling are the predictor's
    given = EmbeddingServer(embedding_server.url + "/v1", pooling="server")
    X = predictor_features(predictor, out, pool, None, given)
    np.testing.assert_allclose(
        predictor.predict_proba_success(X), trained.predict_proba_success(X), atol=1e-6
    )
    assert X.shape == (len(pool), 576)


@pytest.mark.integration
@pytest.mark.slow
@needs_model
def test_the_proxy_featurises_requests_through_its_upstreams_embeddings(embedding_server, tmp_path):
    """``howhard serve`` with a predictor on server features and no feature URL: the upstream's
    own embeddings decide each request."""
    from serving import API_KEY, howhard_server

    from howhard.runs import TrainSpec, run_train

    pool, predictor = _pool(tmp_path / "pool.jsonl", n=12), tmp_path / "p.npz"
    server = EmbeddingServer(embedding_server.url)
    run_train(
        TrainSpec(
            pool=pool, out=predictor, features="server", head="logistic", feature_server=server
        )
    )
    with howhard_server(embedding_server.url, predictor, pool) as proxy:
        answer = httpx.post(
            proxy.url + "/v1/completions",
            headers={"Authorization": f"Bearer {API_KEY}"},
            json={"model": "howhard", "prompt": "What is 2 + 3?", "max_tokens": 4},
            timeout=120,
        )
        assert answer.status_code == 200, answer.text
        assert 1 <= int(answer.headers["x-howhard-samples"]) <= 4
        log = proxy.log.read_text()
    assert "calibration features (server(openai, last):" in log


# --- the proxy's settings -------------------------------------------------------------------------


def _server_predictor(tmp_path):
    from howhard.predict import SuccessPredictor

    rng = np.random.default_rng(0)
    X, y = rng.normal(size=(20, 3)), np.column_stack([np.arange(20) % 3, np.full(20, 2)])
    meta = {
        "features": "server",
        "feature_model": "served-m",
        "feature_api": "pooling",
        "feature_pooling": "server",
        "feature_dim": 3,
        "task": "arithmetic",
    }
    path = tmp_path / "p.npz"
    SuccessPredictor(head="logistic").fit(X, y, meta=meta).save(path)
    pool = _pool(tmp_path / "calibration.jsonl", n=10)
    return path, pool


def test_the_proxy_reads_server_features_from_the_first_upstream_unless_told(tmp_path, monkeypatch):
    from howhard.serve import Startup
    from howhard.serve.config import load_config

    predictor, pool = _server_predictor(tmp_path)
    settings = {
        "upstreams": ["http://up-1:8000", "http://up-2:8000"],
        "upstream_model": "served-m",
        "predictor": str(predictor),
        "calibration": str(pool),
        "budget": 2.0,
        "max_per_query": 4,
        "api_keys": ["client-key"],
    }
    startup = Startup(load_config(None, **settings))
    assert startup.source == "server(pooling, server):served-m:arithmetic"
    inner = startup.featurizer(startup.source).inner  # made without a request: the model is known
    assert (inner.server.url, inner.server.api, inner.server.pooling) == (
        "http://up-1:8000",
        "pooling",
        "server",
    )
    monkeypatch.setenv("EMB_KEY", "sk-emb-secret")
    config = load_config(
        None, **settings, feature_url="http://emb:9000", feature_api_key_env="EMB_KEY"
    )
    assert "sk-emb-secret" not in repr(config) and config.redactor()("sk-emb-secret") == "***"
    server = Startup(config).featurizer(startup.source).inner.server
    assert (server.url, server.api_key) == ("http://emb:9000", "sk-emb-secret")
    with pytest.raises(ConfigError, match="EMB_MISSING \\(feature key\\) is not set"):
        load_config(None, **settings, feature_api_key_env="EMB_MISSING")


def test_per_token_answers_to_several_texts_are_asked_again_one_text_per_request():
    """llama-cpp-python reads every text after the first of a batch at the wrong offset: such
    an answer is discarded, and each text is asked alone."""
    seen = []

    def handler(request):
        texts = json.loads(request.content)["input"]
        seen.append(texts)
        wrong = len(texts) > 1
        rows = [[[9.0, 9.0] if wrong and i else [len(t), 0.0]] for i, t in enumerate(texts)]
        return httpx.Response(
            200, json={"data": [{"index": i, "embedding": r} for i, r in enumerate(rows)]}
        )

    f, _ = _featurizer(handler)
    np.testing.assert_array_equal(f.transform(["a", "bb", "ccc"]), [[1, 0], [2, 0], [3, 0]])
    assert seen == [["a", "bb"], ["a"], ["bb"], ["ccc"]] and f.one_per_request


def test_the_command_line_asks_for_the_feature_url_by_its_flag(tmp_path, capsys, monkeypatch):
    from howhard.cli import main

    predictor, pool = _server_predictor(tmp_path)
    argv = ["evaluate", str(pool), "--predictor", str(predictor), "--max-per-query", "8"]
    argv += ["--budgets", "1,2"]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "pass the URL of a server of that model as --feature-url" in err
    monkeypatch.delenv("NO_SUCH_KEY", raising=False)
    assert main([*argv, "--feature-url", URL, "--feature-api-key-env", "NO_SUCH_KEY"]) == 2
    assert "NO_SUCH_KEY (the embedding server's key) is not set" in capsys.readouterr().err
    assert main([*argv, "--feature-url", URL]) != 0
    assert "http://127.0.0.1:9/pooling: no embeddings after" in capsys.readouterr().err
