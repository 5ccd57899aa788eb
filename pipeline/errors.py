"""User-facing errors. The CLI prints their message as one line and exits with code 2;
anything else is a bug and keeps its traceback."""

from __future__ import annotations


class TwostepError(Exception):
    """A problem the user can fix: bad config, missing file, corrupt artifact."""


class ConfigError(TwostepError):
    """The configuration (a preset, YAML file or ``--set`` override) is invalid."""


class NotApplicable(ConfigError):
    """A setting valid in itself that this run's teacher does not support (e.g. ground-truth
    renders as the discriminator's real samples, which only the toy world has). An ablation
    whose variants were not named leaves such a variant out instead of failing, giving
    ``reason`` (what the setting needs, without the way out the message adds)."""

    def __init__(self, message: str, reason: str | None = None) -> None:
        super().__init__(message)
        self.reason = reason or message


class SourceError(TwostepError):
    """An input source (a prompt file, a shard, a model folder) is missing or unreadable."""


class ArtifactError(TwostepError):
    """A stage artifact is missing, incomplete or does not match its manifest."""


class StageDependencyError(TwostepError):
    """An upstream stage has no result for the current config and may not be computed."""
