"""The one exception type of the package."""


class RawfsError(Exception):
    """Something rawfs refused or could not do: the message is the daemon's (or the rawfs
    command's) own, naming what was wrong."""
