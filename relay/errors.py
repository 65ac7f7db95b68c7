# The one exception tree of relay. Lower libraries' errors are translated into
# these at the boundary; SMTP replies and HTTP statuses are chosen in one place each.
from __future__ import annotations


class RelayError(Exception):
    """Base of every error relay raises on purpose."""


class ConfigError(RelayError):
    """A configuration file or value is invalid; str() is one line naming the key."""


class Rejected(RelayError):
    """A message is refused at intake; `reply` is the full SMTP reply line."""

    def __init__(self, reply: str) -> None:
        super().__init__(reply)
        self.reply = reply
