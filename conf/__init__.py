"""Settings of the pipeline: one TOML file, overridden by environment variables."""

from conf.settings import Settings, SettingsError, command_settings, load_settings

__all__ = ["Settings", "SettingsError", "command_settings", "load_settings"]
