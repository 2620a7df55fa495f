import argparse
import json

import pytest

from howhard.cli import flag_message, main, parser
from howhard.errors import ConfigError, ModelNotFoundError


def run(capsys, *argv):
    code = main(list(argv))
    out = capsys.readouterr()
    return code, out.out, out.err


COMMANDS = ["label", "export", "score", "train", "evaluate", "bestof", "compare", "serve", "demo"]


def test_the_command_list_below_is_every_subcommand():
    (sub,) = [a for a in parser()._actions if isinstance(a, argparse._SubParsersAction)]
    assert sorted(sub.choices) == sorted(COMMANDS)


@pytest.mark.parametrize("command", COMMANDS)
def test_every_subcommand_has_help_with_an_example(capsys, command):
    with pytest.raises(SystemExit) as exit_info:
        parser().parse_args([command, "--help"])
    assert exit_info.value.code == 0
    out = capsys.readouterr().out
    assert f"example:\n  howhard {command}" in out
    assert "%%" not in out  # argparse expands %% in flags' help, not in the description
    (sub,) = [a for a in parser()._actions if isinstance(a, argparse._SubParsersAction)]
    for flag in sub.choices[command]._actions:  # a required flag has no default to state
        assert not flag.required or "default" not in (flag.help or ""), flag.dest


def write_rows(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path)


def test_missing_model_file(capsys, tmp_path):
    code, _, err = run(
        capsys,
        "label",
        "--queries",
        "2",
        "--store",
        str(tmp_path / "s.sqlite"),
        "--model",
        str(tmp_path / "missing.gguf"),
    )
    assert code == 2
    assert "missing.gguf does not exist; pass --model=PATH to a GGUF file" in err
    assert not (tmp_path / "s.sqlite").exists()


def test_backend_errors_name_parameters_and_the_command_line_words_them_as_flags(capsys, tmp_path):
    from howhard.backends.llamacpp import resolve_model

    with pytest.raises(
        ModelNotFoundError, match=r"missing\.gguf does not exist; pass model=PATH"
    ) as e:
        resolve_model(tmp_path / "missing.gguf")
    assert e.value.params == ("model",)
    store = str(tmp_path / "s.sqlite")
    code, _, err = run(capsys, "label", "--backend", "openai", "--store", store)
    assert code == 2
    assert "the openai backend needs --endpoint=URL (one or more base URLs) and --model=NAME" in err
    code, _, err = run(capsys, "label", "--endpoint", "http://127.0.0.1:1", "--store", store)
    assert code == 2
    assert "--backend=llamacpp takes no --endpoint (they are for --backend=openai)" in err
    code, _, err = run(capsys, "label", "--vote", "0", "--store", store)
    assert code == 2 and "--vote must be >= 1, got 0" in err


def test_flag_message_rewrites_the_named_parameters_but_not_paths_or_other_words():
    serve = parser()._subparsers._group_actions[0].choices["serve"]
    error = ConfigError(
        "/tmp/router/router.npz routes; pass it as router=PATH, not predictor: strong_share. "
        "budget stays; upstreams is empty, see upstreams.toml or upstream_model.",
        param=("router", "strong_share", "upstreams", "upstream_model", "unknown"),
    )
    assert flag_message(error, serve) == (
        "/tmp/router/router.npz routes; pass it as --router=PATH, not predictor: --strong-share. "
        "budget stays; --upstream is empty, see upstreams.toml or --upstream-model."
    )


def test_bad_pool_row(capsys, tmp_path):
    pool = write_rows(
        tmp_path / "p.jsonl",
        [{"id": "a", "prompt": "x", "rewards": [1, 0]}, {"id": "b", "prompt": "y", "rewards": [2]}],
    )
    code, _, err = run(capsys, "evaluate", pool, "--budgets", "1", "--max-per-query", "1")
    assert code == 2 and f"{pool}:2: field 'rewards' has 2.0, outside [0, 1]" in err


def test_budgets_out_of_range(capsys, tmp_path):
    pool = write_rows(tmp_path / "p.jsonl", [{"id": "a", "prompt": "x", "rewards": [1, 0, 1]}])
    code, _, err = run(capsys, "evaluate", pool, "--budgets", "1,4", "--max-per-query", "3")
    assert code == 2 and "budget 4 is outside [0, --max-per-query=3]" in err
    code, _, err = run(capsys, "evaluate", pool, "--budgets", "-1", "--max-per-query", "3")
    assert code == 2 and "budget -1 is outside" in err


def test_empty_pool(capsys, tmp_path):
    (tmp_path / "e.jsonl").write_text("")
    code, _, err = run(
        capsys, "evaluate", str(tmp_path / "e.jsonl"), "--max-per-query", "2", "--budgets", "1"
    )
    assert code == 2 and "holds no rows; label some queries first" in err


def test_one_sample_per_query_and_b_above_n(capsys, tmp_path):
    pool = write_rows(
        tmp_path / "p.jsonl",
        [{"id": "a", "prompt": "x", "rewards": [1]}, {"id": "b", "prompt": "y", "rewards": [0]}],
    )
    code, _, err = run(capsys, "evaluate", pool, "--budgets", "1,2", "--max-per-query", "4")
    assert code == 2
    assert "query 'a' has only 1 pooled samples but b up to 4 was asked" in err
    assert "Lower --max-per-query to <= 1 or label more samples per query" in err


def test_evaluate_json_without_predictor(capsys, tmp_path):
    pool = write_rows(
        tmp_path / "p.jsonl",
        [
            {"id": "a", "prompt": "x", "rewards": [1, 0, 0, 0]},
            {"id": "b", "prompt": "y", "rewards": [0, 0, 0, 0]},
            {"id": "c", "prompt": "z", "rewards": [1, 1, 1, 0]},
        ],
    )
    code, out, _ = run(
        capsys,
        "evaluate",
        pool,
        "--budgets",
        "1,2",
        "--max-per-query",
        "4",
        "--json",
        "--out",
        str(tmp_path / "r"),
    )
    assert code == 0
    data = json.loads(out)
    assert data["budgets"] == [1.0, 2.0]
    assert set(data["curves"]) == {"uniform", "oracle"}
    assert data["curves"]["uniform"][0] == pytest.approx((0.25 + 0 + 0.75) / 3)
    # oracle: 3 samples, none to "b" (never solved): c gets 1 (+0.75), then 0.25 twice (a, a or c)
    assert data["curves"]["oracle"][0] == pytest.approx((0.75 + 0.25 + 0.25) / 3)
    assert data["curves"]["oracle"][0] >= data["curves"]["uniform"][0]
    assert {p.name for p in (tmp_path / "r").iterdir()} == {"report.md", "report.json", "plot.png"}


def test_export_of_missing_store(capsys, tmp_path):
    code, _, err = run(capsys, "export", str(tmp_path / "no.sqlite"), "--out", "x.jsonl")
    assert code == 2 and "does not exist; create it with howhard label" in err


def test_train_missing_pool_and_bad_holdout(capsys, tmp_path):
    code, _, err = run(capsys, "train", str(tmp_path / "no.jsonl"), "--out", "m.npz")
    assert code == 2 and "does not exist" in err


def test_predictor_without_recorded_features(capsys, tmp_path):
    import numpy as np

    from howhard.predict import SuccessPredictor

    rng = np.random.default_rng(0)
    model = SuccessPredictor().fit(rng.normal(size=(20, 3)), np.tile([1, 4], (20, 1)))
    model.save(tmp_path / "m.npz")
    pool = write_rows(tmp_path / "p.jsonl", [{"id": "a", "prompt": "x", "rewards": [1, 0]}])
    code, _, err = run(
        capsys,
        "evaluate",
        pool,
        "--predictor",
        str(tmp_path / "m.npz"),
        "--budgets",
        "1",
        "--max-per-query",
        "2",
    )
    assert code == 2 and "does not record its feature source and task; train it with" in err


def test_evaluate_bootstrap_flag(capsys, tmp_path):
    rows = [{"id": f"q{i}", "prompt": f"x{i}", "rewards": [i % 2, 0, 1, 0]} for i in range(20)]
    pool = write_rows(tmp_path / "p.jsonl", rows)
    code, _, err = run(capsys, "evaluate", pool, "--budgets", "1,2", "--max-per-query", "4",
                       "--bootstrap", "-1")  # fmt: skip
    assert code == 2 and "--bootstrap must be a whole number of resamples >= 0" in err
    code, out, _ = run(capsys, "evaluate", pool, "--budgets", "1,2", "--max-per-query", "4",
                       "--bootstrap", "0")  # fmt: skip
    assert code == 0 and "% [" not in out and "resamples" not in out
    code, out, _ = run(capsys, "evaluate", pool, "--budgets", "1,2", "--max-per-query", "4")
    assert code == 0 and "over 1000 resamples of the queries" in out and "% [" in out


@pytest.mark.parametrize(
    ("second", "message"),
    [
        ({"id": "a", "prompt": "What is 2 + 2?"}, "q.jsonl:3: id 'a' repeats the row at "),
        (
            {"id": "b", "prompt": "What is 1 + 1?"},
            "q.jsonl:3: the prompt of id 'b' repeats that of id 'a' at ",
        ),
    ],
)
def test_label_input_with_a_repeated_id_or_prompt_is_refused_before_drawing(
    capsys, tmp_path, second, message
):
    rows = [{"id": "a", "prompt": "What is 1 + 1?"}, {"id": "c", "prompt": "What is 3 + 3?"}]
    path = write_rows(tmp_path / "q.jsonl", [*rows, second])
    store = tmp_path / "s.sqlite"
    code, _, err = run(capsys, "label", "--input", path, "--store", str(store), "--quiet")
    assert code == 2 and message + f"{path}:1" in err
    assert "prompt's hash" in err or "ids must be unique" in err
    assert not store.exists()


def test_train_says_which_task_it_assumed_and_suggests_task_when_the_queries_do_not_fit(
    capsys, tmp_path
):
    rows = [
        {"id": f"q{i}", "prompt": f"def tri(n):\n    return {i}\n", "rewards": [i % 2, 1, 0, 1]}
        for i in range(8)
    ]
    pool = write_rows(tmp_path / "p.jsonl", rows)
    code, _, err = run(capsys, "train", pool, "--features", "task", "--out", str(tmp_path / "m"))
    assert code == 2
    assert f"no row of {pool} names its task, so its queries are read as arithmetic" in err
    assert "is not an arithmetic question" in err
    assert "read as arithmetic ones: if they are not, pass --task=NAME" in err


def test_label_help_states_how_many_queries_it_generates_by_default(capsys):
    with pytest.raises(SystemExit):
        parser().parse_args(["label", "--help"])
    assert "generate this many queries (default 100)" in capsys.readouterr().out
