"""Fault injection for the crash tests: inert unless one of its environment variables is set.

- `EVENTAGG_FAULT_KILL_AFTER_COMMIT=N`: SIGKILL this process right after its N-th batch commit, before
  anything of that batch is acked. This makes the narrowest window of the design (committed, not acked)
  reachable on purpose: the broker redelivers the batch and the dedup key must absorb it.
- `EVENTAGG_FAULT_COMMIT=KIND:PATH`: while the file PATH exists, every batch transaction fails just before
  COMMIT with an OSError carrying SQLite's text for KIND: `ioerror` (disk I/O error) or `full` (database or
  disk is full). Both backends call the hook inside the transaction, so the rows already written in it are
  rolled back, as with a real failure.
- `EVENTAGG_FAULT_FAIL_AFTER_COMMIT=N` (with `EVENTAGG_FAULT_COMMIT`): right after the N-th batch commit,
  before its acks, create that flag file, so the batches after it fail until the flag is removed. The next
  batch is already decoded and in hand by then: this makes "batch N committed, batch N+1 failing" reachable.

- `EVENTAGG_FAULT_KILL_IN_SWEEP=N`: SIGKILL this process inside its N-th retention sweep transaction that
  removes something, after its deletes and before its COMMIT.
- `EVENTAGG_FAULT_RAISE_AFTER_COMMIT=N`: raise an error right after the N-th batch commit, before its acks,
  as an unexpected bug would: the consumer must stop with that error (exit code 1), not carry on or exit 0.
- `EVENTAGG_FAULT_SLOW_COMMIT=SECONDS`: every batch transaction takes that much longer before COMMIT (a
  slow disk). With SQLite the hook runs on the store's own thread, so deliveries keep arriving meanwhile: the
  store is the bottleneck on purpose, and group commit must fill batches up to BATCH_SIZE.

These are not settings: they exist to prove the crash guarantees and are logged loudly when active.
"""

from __future__ import annotations

import errno
import logging
import os
import signal
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path

from consumer.hooks import Commit, Hooks

log = logging.getLogger(__name__)

KILL_AFTER_COMMIT = "EVENTAGG_FAULT_KILL_AFTER_COMMIT"
COMMIT = "EVENTAGG_FAULT_COMMIT"
FAIL_AFTER_COMMIT = "EVENTAGG_FAULT_FAIL_AFTER_COMMIT"
KILL_IN_SWEEP = "EVENTAGG_FAULT_KILL_IN_SWEEP"
SLOW_COMMIT = "EVENTAGG_FAULT_SLOW_COMMIT"
RAISE_AFTER_COMMIT = "EVENTAGG_FAULT_RAISE_AFTER_COMMIT"
ERRORS = {"ioerror": (errno.EIO, "disk I/O error"), "full": (errno.ENOSPC, "database or disk is full")}


@dataclass(frozen=True, slots=True)
class Faults(Hooks):
    kill_after_commit: int | None = None
    commit_error: str | None = None
    commit_flag: Path | None = None
    fail_after_commit: int | None = None
    kill_in_sweep: int | None = None
    sweeps: list[int] = field(default_factory=lambda: [0], compare=False)  # sweep transactions so far
    slow_commit: float | None = None
    raise_after_commit: int | None = None

    @classmethod
    def from_env(cls, environ: Mapping[str, str] = os.environ) -> Faults:
        kill_after = environ.get(KILL_AFTER_COMMIT)
        commit = environ.get(COMMIT)
        fail_after = environ.get(FAIL_AFTER_COMMIT)
        in_sweep = environ.get(KILL_IN_SWEEP)
        slow = environ.get(SLOW_COMMIT)
        raise_after = environ.get(RAISE_AFTER_COMMIT)
        faults = cls()
        if raise_after:
            faults = replace(faults, raise_after_commit=_positive(RAISE_AFTER_COMMIT, raise_after))
        if in_sweep:
            faults = replace(faults, kill_in_sweep=_positive(KILL_IN_SWEEP, in_sweep))
        if slow:
            try:
                seconds = float(slow)
            except ValueError:
                seconds = -1.0
            if not 0 < seconds <= 10:
                raise ValueError(f"{SLOW_COMMIT} must be seconds in (0, 10], got {slow!r}")
            faults = replace(faults, slow_commit=seconds)
        if kill_after:
            faults = replace(faults, kill_after_commit=_positive(KILL_AFTER_COMMIT, kill_after))
        if commit:
            kind, _, path = commit.partition(":")
            if kind not in ERRORS or not path:
                kinds = ", ".join(sorted(ERRORS))
                raise ValueError(f"{COMMIT} must be KIND:PATH with KIND one of {kinds}, got {commit!r}")
            faults = replace(faults, commit_error=kind, commit_flag=Path(path))
        if fail_after:
            if not commit:
                raise ValueError(f"{FAIL_AFTER_COMMIT} needs {COMMIT}: it creates that flag file")
            faults = replace(faults, fail_after_commit=_positive(FAIL_AFTER_COMMIT, fail_after))
        if faults.active:
            log.warning("FAULT INJECTION ACTIVE %s (test use only)", faults)
        return faults

    @property
    def active(self) -> bool:
        return any(
            x is not None
            for x in (
                self.kill_after_commit,
                self.commit_flag,
                self.kill_in_sweep,
                self.slow_commit,
                self.raise_after_commit,
            )
        )

    def store_hook(self) -> Callable[[], None] | None:
        """What the store calls inside every batch transaction, if anything."""
        return self.before_commit if self.commit_flag is not None or self.slow_commit else None

    def sweep_hook(self) -> Callable[[], None] | None:
        """What the store calls inside every sweep transaction that removes something, before its COMMIT."""
        return self.in_sweep if self.kill_in_sweep is not None else None

    def in_sweep(self) -> None:
        self.sweeps[0] += 1
        if self.kill_in_sweep is not None and self.sweeps[0] >= self.kill_in_sweep:
            log.warning(
                "fault injection: SIGKILL inside sweep transaction %d, before its COMMIT", self.sweeps[0]
            )
            os.kill(os.getpid(), signal.SIGKILL)

    def before_commit(self) -> None:
        """Called inside the batch transaction right before COMMIT; the store rolls the batch back."""
        if self.slow_commit is not None:
            time.sleep(self.slow_commit)
        if self.commit_flag is not None and self.commit_error is not None and self.commit_flag.exists():
            raise OSError(*ERRORS[self.commit_error])

    def on_commit(self, commit: Commit) -> None:
        self.after_commit(commit.number)

    def after_commit(self, commits: int) -> None:
        """Called after a batch committed and before it is settled with the broker."""
        if self.fail_after_commit == commits and self.commit_flag is not None:
            log.warning("fault injection: commits fail from now on, after commit %d", commits)
            self.commit_flag.touch()
        if self.kill_after_commit is not None and commits >= self.kill_after_commit:
            log.warning("fault injection: SIGKILL after commit %d, before its acks", commits)
            os.kill(os.getpid(), signal.SIGKILL)
        if self.raise_after_commit == commits:
            raise InjectedError(f"fault injection: an error after commit {commits}, before its acks")


class InjectedError(RuntimeError):
    """What EVENTAGG_FAULT_RAISE_AFTER_COMMIT raises."""


def _positive(name: str, value: str) -> int:
    if not value.isdigit() or int(value) < 1:
        raise ValueError(f"{name} must be a positive integer, got {value!r}")
    return int(value)
