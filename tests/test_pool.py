import itertools
import json
from math import comb

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from howhard.errors import BudgetError, PoolError
from howhard.pool import Pool, expected_best_of, read_pool, write_pool


def brute_best_of(rewards: np.ndarray, b: int) -> float:
    """Mean over all size-b subsets of the maximum reward."""
    subsets = list(itertools.combinations(rewards, b))
    return float(np.mean([max(s) for s in subsets]))


@settings(max_examples=60, deadline=None)
@given(st.lists(st.floats(0, 1), min_size=1, max_size=7))
def test_continuous_estimator_equals_enumeration(values):
    r = np.array(values)
    got = expected_best_of(r[None, :], len(r))[0]
    want = [brute_best_of(r, b) for b in range(1, len(r) + 1)]
    np.testing.assert_allclose(got, want, atol=1e-12)


@settings(max_examples=60, deadline=None)
@given(st.lists(st.sampled_from([0.0, 1.0]), min_size=1, max_size=9))
def test_binary_estimator_equals_closed_form_and_enumeration(values):
    r = np.array(values)
    n, c = len(r), int(r.sum())
    got = expected_best_of(r[None, :], n)[0]
    closed = [1 - comb(n - c, b) / comb(n, b) for b in range(1, n + 1)]
    np.testing.assert_allclose(got, closed, atol=1e-12)
    np.testing.assert_allclose(got, [brute_best_of(r, b) for b in range(1, n + 1)], atol=1e-12)


def test_estimator_is_vectorised_over_rows():
    rng = np.random.default_rng(0)
    r = rng.random((5, 6))
    rows = np.stack([expected_best_of(row[None, :], 4)[0] for row in r])
    np.testing.assert_allclose(expected_best_of(r, 4), rows)


def test_pool_q_handles_ragged_rows_and_gains():
    pool = Pool(("a", "b"), ("x", "y"), (np.array([1.0, 0, 0]), np.array([0.5, 0.2, 0.9, 0.1])))
    q = pool.q(3)
    assert q[:, 0].tolist() == [0.0, 0.0]
    np.testing.assert_allclose(q[0, 1:], [1 / 3, 2 / 3, 1.0])
    np.testing.assert_allclose(q[1, 3], brute_best_of(pool.rewards[1], 3))
    np.testing.assert_allclose(pool.gains(3).sum(axis=1), q[:, 3])
    assert not pool.binary


def test_b_above_pooled_samples_names_query_and_fix():
    pool = Pool(("only-one",), ("x",), (np.array([1.0]),))
    with pytest.raises(BudgetError, match=r"'only-one' has only 1 pooled samples.*max_per_query"):
        pool.q(4)


def test_roundtrip_jsonl_keeps_extra_fields(tmp_path):
    rows = [
        {"id": "a", "prompt": "What is 1 + 1?", "rewards": [1.0, 0.0], "answer": 2},
        {"id": "b", "prompt": "What is 2 + 2?", "rewards": [0.25], "source": {"k": [1]}},
    ]
    path = write_pool(rows, tmp_path / "p.jsonl")
    pool = read_pool(path)
    assert pool.extras == ({"answer": 2}, {"source": {"k": [1]}})
    write_pool(pool, tmp_path / "q.jsonl")
    assert [json.loads(x) for x in (tmp_path / "q.jsonl").read_text().splitlines()] == rows
    assert not list(tmp_path.glob(".*tmp"))  # no temp file left behind


def test_roundtrip_parquet(tmp_path):
    pytest.importorskip("pyarrow")
    rows = [{"id": "a", "prompt": "p", "rewards": [1.0, 0.0, 1.0], "answer": 3}]
    pool = read_pool(write_pool(rows, tmp_path / "p.parquet"))
    assert pool.ids == ("a",) and pool.rewards[0].tolist() == [1.0, 0.0, 1.0]
    assert pool.extras == ({"answer": 3},)


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ('{"id": "a", "prompt": "p"}', r"bad.jsonl:2: field 'rewards' is missing"),
        ('{"id": 3, "prompt": "p", "rewards": [1]}', r"bad.jsonl:2: field 'id' must be"),
        (
            '{"id": "a", "prompt": "p", "rewards": []}',
            r"bad.jsonl:2: field 'rewards' must be a non",
        ),
        ('{"id": "a", "prompt": "p", "rewards": [1.5]}', r"bad.jsonl:2: .*1.5, outside \[0, 1\]"),
        ('{"id": "a", "prompt": "p", "rewards": ["x"]}', r"bad.jsonl:2: .*only numbers"),
        ('{"id": "z", "prompt": "p", "rewards": [1]}', r"bad.jsonl:2: id 'z' repeats"),
        ("{not json", r"bad.jsonl:2: not valid JSON"),
        ("[1, 2]", r"bad.jsonl:2: a row must be a JSON object"),
    ],
)
def test_bad_rows_name_file_line_and_field(tmp_path, line, message):
    path = tmp_path / "bad.jsonl"
    path.write_text('{"id": "z", "prompt": "ok", "rewards": [0]}\n' + line + "\n")
    with pytest.raises(PoolError, match=message):
        read_pool(path)


def test_empty_and_missing_pool(tmp_path):
    (tmp_path / "empty.jsonl").write_text("\n")
    with pytest.raises(PoolError, match="holds no rows; label some queries first"):
        read_pool(tmp_path / "empty.jsonl")
    with pytest.raises(PoolError, match="does not exist; make one with howhard export"):
        read_pool(tmp_path / "nope.jsonl")


def test_failed_write_keeps_the_old_file(tmp_path):
    path = write_pool([{"id": "a", "prompt": "p", "rewards": [1.0]}], tmp_path / "p.jsonl")
    before = path.read_text()
    with pytest.raises(ValueError):  # NaN is refused by allow_nan=False mid-write
        write_pool([{"id": "b", "prompt": "p", "rewards": [float("nan")]}], path)
    assert path.read_text() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["p.jsonl"]


def test_select_keeps_order_and_truncates():
    pool = Pool(("a", "b"), ("x", "y"), (np.array([1.0, 0, 1]), np.array([0.0, 1, 1])))
    sub = pool.select(["b", "a"], 2)
    assert sub.ids == ("b", "a") and [r.tolist() for r in sub.rewards] == [[0, 1], [1, 0]]
    with pytest.raises(PoolError, match="not in the pool"):
        pool.select(["c"])
