"""One exception root for the relay; library errors are translated at each adapter."""


class RelayError(Exception):
    """Root of every error the relay raises on purpose."""


class ConfigError(RelayError, ValueError):
    """A config file or value is wrong; the message names the key."""


class Refused(RelayError):
    """An agent asked for something it may not have; the message is shown to it."""
