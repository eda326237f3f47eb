"""The one exception type for bad user input; the command line turns it into exit code 2."""

from __future__ import annotations


class ConfigError(ValueError):
    """A configuration value is invalid; the message names the value and what is allowed."""
