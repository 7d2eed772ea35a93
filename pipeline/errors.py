"""Why the service refused a request (the transport maps each to an HTTP status)."""


class NotLoadedError(RuntimeError):
    """No pipeline is loaded (or the last load failed)."""


class LoadingError(RuntimeError):
    """A pipeline is loading; retry shortly."""


class LoadInProgressError(RuntimeError):
    """A different load is already running."""


class UnsupportedModeError(ValueError):
    """The session asked for an input mode the loaded pipeline does not have."""
