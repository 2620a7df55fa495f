"""An ``--out`` that would destroy data is refused before any work: a command's own input, a
label store, a directory where a file is asked (and a file where a report directory is)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from howhard.cli import main
from howhard.store import LabelStore, StoreConfig

ROWS = [
    {"id": f"q{i}", "prompt": f"What is {i} + {i}?", "rewards": [i % 2, 1, 0, int(i % 3 == 0)]}
    for i in range(12)
]


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str]:
    code = main(list(argv))
    return code, capsys.readouterr().err


@pytest.fixture
def files(tmp_path: Path) -> dict[str, Path]:
    pool = tmp_path / "pool.jsonl"
    pool.write_text("".join(json.dumps(r) + "\n" for r in ROWS))
    stores = [tmp_path / "a.sqlite", tmp_path / "b.sqlite"]
    for store in stores:
        LabelStore(store, StoreConfig("arithmetic", "fake-model", '{"max_tokens": 8}')).close()
    return {"pool": pool, "store": stores[0], "other": stores[1], "dir": tmp_path}


def unchanged(paths: list[Path]):
    before = {p: p.read_bytes() for p in paths}
    return lambda: {p: p.read_bytes() for p in paths} == before


def test_export_never_writes_over_its_store_another_store_or_a_directory(files, capsys):
    same = unchanged([files["store"], files["other"]])
    for out, message in [
        (files["store"], "is the input file"),
        (files["other"], "is a label store: writing it would lose its samples"),
        (files["dir"], "is a directory; name a file"),
    ]:
        code, err = run(capsys, "export", str(files["store"]), "--out", str(out))
        assert code == 2 and f"--out {out} {message}" in err
    assert same()
    code, err = run(
        capsys, "export", str(files["dir"] / "none.sqlite"), "--out", str(files["pool"])
    )
    assert code == 2 and "does not exist" in err  # a missing store, not a traceback


def test_train_never_writes_over_its_pool_or_its_feature_cache(files, capsys):
    pool, cache = files["pool"], files["dir"] / "f.npz"
    argv = ["train", str(pool), "--features", "ngrams", "--head", "logistic", "--holdout", "0.2"]
    code, err = run(capsys, *argv, "--out", str(pool))
    assert code == 2 and f"--out {pool} is the input file" in err
    assert (
        run(capsys, *argv, "--feature-cache", str(cache), "--out", str(files["dir"] / "p.npz"))[0]
        == 0
    )
    same = unchanged([pool, cache])
    code, err = run(capsys, *argv, "--feature-cache", str(cache), "--out", str(cache))
    assert code == 2 and "is the input file" in err and same()


@pytest.mark.parametrize("command", ["evaluate", "compare"])
def test_a_report_out_that_is_a_file_is_refused_before_the_work(files, capsys, command):
    taken = files["dir"] / "taken.txt"
    taken.write_text("mine")
    argv = [command, str(files["pool"]), "--max-per-query", "4", "--budgets", "1,2"]
    if command == "compare":
        argv += ["--predictor", str(files["dir"] / "missing.npz")]  # checked after --out
    code, err = run(capsys, *argv, "--out", str(taken))
    assert code == 2 and f"--out {taken} is a file" in err and taken.read_text() == "mine"


def test_a_feature_cache_that_is_not_one_is_named_without_advice_to_delete_it(files, capsys):
    argv = ["train", str(files["pool"]), "--features", "ngrams", "--head", "logistic"]
    for cache in (files["pool"], files["dir"]):
        code, err = run(capsys, *argv, "--feature-cache", str(cache), "--out", "p.npz")
        assert code == 2 and f"{cache} is not a feature cache" in err and "delete" not in err


def test_export_of_an_unfinished_store_warns_and_writes_what_is_stored(files, capsys):
    from howhard.store import SampleRecord
    from howhard.tasks import Query

    queries = [Query(f"q{i}", f"What is {i} + 1?") for i in range(4)]
    store, out = files["dir"] / "u.sqlite", files["dir"] / "u.jsonl"
    with LabelStore(store, StoreConfig("arithmetic", "fake-model", '{"max_tokens": 8}')) as s:
        s.add_queries(queries)
        for q, k in zip(queries[:3], (3, 3, 1), strict=True):  # q3: none yet; q2: 1 of 3
            s.add_samples(q, [SampleRecord(j, " 2", 0.0, 1, 0.0) for j in range(k)])
    code, err = run(capsys, "export", str(store), "--out", str(out))
    assert code == 0 and len(out.read_text().splitlines()) == 3
    assert "is not finished: 1 of its 4 queries have no sample yet and 1 have fewer" in err
    with LabelStore(store) as s:
        s.add_samples(queries[2], [SampleRecord(j, " 2", 0.0, 1, 0.0) for j in (1, 2)])
        s.add_samples(queries[3], [SampleRecord(j, " 2", 0.0, 1, 0.0) for j in range(3)])
    code, err = run(capsys, "export", str(store), "--out", str(out))
    assert code == 0 and "not finished" not in err
