"""One exception type per domain; the CLI turns them into a one-line message and exit code 2."""


class GARError(Exception):
    """Base class of every error the toolkit raises on purpose (bad input, bad data)."""


class GARConfigError(GARError):
    """An invalid generator configuration: unknown profile/schema/relation, knob out of range."""


class GARDataError(GARError):
    """A malformed data file: vocabulary, task rows, or a GAR dataset file."""
