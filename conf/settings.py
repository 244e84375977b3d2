"""Load `conf/settings.toml` into a typed, frozen object.

Order of precedence, lowest first: the file (or the one named by `CREDIT_SETTINGS`), then
environment variables `CREDIT_<SECTION>_<KEY>`. Command arguments are applied by each job on top.
A missing key, an unknown key or a value of the wrong type fails at start-up with a `SettingsError`.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import os
import re
import tomllib
from collections.abc import Mapping
from importlib import resources
from pathlib import Path
from typing import Any, get_type_hints

ENV_PREFIX = "CREDIT_"
# The conventional variable wins over CREDIT_REDIS_URL (DESIGN §9).
REDIS_URL_ENV = "REDIS_URL"
SETTINGS_ENV = "CREDIT_SETTINGS"


class SettingsError(ValueError):
    """A settings value is missing, unknown or of the wrong type."""


def _at_least_one(section: str, settings: object, *names: str) -> None:
    """A SettingsError naming the first of these whole-number settings that is below 1."""
    for name in names:
        if getattr(settings, name) < 1:
            raise SettingsError(f"[{section}] {name}: expected at least 1, got {getattr(settings, name)}")


@dataclasses.dataclass(frozen=True)
class SparkSettings:
    app_name: str
    shuffle_partitions: int


@dataclasses.dataclass(frozen=True)
class FeaturesSettings:
    input: str
    output: str
    as_of: dt.date | None
    max_record_lines: int
    max_line_chars: int

    def __post_init__(self) -> None:
        _at_least_one("features", self, "max_record_lines", "max_line_chars")

    @property
    def features_dir(self) -> str:
        """The feature job's `OUT/features`: the default input of training, backtest and materialize."""
        return str(Path(self.output) / "features")


@dataclasses.dataclass(frozen=True)
class SampleSettings:
    output: str
    clients: int
    seed: int


@dataclasses.dataclass(frozen=True)
class ClassifierSettings:
    """The estimator's parameters (a random forest), in their own table `[model.classifier]`."""

    n_estimators: int
    max_depth: int
    min_samples_leaf: int

    def __post_init__(self) -> None:
        _at_least_one("model.classifier", self, "n_estimators", "max_depth", "min_samples_leaf")


@dataclasses.dataclass(frozen=True)
class ModelSettings:
    models_dir: str
    seed: int
    test_clients: float
    validation_clients: float
    smote_k_neighbors: int
    classifier: ClassifierSettings

    def __post_init__(self) -> None:
        for name in ("test_clients", "validation_clients"):
            share = getattr(self, name)
            if not 0 < share < 1:
                raise SettingsError(f"[model] {name}: expected a share between 0 and 1, got {share}")
        _at_least_one("model", self, "smote_k_neighbors")


@dataclasses.dataclass(frozen=True)
class MonitoringSettings:
    min_roc_auc: float
    min_average_precision: float
    min_recall: float
    max_psi: float


@dataclasses.dataclass(frozen=True)
class RedisSettings:
    url: str
    password_file: str
    prefix: str
    connect_timeout: float
    socket_timeout: float
    version_cache_seconds: float
    grace_period_seconds: float
    lease_seconds: float
    batch_size: int
    embedded_port: int
    embedded_dir: str

    def __post_init__(self) -> None:
        if not re.fullmatch(r"[A-Za-z0-9_.-]+", self.prefix):
            raise SettingsError(f"[redis] prefix: expected letters, digits, '_', '.' or '-', got {self.prefix!r}")
        for name in ("connect_timeout", "socket_timeout", "grace_period_seconds", "lease_seconds"):
            if getattr(self, name) <= 0:
                raise SettingsError(f"[redis] {name}: expected more than 0, got {getattr(self, name)}")
        if not 0 <= self.version_cache_seconds < self.grace_period_seconds:
            raise SettingsError(
                f"[redis] version_cache_seconds: expected 0 or more and less than grace_period_seconds "
                f"({self.grace_period_seconds}), got {self.version_cache_seconds}"
            )
        _at_least_one("redis", self, "batch_size")
        if not 1 <= self.embedded_port <= 65535:
            raise SettingsError(f"[redis] embedded_port: expected a TCP port, got {self.embedded_port}")


@dataclasses.dataclass(frozen=True)
class ServiceSettings:
    batch_limit: int
    breaker_retry_seconds: float
    hot_routes: bool

    def __post_init__(self) -> None:
        _at_least_one("service", self, "batch_limit")
        if self.breaker_retry_seconds <= 0:
            raise SettingsError(
                f"[service] breaker_retry_seconds: expected more than 0, got {self.breaker_retry_seconds}"
            )


@dataclasses.dataclass(frozen=True)
class StreamSettings:
    landing: str
    checkpoint: str
    quarantine: str
    trigger_seconds: float
    max_files_per_trigger: int
    shuffle_partitions: int

    def __post_init__(self) -> None:
        _at_least_one("stream", self, "max_files_per_trigger")
        if self.shuffle_partitions < 0:
            raise SettingsError(f"[stream] shuffle_partitions: expected 0 or more, got {self.shuffle_partitions}")
        if self.trigger_seconds < 0:
            raise SettingsError(f"[stream] trigger_seconds: expected 0 or more, got {self.trigger_seconds}")


@dataclasses.dataclass(frozen=True)
class Settings:
    spark: SparkSettings
    features: FeaturesSettings
    sample: SampleSettings
    model: ModelSettings
    monitoring: MonitoringSettings
    redis: RedisSettings
    service: ServiceSettings
    stream: StreamSettings


def parse_date(text: str) -> dt.date:
    """Parse an ISO `yyyy-MM-dd` date, naming the value on failure."""
    try:
        if len(text) != 10:
            raise ValueError
        return dt.date.fromisoformat(text)
    except ValueError:
        raise SettingsError(f"not a yyyy-MM-dd date: {text!r}") from None


def _convert(where: str, value: Any, kind: Any) -> Any:
    """Convert a file or environment value to the field's declared type."""
    if kind is str:
        if not isinstance(value, str):
            raise SettingsError(f"{where}: expected text, got {value!r}")
        return value
    if kind is int:
        if isinstance(value, bool):
            raise SettingsError(f"{where}: expected a whole number, got {value!r}")
        if isinstance(value, int):
            return value
        try:
            return int(str(value).strip())
        except ValueError:
            raise SettingsError(f"{where}: expected a whole number, got {value!r}") from None
    if kind is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.strip().lower() in ("true", "false"):
            return value.strip().lower() == "true"
        raise SettingsError(f"{where}: expected true or false, got {value!r}")
    if kind is float:
        if isinstance(value, bool):
            raise SettingsError(f"{where}: expected a number, got {value!r}")
        try:
            return float(value)
        except (TypeError, ValueError):
            raise SettingsError(f"{where}: expected a number, got {value!r}") from None
    if kind == (dt.date | None):
        if value in ("", None):
            return None
        if isinstance(value, dt.date):
            return value
        try:
            return parse_date(str(value))
        except SettingsError as exc:
            raise SettingsError(f"{where}: {exc}") from None
    raise SettingsError(f"{where}: unsupported settings type {kind!r}")


def _build(cls: type, section: str, values: Mapping[str, Any], env: Mapping[str, str]) -> Any:
    """Build one settings section (a table, which may hold tables) from the file and the environment."""
    hints = get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = set(values) - names
    if unknown:
        raise SettingsError(f"[{section}]: unknown key(s) {sorted(unknown)}")
    kwargs = {}
    for name in names:
        env_name = f"{ENV_PREFIX}{section.replace('.', '_')}_{name}".upper()
        if dataclasses.is_dataclass(hints[name]):
            table = values.get(name, {})
            if not isinstance(table, dict):
                raise SettingsError(f"[{section}.{name}] must be a table")
            kwargs[name] = _build(hints[name], f"{section}.{name}", table, env)
        elif (section, name) == ("redis", "url") and env.get(REDIS_URL_ENV):
            kwargs[name] = env[REDIS_URL_ENV]
        elif env_name in env:
            kwargs[name] = _convert(env_name, env[env_name], hints[name])
        elif name in values:
            kwargs[name] = _convert(f"[{section}] {name}", values[name], hints[name])
        else:
            raise SettingsError(f"[{section}]: missing key {name!r}")
    return cls(**kwargs)


def _read_file(path: str | None) -> dict[str, Any]:
    try:
        if path:
            text = Path(path).read_text(encoding="utf-8")
        else:
            text = resources.files("conf").joinpath("settings.toml").read_text(encoding="utf-8")
        return tomllib.loads(text)
    except FileNotFoundError:
        raise SettingsError(f"settings file not found: {path}") from None
    except tomllib.TOMLDecodeError as exc:
        raise SettingsError(f"settings file {path or 'conf/settings.toml'} is not valid TOML: {exc}") from None


def load_settings(path: str | None = None, env: Mapping[str, str] | None = None) -> Settings:
    """Load the settings file (default: `CREDIT_SETTINGS` or `conf/settings.toml`) and the environment."""
    env = os.environ if env is None else env
    data = _read_file(path or env.get(SETTINGS_ENV))
    hints = get_type_hints(Settings)
    unknown = set(data) - set(hints)
    if unknown:
        raise SettingsError(f"unknown settings section(s) {sorted(unknown)}")
    sections = {}
    for section, cls in hints.items():
        table = data.get(section, {})
        if not isinstance(table, dict):
            raise SettingsError(f"[{section}] must be a table")
        sections[section] = _build(cls, section, table, env)
    return Settings(**sections)
