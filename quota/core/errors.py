"""One exception root for the quota core.

"Over quota" is an outcome (a return value), never an exception: these errors mean
a caller did something illegal (an impossible state move, a bad value).
"""


class QuotaError(Exception):
    """Root of every error raised by quota.core."""


class InvalidValue(QuotaError, ValueError):
    """A value given to the core is malformed or out of range."""


class IllegalTransition(QuotaError):
    """A state machine was asked for a move its table does not allow."""
