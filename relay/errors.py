"""One exception root for the relay; library errors are translated at each adapter."""


class RelayError(Exception):
    """Root of every error the relay raises on purpose."""


class ConfigError(RelayError, ValueError):
    """A config file or value is wrong; the message names the key."""


class Refused(RelayError):
    """An agent asked for something it may not have; the message is shown to it.

    `cause` is set when a fair share refused it (quota.core.shares.Cause): such a
    refusal also writes a `refused` record to the stream log.
    """

    def __init__(self, message: str, *, cause: str | None = None) -> None:
        super().__init__(message)
        self.cause = cause


class UnknownStream(RelayError, KeyError):
    """No live stream with this id on the relay."""

    def __init__(self, stream_id: str) -> None:
        super().__init__(stream_id)
        self.stream_id = stream_id

    def __str__(self) -> str:
        return f"no live stream {self.stream_id!r}"


class UnknownAgent(RelayError, KeyError):
    """No agent with this id is known to the relay."""

    def __init__(self, agent_id: str) -> None:
        super().__init__(agent_id)
        self.agent_id = agent_id

    def __str__(self) -> str:
        return f"unknown agent {self.agent_id!r}"
