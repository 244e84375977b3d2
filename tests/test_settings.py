import datetime as dt
from pathlib import Path

import pytest

from conf import SettingsError, load_settings


def test_settings_default_file_loads_typed_values() -> None:
    settings = load_settings(env={})
    assert settings.spark.shuffle_partitions == 16
    assert settings.features.as_of is None
    assert settings.sample.clients == 36457


def test_settings_environment_overrides_file() -> None:
    settings = load_settings(env={"CREDIT_FEATURES_AS_OF": "2020-12-31", "CREDIT_SAMPLE_CLIENTS": "12"})
    assert settings.features.as_of == dt.date(2020, 12, 31)
    assert settings.sample.clients == 12


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"CREDIT_SAMPLE_CLIENTS": "many"}, "CREDIT_SAMPLE_CLIENTS: expected a whole number, got 'many'"),
        ({"CREDIT_FEATURES_AS_OF": "2020-02-30"}, "CREDIT_FEATURES_AS_OF: not a yyyy-MM-dd date"),
    ],
)
def test_settings_bad_environment_value_fails_naming_it(env: dict[str, str], message: str) -> None:
    with pytest.raises(SettingsError, match=message):
        load_settings(env=env)


def test_settings_file_with_unknown_or_missing_key_fails(tmp_path: Path) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text('[spark]\napp_name = "x"\nshuffle_partitions = 2\ncolour = "red"\n')
    with pytest.raises(SettingsError, match=r"\[spark\]: unknown key\(s\) \['colour'\]"):
        load_settings(str(bad), env={})
    bad.write_text('[spark]\napp_name = "x"\n')
    with pytest.raises(SettingsError, match=r"\[spark\]: missing key 'shuffle_partitions'"):
        load_settings(str(bad), env={})


def test_settings_file_named_by_environment_is_used(tmp_path: Path) -> None:
    other = tmp_path / "other.toml"
    text = Path("conf/settings.toml").read_text().replace("shuffle_partitions = 16", "shuffle_partitions = 3")
    other.write_text(text)
    assert load_settings(env={"CREDIT_SETTINGS": str(other)}).spark.shuffle_partitions == 3
    with pytest.raises(SettingsError, match="settings file not found"):
        load_settings(env={"CREDIT_SETTINGS": str(tmp_path / "missing.toml")})


def test_settings_redis_url_comes_from_redis_url_first() -> None:
    assert load_settings(env={}).redis.url == ""
    env = {"CREDIT_REDIS_URL": "redis://a:6379/0"}
    assert load_settings(env=env).redis.url == "redis://a:6379/0"
    assert load_settings(env={**env, "REDIS_URL": "rediss://:pw@b:6380/1"}).redis.url == "rediss://:pw@b:6380/1"


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"CREDIT_REDIS_VERSION_CACHE_SECONDS": "700"}, "less than grace_period_seconds"),
        ({"CREDIT_REDIS_SOCKET_TIMEOUT": "0"}, "socket_timeout: expected more than 0"),
        ({"CREDIT_REDIS_PREFIX": "a b"}, "prefix"),
        ({"CREDIT_REDIS_EMBEDDED_PORT": "70000"}, "embedded_port"),
        ({"CREDIT_SERVICE_BATCH_LIMIT": "0"}, "batch_limit"),
        ({"CREDIT_SERVICE_BREAKER_RETRY_SECONDS": "0"}, r"\[service\] breaker_retry_seconds: expected more than 0"),
        ({"CREDIT_REDIS_LEASE_SECONDS": "-1"}, r"\[redis\] lease_seconds: expected more than 0"),
        ({"CREDIT_FEATURES_MAX_RECORD_LINES": "0"}, r"\[features\] max_record_lines: expected at least 1"),
        ({"CREDIT_MODEL_CLASSIFIER_N_ESTIMATORS": "0"}, r"\[model.classifier\] n_estimators: expected at least 1"),
        ({"CREDIT_MODEL_CLASSIFIER_MAX_DEPTH": "deep"}, "CREDIT_MODEL_CLASSIFIER_MAX_DEPTH: expected a whole number"),
        ({"CREDIT_SERVICE_HOT_ROUTES": "yes"}, "CREDIT_SERVICE_HOT_ROUTES: expected true or false, got 'yes'"),
        ({"CREDIT_SERVICE_HOT_ROUTES": "1"}, "CREDIT_SERVICE_HOT_ROUTES: expected true or false"),
    ],
)
def test_settings_reject_bad_redis_and_service_values(env: dict[str, str], message: str) -> None:
    with pytest.raises(SettingsError, match=message):
        load_settings(env=env)


@pytest.mark.parametrize(("value", "expected"), [(None, True), ("false", False), (" FALSE ", False), ("True", True)])
def test_settings_a_flag_is_true_or_false(value: str | None, expected: bool) -> None:
    env = {} if value is None else {"CREDIT_SERVICE_HOT_ROUTES": value}
    assert load_settings(env=env).service.hot_routes is expected


def test_settings_a_table_within_a_section_is_read_and_overridden(tmp_path: Path) -> None:
    assert load_settings(env={}).model.classifier.n_estimators == 100
    assert load_settings(env={"CREDIT_MODEL_CLASSIFIER_N_ESTIMATORS": "7"}).model.classifier.n_estimators == 7
    other = tmp_path / "other.toml"
    other.write_text(Path("conf/settings.toml").read_text().replace("max_depth = 10", "max_depth = 3\ncolour = 1"))
    with pytest.raises(SettingsError, match=r"\[model.classifier\]: unknown key\(s\) \['colour'\]"):
        load_settings(str(other), env={})
