"""The error hierarchy. Every error a user can cause names the input and the fix."""

from __future__ import annotations


class LowbitError(Exception):
    """Base class of every error lowbit raises on purpose (the CLI prints these without a trace)."""


class ConfigError(LowbitError, ValueError):
    """A value in a configuration (format, algorithm, plan, evaluation) is out of range."""


class UnknownNameError(ConfigError, KeyError):
    """A registry lookup failed; the message lists close matches."""

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0])


class ModelSourceError(LowbitError):
    """A model path, file or name cannot be loaded (missing, truncated, unsupported)."""


class DataError(LowbitError):
    """A text or data source is missing, malformed or too short for what was asked."""


class OutputExistsError(LowbitError):
    """An output path already exists; lowbit never overwrites silently."""


class OutputPathError(LowbitError):
    """An output path cannot be written (its folder is a file, read-only, or not writable)."""


class ArtefactError(LowbitError):
    """A saved artefact (quantized model, result) is malformed or from another model."""


class ExportError(LowbitError):
    """A quantized model cannot be written in the requested target format as it stands."""
