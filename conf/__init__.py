"""Settings of the pipeline: one TOML file, overridden by environment variables."""

from conf.settings import Settings, SettingsError, load_settings

__all__ = ["Settings", "SettingsError", "load_settings"]
