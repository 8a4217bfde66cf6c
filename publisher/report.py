"""The publisher's report of a run: its counts, the exit code they mean, the summary printed at the end."""

from __future__ import annotations

import json
import sys
import time
from dataclasses import asdict, dataclass, field

from publisher.check import CheckResult

EXIT_OK, EXIT_UNCONFIRMED, EXIT_USAGE, EXIT_BAD_LINES, EXIT_VERIFY = 0, 1, 2, 3, 4
EXIT_INTERRUPTED = 130  # 128 + SIGINT, as a shell reports a command stopped by Ctrl-C


@dataclass
class Report:
    sent: int = 0  # events read or generated and handed to the transport
    unique: int = 0
    duplicates: int = 0
    written: int = 0  # events written towards the broker (or the api) at least once
    confirmed: int = 0
    unconfirmed: int = 0
    bad_lines: int = 0
    elapsed: float = 0.0
    # Seconds spent generating the load while sending; left out of events_per_second, which is the sending's.
    generating: float = 0.0
    events_per_second: float = 0.0
    # Wall-clock (epoch) times of the first send and the last confirm, comparable across processes.
    first_publish_at: float | None = None
    last_confirm_at: float | None = None
    errors: list[str] = field(default_factory=list)
    # --wait-stored: events the requests stored, found already stored, and not stored in time.
    stored: dict[str, int] | None = None

    def stop_clock(self, started: float) -> None:
        """Elapsed time and rate since `started` (a `time.monotonic()` reading)."""
        self.elapsed = time.monotonic() - started
        sending = self.elapsed - self.generating
        self.events_per_second = self.confirmed / sending if sending > 0 else 0.0

    def exit_code(self) -> int:
        """What the run's counts mean for its exit code, before any --verify."""
        code = EXIT_OK
        if self.bad_lines:
            code = EXIT_BAD_LINES
        if self.unconfirmed or self.errors:
            code = EXIT_UNCONFIRMED
        elif self.stored is not None and self.stored["pending"]:
            code = EXIT_VERIFY  # confirmed, but the store did not catch up within the api's PUBLISH_TIMEOUT
        return code

    def text(self) -> str:
        lines = [
            f"sent        {self.sent}",
            f"unique      {self.unique}",
            f"duplicates  {self.duplicates}",
            f"written     {self.written}",
            f"confirmed   {self.confirmed}",
        ]
        if self.unconfirmed:
            lines.append(f"UNCONFIRMED {self.unconfirmed}  (safe to re-send: the consumer deduplicates)")
        if self.bad_lines:
            lines.append(f"bad lines   {self.bad_lines}  (skipped, listed above)")
        if self.stored is not None:
            s = self.stored
            lines.append(
                f"stored      new {s['new']}, already stored {s['duplicates']}, not yet stored {s['pending']}"
            )
        lines.append(f"elapsed     {self.elapsed:.2f}s")
        if self.generating:
            lines.append(f"generating  {self.generating:.2f}s  (of the elapsed time; not in events/s)")
        lines.append(f"events/s    {self.events_per_second:,.0f}")
        return "\n".join(lines)


def print_summary(report: Report, verified: dict[str, object] | None, code: int, as_json: bool) -> None:
    """The end of a run: the report (and --verify's outcome) on stdout, its errors on stderr."""
    if as_json:
        print(json.dumps({**asdict(report), "verify": verified, "exit_code": code}))
    else:
        print(report.text())
        for error in report.errors:
            print(f"error: {error}", file=sys.stderr)
        if verified is not None:
            print(f"verify      {verified['summary']}")


def print_interrupted(report: Report, as_json: bool, target: str = "the broker") -> None:
    """Ctrl-C: what was written and what was confirmed so far, said once, and flushed before the process
    leaves."""
    print(
        f"publisher: interrupted; {report.written} events written to {target}, {report.confirmed} of them "
        "confirmed; the rest may or may not have arrived (re-sending them is safe: duplicates are dropped)",
        file=sys.stderr,
    )
    if as_json:
        print(json.dumps({**asdict(report), "verify": None, "exit_code": EXIT_INTERRUPTED}))
    else:
        print(report.text())
    sys.stdout.flush()
    sys.stderr.flush()


def print_check(result: CheckResult, as_json: bool) -> int:
    """`--check`'s result on stdout; returns the exit code it means."""
    code = EXIT_OK if result.ok else EXIT_VERIFY
    if as_json:
        print(json.dumps({**result.as_dict(), "exit_code": code}))
    else:
        print(result.text())
    return code
