"""User-facing errors. The CLI prints their message as one line and exits with code 2;
anything else is a bug and keeps its traceback."""

from __future__ import annotations


class TwostepError(Exception):
    """A problem the user can fix: bad config, missing file, corrupt artifact."""


class ConfigError(TwostepError):
    """The configuration (a preset, YAML file or ``--set`` override) is invalid."""


class SourceError(TwostepError):
    """An input source (a prompt file, a shard, a model folder) is missing or unreadable."""


class ArtifactError(TwostepError):
    """A stage artifact is missing, incomplete or does not match its manifest."""


class StageDependencyError(TwostepError):
    """An upstream stage has no result for the current config and may not be computed."""
