"""The errors that mean bad input from the user. The command line reports one of them in one line and
exits 2; any other exception is a fault of intrakd and keeps its traceback."""


class ConfigError(ValueError):
    """Input that cannot be used: a configuration key or value, or a file, folder or option given that
    does not fit. The message names the problem and the fix. Subclasses name the kind of input
    (a run to resume, a checkpoint, a run folder, a store, an image)."""


class ResumeError(ConfigError):
    """A run that cannot be continued as asked."""


BAD_INPUT: tuple[type[Exception], ...] = (ConfigError, FileNotFoundError, FileExistsError, NotADirectoryError,
                                          IsADirectoryError, PermissionError)
"""What bad input raises: a :class:`ConfigError`, or a file or folder named that is missing, taken,
of the wrong kind or not allowed. The command line exits 2 with one line on these, on every rank."""
