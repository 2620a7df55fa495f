"""Every file howhard reads or writes, fed hostile or broken input: a clear error naming the file
(and line or field) and the fix, never a traceback, never unbounded memory; and the store and the
writers leave nothing in the way of the next run (issue 11, section 5)."""

from __future__ import annotations

import gzip
import json
import multiprocessing
import os
import signal
import sqlite3
import subprocess
import sys
import textwrap
import time
import tracemalloc
import zipfile
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from howhard.cli import main
from howhard.errors import ConfigError, PoolError, StoreError
from howhard.files import STALE_SECONDS, remove_stale_temps
from howhard.pool import jsonl_rows, read_pool, write_pool
from howhard.predict import GainsPredictor, SuccessPredictor, load_predictor
from howhard.predict._io import MAX_ARRAY_BYTES
from howhard.runs import ExportSpec, read_queries, run_export
from howhard.store import SCHEMA, LabelStore, SampleRecord, StoreConfig, WriterLock
from howhard.tasks import Query

SRC = str(Path(__file__).resolve().parents[1] / "src")
CONFIG = StoreConfig("arithmetic", "fake-model", '{"max_tokens": 8}')


def run_python(code: str, *args: str, **kwargs: Any) -> subprocess.Popen[str]:
    """A real Python process running ``code`` (with ``args`` as sys.argv[1:]) with this
    worktree's howhard."""
    env = {**os.environ, "PYTHONPATH": SRC, "OMP_WAIT_POLICY": "PASSIVE"}
    return subprocess.Popen(
        [sys.executable, "-c", textwrap.dedent(code), *args], env=env, text=True, **kwargs
    )


# ------------------------------------------------------------------------ saved predictors


@pytest.fixture(scope="module")
def saved(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    out = tmp_path_factory.mktemp("models")
    rng = np.random.default_rng(0)
    X = rng.normal(size=(40, 6))
    y = np.column_stack([rng.integers(0, 5, 40), np.full(40, 4)])
    gains = rng.uniform(0, 0.3, size=(40, 3))
    gains.sort(axis=1)
    return {
        "success": SuccessPredictor(head="mlp", hidden=3, max_iter=5).fit(X, y).save(out / "s.npz"),
        "gains": GainsPredictor(max_iter=5).fit(X, gains[:, ::-1]).save(out / "g.npz"),
    }


def members(path: Path) -> dict[str, np.ndarray]:
    with np.load(path, allow_pickle=False) as data:
        return {name: data[name] for name in data.files}


def rewrite(path: Path, out: Path, header: Any = None, **arrays: Any) -> Path:
    """A copy of the saved model at ``path`` with header fields and arrays replaced."""
    data = members(path)
    head = json.loads(str(data["header"][()]))
    if isinstance(header, dict):
        head.update(header)
    data["header"] = np.array(header if isinstance(header, str) else json.dumps(head))
    data.update(arrays)
    np.savez(out, **data)
    return out


def add_member(path: Path, out: Path, name: str, header: dict[str, Any], data: Any) -> Path:
    """A copy of ``path`` with one more ``.npy`` member: its array header as given (any
    declared shape and dtype) and ``data`` (bytes, or an int: that many zero bytes, written
    deflated in chunks so the file stays small)."""
    out.write_bytes(path.read_bytes())
    with (
        zipfile.ZipFile(out, "a", compression=zipfile.ZIP_DEFLATED) as zf,
        zf.open(name, "w", force_zip64=True) as f,
    ):
        np.lib.format.write_array_header_1_0(f, header)
        if isinstance(data, int):
            chunk = bytes(1 << 24)
            for start in range(0, data, len(chunk)):
                f.write(chunk[: min(len(chunk), data - start)])
        else:
            f.write(data)
    return out


def test_an_extra_huge_member_is_never_read(saved: dict[str, Path], tmp_path: Path) -> None:
    """The issue's 1.5 MB file with a 1.6 GB zero array, scaled to 256 MiB: the file is small,
    loading allocates next to nothing, and the model is the one saved."""
    size = 256 << 20
    bomb = add_member(
        saved["success"],
        tmp_path / "bomb.npz",
        "junk.npy",
        {"descr": "<f8", "fortran_order": False, "shape": (size // 8,)},
        size,
    )
    assert bomb.stat().st_size < 2 << 20  # deflated zeros: the file is ~1 MB
    tracemalloc.start()
    try:
        model = SuccessPredictor.load(bomb)
        assert load_predictor(bomb).n_features_in_ == 6
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 8 << 20, f"loading allocated {peak:,} bytes"
    original = SuccessPredictor.load(saved["success"])
    np.testing.assert_array_equal(model.hidden_coef_, original.hidden_coef_)


def test_a_member_declaring_a_huge_shape_is_refused_before_reading(
    saved: dict[str, Path], tmp_path: Path
) -> None:
    """mean.npy declares 10**10 float64 (74 GiB) but holds 8 bytes: refused from its header."""
    base = rewrite(saved["success"], tmp_path / "base.npz")
    data = members(base)
    del data["mean"]
    np.savez(tmp_path / "nomean.npz", **data)
    huge = add_member(
        tmp_path / "nomean.npz",
        tmp_path / "huge.npz",
        "mean.npy",
        {"descr": "<f8", "fortran_order": False, "shape": (10**10,)},
        bytes(8),
    )
    with pytest.raises(
        ConfigError, match=r"huge.npz .*'mean': expected shape \(6,\), got \(10000000000,\)"
    ):
        SuccessPredictor.load(huge)


def test_a_header_implying_too_much_memory_is_refused(
    saved: dict[str, Path], tmp_path: Path
) -> None:
    path = rewrite(saved["success"], tmp_path / "big.npz", {"n_features_in": 10**10})
    start = time.perf_counter()
    with pytest.raises(
        ConfigError,
        match=rf"big.npz .*implies .* bytes of arrays, more than the {MAX_ARRAY_BYTES:,}",
    ):
        SuccessPredictor.load(path)
    assert time.perf_counter() - start < 1.0


@pytest.mark.parametrize(
    ("kind", "header", "named"),
    [
        ("success", {"meta": 5}, r"header field 'meta' must be a JSON object, got 5"),
        ("success", {"n_iter": "abc"}, r"header field 'n_iter' must be an integer >= 0, got 'abc'"),
        ("success", {"n_features_in": True}, r"'n_features_in' must be an integer >= 1"),
        ("success", {"n_features_in": 6.0}, r"'n_features_in' must be an integer >= 1"),
        ("success", {"loss": "0.5"}, r"'loss' must be a finite number"),
        ("success", {"converged": "yes"}, r"'converged' must be true or false"),
        ("success", {"params": [1, 2]}, r"'params' must be a JSON object"),
        ("success", {"version": True}, r"format version True; this howhard reads version 1"),
        ("gains", {"bmax": -3}, r"header field 'bmax' must be an integer >= 1, got -3"),
        (
            "gains",
            {"n_iter": [1] * 1000},
            r"'n_iter' must be an integer >= 0, got \[1, 1, .*\.\.\.\)",
        ),
        (
            "success",
            {
                "params": {
                    "head": "mlp",
                    "hidden": 3,
                    "alpha": "abc",
                    "max_iter": 5,
                    "standardize": True,
                    "random_state": 0,
                }
            },
            r"saved parameters: alpha \(L2 penalty\) must be a finite number",
        ),
        (
            "success",
            '{"format": "howhard.SuccessPredictor", "n": ' + "9" * 5000 + "}",
            "header is not JSON",
        ),
        ("success", "[" * 100_000, "header is not JSON"),
    ],
)
def test_header_fields_of_the_wrong_type_name_the_file_and_field(
    saved: dict[str, Path], tmp_path: Path, kind: str, header: Any, named: str
) -> None:
    path = rewrite(saved[kind], tmp_path / "bad.npz", header)
    cls = SuccessPredictor if kind == "success" else GainsPredictor
    with pytest.raises(ConfigError, match=r"bad.npz is not a saved .*re-fit and save it.*" + named):
        cls.load(path)


@pytest.mark.parametrize(
    ("arrays", "named"),
    [
        ({"mean": np.zeros(6, complex)}, r"'mean': holds complex128, not float64 numbers"),
        ({"scale": np.zeros(6, np.float16).astype(np.longdouble)}, r"'scale': holds float128"),
        ({"coef": np.array(["a"] * 3)}, r"'coef': holds <U1"),
        ({"header": np.zeros(3)}, r"'header': not a JSON string"),
    ],
)
def test_arrays_of_the_wrong_dtype_are_refused(
    saved: dict[str, Path], tmp_path: Path, arrays: dict[str, Any], named: str
) -> None:
    path = tmp_path / "bad.npz"
    data = members(saved["success"])
    data.update(arrays)
    np.savez(path, **data)
    with pytest.raises(ConfigError, match=named):
        SuccessPredictor.load(path)


def test_an_object_array_is_refused_without_unpickling(
    saved: dict[str, Path], tmp_path: Path
) -> None:
    data = members(saved["success"])
    del data["coef"]
    np.savez(tmp_path / "nocoef.npz", **data)
    path = add_member(
        tmp_path / "nocoef.npz",
        tmp_path / "pickle.npz",
        "coef.npy",
        {"descr": "|O", "fortran_order": False, "shape": (3,)},
        b"cos\nsystem\n(S'touch /tmp/pwned'\ntR.",
    )
    with pytest.raises(ConfigError, match=r"'coef': holds object"):
        SuccessPredictor.load(path)


def test_damaged_archives_are_config_errors(saved: dict[str, Path], tmp_path: Path) -> None:
    good = saved["gains"].read_bytes()
    cut = tmp_path / "cut.npz"
    cut.write_bytes(good[: len(good) - 40])  # the central directory is cut
    flipped = tmp_path / "flipped.npz"
    flipped.write_bytes(good[:300] + bytes(200) + good[500:])
    for path in (cut, flipped):
        with pytest.raises(ConfigError, match=rf"{path.name} is not a saved GainsPredictor"):
            GainsPredictor.load(path)


def test_a_saved_predictor_loads_as_before(saved: dict[str, Path]) -> None:
    model = GainsPredictor.load(saved["gains"])
    X = np.ones((2, 6))
    assert model.predict_gains(X, 3).shape == (2, 3)
    assert isinstance(load_predictor(saved["success"]), SuccessPredictor)


# ----------------------------------------------------------------------------------- pools


def bad_pools(tmp_path: Path) -> dict[str, tuple[Path, str]]:
    """Each bad pool file, with the message (regex) its reader must give."""
    ok = '{"id": "a", "prompt": "p", "rewards": [1, 0]}\n'
    files: dict[str, tuple[Path, str]] = {}

    def make(name: str, content: bytes, named: str) -> None:
        path = tmp_path / name
        path.write_bytes(content)
        files[name] = (path, named)

    make(
        "latin1.jsonl",
        ok.encode() + '{"id": "b", "prompt": "café"}\n'.encode("latin-1"),
        r"latin1.jsonl:2: not UTF-8 text \(byte 27 of the line is 0xe9\); save the file as UTF-8",
    )
    make(
        "deep.jsonl",
        ok.encode() + b'{"id": "b", "x": ' + b"[" * 100_000 + b"\n",
        r"deep.jsonl:2: JSON nested too deeply to read; flatten the row",
    )
    make(
        "digits.jsonl",
        b'{"id": "a", "prompt": "p", "rewards": [' + b"1" * 5000 + b"]}\n",
        r"digits.jsonl:1: JSON that cannot be read \(.*digits.*\); fix or remove the line",
    )
    make(
        "huge.jsonl",
        b'{"id": "a", "prompt": "p", "rewards": [' + b"1" * 400 + b"]}\n",
        r"huge.jsonl:1: field 'rewards' must hold only numbers in \[0, 1\], got \[1111",
    )
    make(
        "answers.jsonl",
        ok.encode() + b'{"id": "b", "prompt": "p", "rewards": [1], "answers": "7"}\n',
        r"answers.jsonl:2: field 'answers' must be a list with one entry per reward, got str '7'",
    )
    make(
        "scores.jsonl",
        b'{"id": "a", "prompt": "p", "rewards": [1, 0], "scores": [0.5, "high"]}\n',
        r"scores.jsonl:1: field 'scores', entry 1, must be a finite number, got 'high'",
    )
    make(
        "short.jsonl",
        b'{"id": "a", "prompt": "p", "rewards": [1, 0], "tokens": [3]}\n',
        r"short.jsonl:1: field 'tokens' has 1 entries but 'rewards' has 2; give one per sample",
    )
    make(
        "corrupt.parquet",
        b"PAR1" + os.urandom(200) + b"PAR1",
        r"corrupt.parquet is not a readable Parquet file \(.*\); write it again",
    )
    make(
        "fake.jsonl.gz",
        ok.encode(),
        r"fake.jsonl.gz:1: cannot read \(Not a gzipped file.*\); it is not a whole gzip file",
    )
    rows = "".join(f'{{"id": "q{i}", "prompt": "p", "rewards": [1]}}\n' for i in range(500))
    packed = gzip.compress(rows.encode())
    make(
        "cut.jsonl.gz",
        packed[: len(packed) // 2],
        r"cut.jsonl.gz:\d+: cannot read \(.*\); it is not a whole gzip file",
    )
    (tmp_path / "dir.jsonl").mkdir()
    files["dir.jsonl"] = (tmp_path / "dir.jsonl", r"dir.jsonl is a directory, not a pool file")
    return files


CASES = [
    "latin1.jsonl",
    "deep.jsonl",
    "digits.jsonl",
    "huge.jsonl",
    "answers.jsonl",
    "scores.jsonl",
    "short.jsonl",
    "corrupt.parquet",
    "fake.jsonl.gz",
    "cut.jsonl.gz",
    "dir.jsonl",
]


@pytest.mark.parametrize("name", CASES)
def test_a_bad_pool_file_names_the_file_line_and_fix(tmp_path: Path, name: str) -> None:
    if name.endswith(".parquet"):
        pytest.importorskip("pyarrow")
    path, named = bad_pools(tmp_path)[name]
    with pytest.raises(PoolError, match=named):
        read_pool(path)


@pytest.mark.parametrize("name", CASES)
def test_the_cli_prints_one_line_for_a_bad_pool(
    tmp_path: Path, name: str, capsys: pytest.CaptureFixture[str]
) -> None:
    if name.endswith(".parquet"):
        pytest.importorskip("pyarrow")
    path, _ = bad_pools(tmp_path)[name]
    assert main(["evaluate", str(path), "--max-per-query", "2", "--budgets", "1"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("howhard evaluate: error: ") and err.count("\n") == 1, err
    assert "Traceback" not in err


def test_a_real_cli_process_exits_2_without_traceback(tmp_path: Path) -> None:
    pools = bad_pools(tmp_path)
    for name in ("deep.jsonl",):  # the others go through the same main() in-process above
        argv = ["train", str(pools[name][0]), "--out", str(tmp_path / "m.npz")]
        proc = run_python(
            f"from howhard.cli import main; raise SystemExit(main({argv!r}))",
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        _, err = proc.communicate(timeout=120)
        assert proc.returncode == 2, (name, err)
        assert err.startswith("howhard train: error: ") and err.count("\n") == 1, err
        assert name in err and "Traceback" not in err


def test_query_files_and_problem_files_share_the_checks(tmp_path: Path) -> None:
    pools = bad_pools(tmp_path)
    for name in ("latin1.jsonl", "deep.jsonl", "fake.jsonl.gz", "dir.jsonl"):
        with pytest.raises(PoolError, match=name):
            read_queries(pools[name][0])
    with pytest.raises(ConfigError, match=r"latin1.jsonl:2: not UTF-8"):
        list(jsonl_rows(pools["latin1.jsonl"][0], ConfigError))


def test_a_good_gz_pool_and_valid_per_sample_fields_read(tmp_path: Path) -> None:
    row = {
        "id": "a",
        "prompt": "p",
        "rewards": [1.0, 0.0],
        "answers": ["4", None],
        "tokens": [3, 5],
        "scores": [0.5, -1],
    }
    path = tmp_path / "p.jsonl.gz"
    path.write_bytes(gzip.compress((json.dumps(row) + "\n\n").encode()))
    pool = read_pool(path)
    assert pool.extras == ({k: row[k] for k in ("answers", "tokens", "scores")},)


# ------------------------------------------------------------------------------ label store


HOLD_STORE = """
    import sys, time
    from howhard.store import SCHEMA, LabelStore, StoreConfig
    store = LabelStore(sys.argv[1], StoreConfig("arithmetic", "fake-model", '{"max_tokens": 8}'))
    print("open", flush=True)
    time.sleep(120)
"""


def test_a_second_labeler_is_refused_at_once_and_kill_9_leaves_no_stale_lock(
    tmp_path: Path,
) -> None:
    path = tmp_path / "labels.sqlite"
    holder = run_python(HOLD_STORE, str(path), stdout=subprocess.PIPE)
    try:
        assert holder.stdout is not None and holder.stdout.readline() == "open\n"
        start = time.perf_counter()
        with pytest.raises(
            StoreError,
            match=rf"labels.sqlite is being written by another labeler \(pid {holder.pid}, "
            r"holding .*labels.sqlite.lock\); wait for it to finish or stop it",
        ):
            LabelStore(path, CONFIG)
        assert time.perf_counter() - start < 1.0  # at once, not after a busy timeout
        with pytest.raises(StoreError, match=f"pid {holder.pid}"):
            WriterLock(path)
        with LabelStore(path) as reader:  # readers still read while the labeler runs
            assert reader.config == CONFIG and reader.count() == 0
    finally:
        os.kill(holder.pid, signal.SIGKILL)
        holder.wait()
    with LabelStore(path, CONFIG) as store:  # the kernel dropped the killed holder's lock
        store.add_queries([Query("a", "p")])
        store.add_samples(Query("a", "p"), [SampleRecord(0, "x", 1.0, 1, 0.0)])
        assert store.count() == 1


def test_the_writer_lock_is_released_on_close_and_on_a_refused_open(tmp_path: Path) -> None:
    path = tmp_path / "s.sqlite"
    LabelStore(path, CONFIG).close()
    other = StoreConfig("arithmetic", "other-model", CONFIG.params)
    with pytest.raises(StoreError, match="another configuration"):
        LabelStore(path, other)
    with WriterLock(path) as lock, LabelStore(path, CONFIG, lock) as store:
        assert store.config == CONFIG
        with pytest.raises(StoreError, match="being written by another labeler"):
            LabelStore(path, CONFIG)  # a second writer in the same process is refused too
    with LabelStore(path, CONFIG):
        pass


def test_the_label_command_is_refused_before_it_loads_a_model(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "labels.sqlite"
    with WriterLock(path):
        start = time.perf_counter()
        argv = ["label", "--store", str(path), "--queries", "2", "--samples", "2", "--quiet"]
        assert main(argv) == 2
        assert time.perf_counter() - start < 2.0  # no model was loaded
    err = capsys.readouterr().err
    assert err == (
        f"howhard label: error: label store {path} is being written by another labeler "
        f"(pid {os.getpid()}, holding {path}.lock); wait for it to finish or stop it, or label "
        "into another store file\n"
    )


def _open_in_rounds(directory: str, model: str, start: float, rounds: int, results: Any) -> None:
    for i in range(rounds):
        while time.time() < start + 0.05 * i:  # both processes spin to the same instant
            pass
        try:
            LabelStore(
                Path(directory) / f"s{i}.sqlite", StoreConfig("arithmetic", model, "{}")
            ).close()
            results.put((i, model, "ok"))
        except StoreError:
            results.put((i, model, "StoreError"))
        except Exception as e:  # anything else is the bug under test
            results.put((i, model, f"{type(e).__name__}: {e}"))


@pytest.mark.integration
def test_racing_opens_with_different_configurations_fail_cleanly(tmp_path: Path) -> None:
    """Two processes open 30 fresh stores at the same moment with different models: each open
    succeeds or is a StoreError (never sqlite3.IntegrityError), and each store keeps one config."""
    rounds = 30
    for i in range(rounds):  # the tables exist: the opens race on recording the config
        with sqlite3.connect(tmp_path / f"s{i}.sqlite") as db:
            db.execute("PRAGMA journal_mode=WAL")
            db.executescript(SCHEMA)
        db.close()
    ctx = multiprocessing.get_context("spawn")
    results, start = ctx.Queue(), time.time() + 5  # after both have imported howhard
    procs = [
        ctx.Process(target=_open_in_rounds, args=(str(tmp_path), m, start, rounds, results))
        for m in ("model-a", "model-b")
    ]
    for p in procs:
        p.start()
    outcomes = [results.get(timeout=120) for _ in range(2 * rounds)]
    for p in procs:
        p.join(timeout=30)
    assert {o for _, _, o in outcomes} <= {"StoreError", "ok"}, outcomes
    for i in range(rounds):
        with LabelStore(tmp_path / f"s{i}.sqlite") as store:
            won = {m for j, m, o in outcomes if j == i and o == "ok"}
            assert len(won) == 1 and store.config.model in won


# --------------------------------------------------------------------------- export temp files


def test_the_next_write_removes_only_stale_temp_files_of_its_target(tmp_path: Path) -> None:
    target = write_pool([{"id": "a", "prompt": "p", "rewards": [1.0]}], tmp_path / "p.jsonl")
    old = time.time() - 10 * STALE_SECONDS

    def temp(name: str, age: float = old) -> Path:
        path = tmp_path / name
        path.write_bytes(b"partial")
        os.chmod(path, 0o600)
        os.utime(path, (age, age))
        return path

    stale = temp(".p.jsonl.abcd_123.tmp")
    young = temp(".p.jsonl.young123.tmp", age=time.time() + 60)  # just written
    locked = temp(".p.jsonl.locked12.tmp")
    others = [temp(".q.jsonl.abcd_123.tmp"), temp(".p.jsonl.tmp"), temp(".p.jsonl.abcd1234.tmp.x")]
    import fcntl

    with open(locked, "rb") as held:  # a live writer's lock
        fcntl.flock(held, fcntl.LOCK_EX)
        write_pool([{"id": "b", "prompt": "p", "rewards": [0.0]}], target)
    assert not stale.exists()
    assert young.exists() and locked.exists() and all(p.exists() for p in others)
    assert json.loads(target.read_text())["id"] == "b"
    assert oct(target.stat().st_mode & 0o777) == oct(0o666 & ~_umask())
    assert remove_stale_temps(target) == [locked]  # its writer is gone now


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


KILLED_WRITER = """
    import sys, time
    from howhard.files import atomic_write
    with atomic_write(sys.argv[1]) as f:
        f.write(b'{"id": "half')
        f.flush()
        print("writing", flush=True)
        time.sleep(120)
"""


def test_a_killed_export_leaves_a_temp_file_the_next_export_removes(tmp_path: Path) -> None:
    store, out = tmp_path / "labels.sqlite", tmp_path / "pool.jsonl"
    with LabelStore(store, CONFIG) as s:
        s.add_queries([Query("a", "What is 1 + 1?")])
        s.add_samples(Query("a", "What is 1 + 1?"), [SampleRecord(0, " 2", 1.0, 1, 0.0)])
    out.write_text("the old pool\n")
    writer = run_python(KILLED_WRITER, str(out), stdout=subprocess.PIPE)
    try:
        assert writer.stdout is not None and writer.stdout.readline() == "writing\n"
        [left] = [p for p in tmp_path.iterdir() if p.name.startswith(".pool.jsonl.")]
        old = time.time() - 10 * STALE_SECONDS
        os.utime(left, (old, old))  # old enough: only its writer's lock protects it
        assert remove_stale_temps(out) == [] and left.exists()
    finally:
        os.kill(writer.pid, signal.SIGKILL)
        writer.wait()
    assert out.read_text() == "the old pool\n"  # the killed export left the target whole
    assert left.exists() and left.stat().st_mode & 0o777 == 0o600  # and its temp file behind
    run_export(ExportSpec(store=store, out=out))
    assert not left.exists()
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]
    assert read_pool(out).ids == ("a",)
