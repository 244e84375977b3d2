"""Settings of the pipeline: one TOML file, overridden by environment variables; command start-up."""

from conf.command import command_settings, emit
from conf.settings import Settings, SettingsError, load_settings

__all__ = ["Settings", "SettingsError", "command_settings", "emit", "load_settings"]
