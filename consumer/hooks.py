"""What the consumer reports as it works, to whatever watches it.

The run summary (consumer/service.py), the status file (consumer/status.py), the metrics
(consumer/metrics.py) and the fault injection (consumer/faults.py) each implement `Hooks`; the service and
the storage call one `Fanout` of them rather than taking each watcher as an argument. Every hook runs on the
event loop once per batch or per store state change, never per message, and must not block.
"""

from __future__ import annotations

from dataclasses import dataclass

from store import BatchResult, StoreError


@dataclass(frozen=True, slots=True)
class Commit:
    """One committed batch, reported after its commit and before any of it is settled with the broker."""

    number: int  # committed batches in this run, this one included
    messages: int
    result: BatchResult
    seconds: float  # applying and committing it, the waits of store retries included
    redelivered: int  # its deliveries that carried the AMQP redelivered flag
    # Seconds from the publish of its first delivery (the AMQP timestamp property, whole seconds) to the
    # commit; None when that delivery carries no timestamp.
    lag: float | None
    # Seconds from its first delivery in the consumer's hands to the start of its commit: the batch's wait
    # for company and for the commit before it (group commit: none at all when nothing else commits).
    waited: float = 0.0


@dataclass(frozen=True, slots=True)
class Settlement:
    """How a committed batch was settled with the broker."""

    acked: int
    rejected: int  # invalid, to the dead-letter queue
    unsettled: int  # their channel closed first: the broker redelivers them and dedup absorbs them


class Hooks:
    """Does nothing: a watcher overrides what it watches."""

    __slots__ = ()

    def on_store_ok(self) -> None:
        """The store took a call: for the first time, or again after failing."""

    def on_store_error(self, error: StoreError, backoff: float) -> None:
        """A store call failed; it is retried after `backoff` seconds, the batch in hand kept unacked."""

    def on_commit(self, commit: Commit) -> None:
        """A batch committed; nothing of it is acked yet."""

    def on_settle(self, settlement: Settlement) -> None:
        """A committed batch was settled with the broker (as far as its channels allowed)."""


class Fanout(Hooks):
    """Calls each of `hooks` in order."""

    __slots__ = ("_hooks",)

    def __init__(self, *hooks: Hooks) -> None:
        self._hooks = hooks

    def on_store_ok(self) -> None:
        for hook in self._hooks:
            hook.on_store_ok()

    def on_store_error(self, error: StoreError, backoff: float) -> None:
        for hook in self._hooks:
            hook.on_store_error(error, backoff)

    def on_commit(self, commit: Commit) -> None:
        for hook in self._hooks:
            hook.on_commit(commit)

    def on_settle(self, settlement: Settlement) -> None:
        for hook in self._hooks:
            hook.on_settle(settlement)
