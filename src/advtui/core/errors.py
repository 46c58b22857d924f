"""User-facing errors.

Anything raised as an ``AdvtuiError`` is printed by the CLI as a single line (``error: ...``)
followed by a non-zero exit, never as a traceback: the message must say what went wrong and
what to do next.
"""


class AdvtuiError(Exception):
    """An error caused by the user's input or environment, reported as one line."""

    exit_code = 2


class ConfigError(AdvtuiError):
    """An invalid option or combination of options."""


class DataMissingError(AdvtuiError):
    """A dataset that is neither on disk nor downloadable."""


class RegistryError(AdvtuiError):
    """The run registry cannot be read or written."""


class RunNotFoundError(AdvtuiError):
    """A run id or name that matches no run (or more than one)."""


class CheckpointError(AdvtuiError):
    """A checkpoint that is missing, unreadable or does not fit the run."""


class AmbiguousRunError(RunNotFoundError):
    """A reference that matches several runs (an id prefix or a name): the message lists them."""


class UnsafePathError(AdvtuiError, OSError):
    """A file of a run folder that is a symbolic link, or a path that leads out of the folder:
    never written (or read) through. An OSError too, so code that handles a file it cannot
    open (a launcher, a full disk) handles this one the same way."""

    def __str__(self) -> str:
        return self.strerror or super().__str__()  # the message alone, as every AdvtuiError, no "[Errno 40]"
