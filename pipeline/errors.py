"""Why the service refused a request (the transport maps each to an HTTP status)."""


class NotLoadedError(RuntimeError):
    """No pipeline is loaded (or the last load failed)."""


class LoadingError(RuntimeError):
    """A pipeline is loading; retry shortly."""


class LoadInProgressError(RuntimeError):
    """A different load is already running."""


class PreviousKeptError(RuntimeError):
    """A LoRA change failed in place; the pipeline as it was keeps serving."""


class ParameterRejectedError(ValueError):
    """A session's parameter update that the loaded pipeline cannot take (nothing changed)."""


class UnsupportedModeError(ParameterRejectedError):
    """The session asked for an input mode the loaded pipeline does not have."""


class LoraScaleError(ParameterRejectedError):
    """`lora_scales` names a LoRA that is not loaded, or changes a fused (permanent) one."""
