"""``howhard serve`` configuration: flags over file over defaults, each mistake named."""

from pathlib import Path

import pytest

from howhard.cli import main
from howhard.errors import ConfigError
from howhard.serve.config import load_config


@pytest.fixture
def files(tmp_path: Path) -> dict[str, str]:
    for name in ("p.npz", "cal.jsonl", "r.npz"):
        (tmp_path / name).write_text("x")
    return {"predictor": str(tmp_path / "p.npz"), "calibration": str(tmp_path / "cal.jsonl")}


@pytest.fixture(autouse=True)
def keys(monkeypatch):
    monkeypatch.setenv("HOWHARD_API_KEYS", "k1, k2")
    monkeypatch.delenv("UPSTREAM_KEY", raising=False)


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "serve.toml"
    path.write_text(text)
    return path


def test_flags_override_the_file_and_the_file_overrides_defaults(tmp_path, files):
    toml = write(
        tmp_path,
        f'upstreams = ["http://a:1", "http://b:2"]\npredictor = "{files["predictor"]}"\n'
        f'calibration = "{files["calibration"]}"\nbudget = 4\nmax_per_query = 16\nport = 9000\n',
    )
    config = load_config(toml, port=9100, budget=None)
    assert config.upstreams == ("http://a:1", "http://b:2")
    assert (config.budget, config.max_per_query, config.port) == (4.0, 16, 9100)
    assert config.host == "127.0.0.1" and config.api_keys == ("k1", "k2")
    assert "k1" not in repr(config)


def test_upstream_key_comes_from_the_named_environment_variable(files, monkeypatch):
    base = dict(upstreams=["http://a:1"], budget=2, max_per_query=4, **files)
    with pytest.raises(ConfigError, match=r"UPSTREAM_KEY .* is not set"):
        load_config(None, upstream_api_key_env="UPSTREAM_KEY", **base)
    monkeypatch.setenv("UPSTREAM_KEY", "sk-up")
    config = load_config(None, upstream_api_key_env="UPSTREAM_KEY", **base)
    assert config.upstream_api_key == "sk-up" and "sk-up" not in repr(config)


@pytest.mark.parametrize(
    "settings, message",
    [
        ({"decision_batch": 0}, "decision_batch must be >= 1, got 0"),
        ({"decision_wait_ms": 5000}, r"decision_wait_ms must lie in \[0, 1000\] milliseconds"),
        ({"cache_features": "no"}, "setting 'cache_features' must be true or false"),
        (
            {"cache_features": False, "feature_cache": "f.npz"},
            "feature_cache names a cache file but cache_features is false",
        ),
    ],
)
def test_the_start_up_and_batching_settings_are_checked(files, settings, message):
    base = dict(upstreams=["http://a:1"], budget=2, max_per_query=4, **files)
    with pytest.raises(ConfigError, match=message):
        load_config(None, **base, **settings)


def test_the_cli_turns_off_the_feature_cache_and_sets_the_decision_batch(files, monkeypatch):
    seen = []
    monkeypatch.setattr("howhard.serve.serve", seen.append)
    argv = ["serve", "--upstream", "http://a:1", "--predictor", files["predictor"]]
    argv += ["--calibration", files["calibration"], "--budget", "2", "--max-per-query", "4"]
    assert main([*argv, "--no-feature-cache", "--decision-batch", "8"]) == 0
    assert main([*argv, "--decision-wait-ms", "2"]) == 0
    assert (seen[0].cache_features, seen[0].decision_batch, seen[0].decision_wait_ms) == (
        False,
        8,
        0.0,
    )
    assert (seen[1].cache_features, seen[1].decision_batch, seen[1].decision_wait_ms) == (
        True,
        32,
        2.0,
    )


@pytest.mark.parametrize(
    "text, message",
    [
        ("budjet = 4", r"unknown setting 'budjet' \(did you mean 'budget'\?\)"),
        ("budget = 'four'", "setting 'budget' in .* must be a number, got 'four'"),
        ("max_per_query = 4.5", "setting 'max_per_query' .* must be an? integer"),
        ("upstreams = 3", "setting 'upstreams' .* must be a list of strings"),
        ("budget = [", "is not valid TOML"),
        ("budget = 40", r"need 1 <= min_per_query \(1\) <= budget \(40.0\) <= max_per_query"),
        ("max_per_query = 100", r"max_per_query \(100\) must lie in \[1, max_concurrency = 64\]"),
        ("upstreams = ['ftp://x']", "is not an http\\(s\\) URL"),
        (
            "strong = ['http://s:1']",
            r"routing needs strong \(URLs\), router \(a file\) and strong_share",
        ),
        ("reranker = 'majorty'", r"unknown reranker 'majorty' \(did you mean 'majority'\?\)"),
        ("reranker = 'reward-model'", "needs reward_model=URL_OR_DIR"),
        ("max_tokens = 8", r"default_max_tokens \(256\) <= max_tokens \(8\)"),
        ("header_timeout = 0", "header_timeout must be > 0 seconds, got 0.0"),
        ("body_timeout = 'slow'", "setting 'body_timeout' .* must be a number"),
        ("max_connections = 0", "max_connections must be >= 1, got 0"),
        ("max_json_depth = 4", r"max_json_depth must be >= 8 \(a chat request"),
    ],
)
def test_each_mistake_is_named(tmp_path, files, text, message):
    base = (
        f'upstreams = ["http://a:1"]\npredictor = "{files["predictor"]}"\n'
        f'calibration = "{files["calibration"]}"\nbudget = 2\nmax_per_query = 4\n'
    )
    lines = dict(line.split(" = ", 1) for line in base.splitlines())
    key, value = text.split(" = ", 1)
    lines[key] = value
    toml = write(tmp_path, "\n".join(f"{k} = {v}" for k, v in lines.items()))
    with pytest.raises(ConfigError, match=message):
        load_config(toml)


def test_slow_client_limits_come_from_the_file_and_the_flags(tmp_path, files, monkeypatch):
    toml = write(
        tmp_path,
        f'upstreams = ["http://a:1"]\npredictor = "{files["predictor"]}"\n'
        f'calibration = "{files["calibration"]}"\nbudget = 2\nmax_per_query = 4\n'
        "header_timeout = 2\nmax_connections = 100\n",
    )
    config = load_config(toml, body_timeout=1.5)
    assert (config.header_timeout, config.body_timeout, config.keep_alive_timeout) == (
        2.0,
        1.5,
        5.0,
    )
    assert (config.max_connections, config.max_json_depth) == (100, 64)
    seen = {}
    monkeypatch.setattr("howhard.serve.serve", lambda config: seen.update(config=config))
    argv = ["serve", "--config", str(toml), "--header-timeout", "3", "--keep-alive-timeout", "1"]
    assert main([*argv, "--body-timeout", "4", "--max-connections", "9"]) == 0
    got = seen["config"]
    assert (got.header_timeout, got.body_timeout, got.keep_alive_timeout) == (3.0, 4.0, 1.0)
    assert got.max_connections == 9


def test_upstream_timeout_retries_and_shutdown_deadline_come_from_the_file_and_the_flags(
    tmp_path, files, monkeypatch, capsys
):
    toml = write(
        tmp_path,
        f'upstreams = ["http://a:1"]\npredictor = "{files["predictor"]}"\n'
        f'calibration = "{files["calibration"]}"\nbudget = 2\nmax_per_query = 4\n'
        "timeout = 60\nretries = 1\n",
    )
    config = load_config(toml)
    assert (config.timeout, config.retries, config.shutdown_timeout) == (60.0, 1, 30.0)
    seen = {}
    monkeypatch.setattr("howhard.serve.serve", lambda config: seen.update(config=config))
    argv = ["serve", "--config", str(toml), "--timeout", "5", "--retries", "0"]
    assert main([*argv, "--shutdown-timeout", "7"]) == 0
    got = seen["config"]
    assert (got.timeout, got.retries, got.shutdown_timeout) == (5.0, 0, 7.0)
    assert main(["serve", "--config", str(toml), "--retries", "-1"]) == 2
    assert "need --timeout > 0 and --retries >= 0, got 60.0, -1" in capsys.readouterr().err
    assert main(["serve", "--config", str(toml), "--shutdown-timeout", "0"]) == 2
    assert "--shutdown-timeout must be > 0 seconds" in capsys.readouterr().err


def test_the_repr_hides_the_credentials_in_urls(files):
    config = load_config(
        None, upstreams=["http://me:hunter2@a:1"], budget=2, max_per_query=4, **files
    )
    assert "hunter2" not in repr(config) and "http://***@a:1" in repr(config)


def test_missing_settings_and_files_are_named(tmp_path, files):
    with pytest.raises(ConfigError, match="missing setting\\(s\\): upstreams, predictor"):
        load_config(None, budget=2)
    with pytest.raises(ConfigError, match=r"nope\.npz is not a file"):
        load_config(
            None, upstreams=["http://a:1"], budget=2, max_per_query=4,
            predictor=str(tmp_path / "nope.npz"), calibration=files["calibration"],
        )  # fmt: skip


def test_no_client_key_is_refused_with_the_fix(files, monkeypatch):
    monkeypatch.delenv("HOWHARD_API_KEYS")
    with pytest.raises(ConfigError, match="set HOWHARD_API_KEYS=key1,key2"):
        load_config(None, upstreams=["http://a:1"], budget=2, max_per_query=4, **files)


def test_the_cli_reports_a_bad_setting_with_its_flags_and_exits_2(files, capsys):
    """The library's message names the settings; the command line's names the flags."""
    base = ["--upstream", "http://a:1", "--predictor", files["predictor"]]
    base += ["--calibration", files["calibration"], "--max-per-query", "4"]
    with pytest.raises(ConfigError) as e:
        load_config(None, upstreams=["http://a:1"], budget=40, max_per_query=4, **files)
    assert "--" not in str(e.value)
    assert e.value.params == ("min_per_query", "budget", "max_per_query")
    assert main(["serve", *base, "--budget", "40"]) == 2
    assert (
        "howhard serve: error: need 1 <= --min-per-query (1) <= --budget (40.0) <= "
        "--max-per-query (4); "
        "pass e.g. --budget=4 and --max-per-query=16"
    ) in capsys.readouterr().err
    assert main(["serve", *base, "--budget", "2", "--strong", "http://s:1"]) == 2
    assert (
        "routing needs --strong (URLs), --router (a file) and --strong-share (in [0, 1]) together"
    ) in capsys.readouterr().err


@pytest.mark.parametrize(
    ("flags", "setting"),
    [
        (["--policy", "escalate"], "--policy"),
        (["--max-cost", "0.5"], "--max-cost"),
        (["--knob", "3"], "--knob"),
        (["--request-log", "req.jsonl"], "--request-log"),
        (["--max-rounds", "8"], None),  # the default: nothing was asked of it
    ],
)
def test_menu_settings_in_the_single_upstream_mode_are_refused(files, capsys, flags, setting):
    base = ["--upstream", "http://a:1", "--predictor", files["predictor"], "--budget", "2"]
    base += ["--calibration", files["calibration"], "--max-per-query", "4", "--port", "-1"]
    assert main(["serve", *base, *flags]) == 2
    err = capsys.readouterr().err
    if setting is None:  # got as far as the next check
        assert "port must lie in [0, 65535]" in err
    else:
        assert f"error: {setting} is a setting of menu mode" in err


def test_a_router_passed_as_the_predictor_is_named_by_its_setting_and_its_flag(tmp_path, capsys):
    import numpy as np

    from howhard.pool import Pool, write_pool
    from howhard.serve import build_proxy

    rng = np.random.default_rng(0)
    ids, prompts = tuple(f"q{i}" for i in range(40)), tuple(f"prompt {i}" for i in range(40))
    weak, strong = (
        write_pool(Pool(ids, prompts, tuple(rng.random(4) < p for _ in ids)), tmp_path / name)
        for p, name in [(0.3, "weak.jsonl"), (0.7, "strong.jsonl")]
    )
    router = str(tmp_path / "router.npz")
    argv = ["train", str(weak), "--strong", str(strong), "--features", "ngrams", "--out", router]
    argv += ["--head", "logistic"]  # the mlp on 4,096 n-gram columns takes seconds
    assert main(argv) == 0
    flags = dict(upstreams=["http://127.0.0.1:1"], budget=2, max_per_query=4)
    with pytest.raises(ConfigError, match="pass it as router=PATH") as e:
        build_proxy(load_config(None, predictor=router, calibration=str(weak), **flags))
    assert e.value.params == ("router", "predictor")
    capsys.readouterr()
    argv = ["serve", "--upstream", "http://127.0.0.1:1", "--budget", "2", "--max-per-query", "4"]
    assert main([*argv, "--predictor", router, "--calibration", str(weak)]) == 2
    assert (
        f"{router} routes between two decoders (it was trained with a strong pool); pass it as "
        "--router=PATH, and a file that `howhard train` fitted on one pool as --predictor=PATH"
    ) in capsys.readouterr().err
