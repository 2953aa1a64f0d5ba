"""Exceptions that interfaces turn into one-line CLI messages or 4xx API answers."""


class GuardforgeError(Exception):
    """Base class: the message is meant for the user, as one line."""


class InvalidRequest(GuardforgeError, ValueError):
    """A request breaks a limit or names something that cannot work (HTTP 422)."""


class Forbidden(GuardforgeError):
    """The caller's key does not allow this (HTTP 403), e.g. a priority above the key's max_priority."""


class ModelNotFound(GuardforgeError, LookupError):
    """No model of that name in the registry (HTTP 404)."""


class UnsafeModelFormat(GuardforgeError):
    """A pickle checkpoint was refused (HTTP 422)."""


class PathEscape(InvalidRequest):
    """A name tried to leave the folder it must stay in."""


class Cancelled(GuardforgeError):
    """The job was cancelled between two steps."""


class JobFailed(GuardforgeError):
    """A job that passed every check at submit failed while it ran (HTTP 500): the server's fault, not the
    caller's (a backend or a model crashed)."""


class GuardBackendError(GuardforgeError):
    """A guard backend failed or timed out; the policy's fail mode decides what happens."""


class IncompatibleDependencies(GuardforgeError):
    """The installed libraries cannot run this feature together (HTTP 503): a server-side set-up problem, named."""


# Errors that say the caller asked for something that cannot be done (4xx), as opposed to the server failing.
CALLER_ERRORS: tuple[type[GuardforgeError], ...] = (InvalidRequest, ModelNotFound, UnsafeModelFormat)


def caller_error_kind(exc: BaseException) -> str | None:
    """The name a job records for a caller's error raised while it ran (None for the server's own failures)."""
    return next((cls.__name__ for cls in CALLER_ERRORS if isinstance(exc, cls)), None)


def caller_error(kind: str | None, message: str) -> GuardforgeError | None:
    """The caller's error a failed job recorded by name, rebuilt with its message; None when it was none."""
    return next((cls(message) for cls in CALLER_ERRORS if cls.__name__ == kind), None)
