"""The reason a worker sets a message aside. The dead-letter record it writes for it is the
topic's contract: ``schemas.dead_letter.DeadLetter``."""

from __future__ import annotations


class InvalidMessage(ValueError):
    """A message that can never be processed: it goes to the dead-letter topic, once."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason
