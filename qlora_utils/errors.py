"""Errors raised by qlora_utils: one class, messages that name the bad input and the fix."""


class QLoraError(ValueError):
    """A bad argument, a missing file or an unreachable source; the message says how to fix it."""


class DataUnavailableError(QLoraError, OSError):
    """A data set could be read neither from the configured directory nor from the Hugging Face Hub."""
