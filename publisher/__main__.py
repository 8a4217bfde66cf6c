"""The publisher CLI: `python -m publisher` sends a generated load or NDJSON events, with confirms."""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import signal
import sys
import time
from pathlib import Path

import httpx
from pydantic import ValidationError

from broker.connection import BROKER_ERRORS
from broker.publisher import OnConfirmed, PublishFailed
from contract.cli import describe, environment_help
from contract.cli import run as run_async
from contract.config import configure_logging
from contract.event import AnyEvent, Event, is_valid_topic
from publisher import deadletters, export, load, tail
from publisher.check import CheckError, ConfirmedLog, run_check
from publisher.files import BadLine, read_ndjson
from publisher.progress import Progress, VerifyStatus
from publisher.report import (
    EXIT_INTERRUPTED,
    EXIT_UNCONFIRMED,
    EXIT_USAGE,
    EXIT_VERIFY,
    Report,
    print_check,
    print_interrupted,
    print_summary,
)
from publisher.settings import PublisherSettings
from publisher.transport import Batch, HttpTransport, Transport, open_transport
from publisher.verify import Verifier, VerifyError, api_problem

log = logging.getLogger("publisher")

UNREACHABLE: tuple[type[Exception], ...] = (*BROKER_ERRORS, httpx.TransportError)

SUBCOMMANDS = """\
subcommands:
  python -m publisher dead-letters [--json | --bodies] [--limit N]
                        list what the consumer rejected, newest first (GET /dead-letters)
  python -m publisher dead-letters replay --file PATH [options]
                        re-publish corrected events, confirmed like any publish
  (python -m publisher dead-letters --help for more)
  python -m publisher tail [--topic T] [--q WORDS] [--payload FIELD=VALUE] ...
                        print each event as it is stored, one JSON line each (GET /events/stream)
  python -m publisher export --out FILE [filters]
                        write the stored events to an NDJSON file, with a progress bar (GET /events/export)
  python -m publisher replay FILE [options]
                        re-publish an export with confirms; what is already stored counts as duplicates"""
EXIT_CODES = """\
exit codes: 0 all confirmed (and verified); 1 some events not confirmed after every retry; 2 bad usage or
  configuration; 3 bad input lines were skipped; 4 --verify or --check failed, or the api it needs is
  unreachable; 130 interrupted by Ctrl-C"""


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m publisher",
        description="Publish events to the aggregator with publisher confirms. Without --file, sends a "
        "generated load. Settings not given here come from the environment (AMQP_URL, ...).",
        epilog=f"{SUBCOMMANDS}\n\n{EXIT_CODES}\n\n{environment_help(PublisherSettings)}",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    src = p.add_argument_group("what to send")
    src.add_argument("--file", metavar="PATH", help="NDJSON events, one JSON object per line; '-' for stdin")
    src.add_argument("--count", type=int, default=5000, help="events to generate (default 5000)")
    src.add_argument("--duplicates", type=float, default=0.2, help="share of re-sent events (default 0.2)")
    src.add_argument("--topics", type=int, default=8, help="number of topics (default 8)")
    src.add_argument("--seed", type=int, default=None, help="seed for a reproducible load (default: random)")
    src.add_argument("--topic-prefix", default="demo", help="prefix of generated topic names (default demo)")
    how = p.add_argument_group("how to send")
    how.add_argument("--via", choices=("amqp", "http"), default="amqp", help="transport (default amqp)")
    how.add_argument("--url", help="api base URL for --via http and --verify (env API_URL)")
    how.add_argument(
        "--wait-stored",
        action="store_true",
        default=None,
        help="with --via http: each request answers once its events are stored; reports new, already "
        "stored and not yet stored (env WAIT_STORED)",
    )
    how.add_argument("--envelope-size", type=int, help="events per message; 1 sends single-event messages")
    how.add_argument("--linger", type=float, help="seconds to wait filling an envelope")
    how.add_argument(
        "--keep-order",
        action="store_true",
        default=None,
        help="events are stored in the order given (envelopes of consecutive events of one topic)",
    )
    how.add_argument("--max-in-flight", type=int, help="unconfirmed messages (or requests) at once")
    how.add_argument("--confirm-timeout", type=float, help="seconds to wait for a confirm before re-sending")
    out = p.add_argument_group("output")
    out.add_argument("--verify", action="store_true", help="wait until the api shows the events took effect")
    out.add_argument("--verify-all", action="store_true", help="with --verify, look up every unique event")
    out.add_argument("--verify-timeout", type=float, default=60.0, help="seconds to wait for --verify")
    out.add_argument(
        "--confirmed-log",
        type=Path,
        metavar="PATH",
        help="append each event to PATH (JSON lines) as soon as the broker confirmed it",
    )
    out.add_argument(
        "--check",
        action="store_true",
        help="publish nothing: compare --confirmed-log and this workload with the store via the api "
        "(lost, unexpected, altered, counters); run it once the consumer has drained the queue",
    )
    out.add_argument("--json", action="store_true", help="print the summary as JSON on stdout")
    out.add_argument("--quiet", action="store_true", help="no progress line")
    return p


# Settings an option may override, and the option; the environment variable is the field's name.
OPTIONS = {
    "envelope_size": "--envelope-size",
    "linger": "--linger",
    "keep_order": "--keep-order",
    "max_in_flight": "--max-in-flight",
    "confirm_timeout": "--confirm-timeout",
    "api_url": "--url",
    "wait_stored": "--wait-stored",
}


def _option_values(args: argparse.Namespace) -> dict[str, object]:
    values = {field: getattr(args, option[2:].replace("-", "_")) for field, option in OPTIONS.items()}
    return {field: value for field, value in values.items() if value is not None}


def given_options(args: argparse.Namespace) -> dict[str, str]:
    return {field: OPTIONS[field] for field in _option_values(args)}


def build_settings(args: argparse.Namespace) -> PublisherSettings:
    return PublisherSettings(**_option_values(args))  # type: ignore[arg-type]


def generated_load(args: argparse.Namespace) -> load.Load:
    seed = args.seed if args.seed is not None else time.time_ns()
    return load.generate(args.count, args.duplicates, args.topics, seed, args.topic_prefix)


# Events generated between two yields to the event loop: confirms, the progress line and Ctrl-C are heard
# while a big load is generated and sent, even when the publisher always has room.
YIELD_EVERY = 500


async def send_load(
    transport: Transport,
    args: argparse.Namespace,
    report: Report,
    on_confirmed: OnConfirmed,
    progress: Progress,
    keep: bool,
) -> list[AnyEvent]:
    """Generate the load as it is sent: the first message leaves at once, not after the whole load was made.
    The time spent generating is measured and left out of the reported rate. Returns the events sent when
    `keep` (for --verify), else nothing: a long run holds no event once it is confirmed.

    The generator writes each event's wire JSON directly (`load.EncodedStream`): its events are valid by
    construction, so they skip the model that a file's events are validated with."""
    seed = args.seed if args.seed is not None else time.time_ns()
    events = load.EncodedStream(args.count, args.duplicates, args.topics, seed, args.topic_prefix)
    batch = transport.batch(on_confirmed)
    progress.watch(lambda: batch.written)
    sent: list[AnyEvent] = []
    report.first_publish_at = time.time()
    clock = time.perf_counter
    while True:
        began = clock()
        item = next(events, None)
        report.generating += clock() - began
        if item is None:
            break
        if keep:
            sent.append(item)
        report.sent, report.unique, report.duplicates = report.sent + 1, events.unique, events.duplicates
        await batch.add(item)
        if report.sent % YIELD_EVERY == 0:
            await asyncio.sleep(0)
    await _finish(batch, report)
    return sent


async def send_file(
    transport: Transport,
    args: argparse.Namespace,
    settings: PublisherSettings,
    report: Report,
    on_confirmed: OnConfirmed,
    progress: Progress,
    keep: bool,
) -> list[AnyEvent]:
    """Publish a file or stdin as it is read; returns the events sent when `keep` (for --verify), else
    nothing: a publisher fed on stdin for days holds no event once it is confirmed, only each key once."""
    interactive = args.file == "-"
    stream = sys.stdin.buffer if interactive else await asyncio.to_thread(Path(args.file).open, "rb")
    sent: list[AnyEvent] = []
    seen: set[tuple[str, str]] = set()
    batch = transport.batch(on_confirmed)
    progress.watch(lambda: batch.written)
    try:
        async for item in read_ndjson(stream, settings.limits(), interactive):
            if isinstance(item, BadLine):
                report.bad_lines += 1
                print(f"{args.file}: {item}", file=sys.stderr)
                continue
            if keep:
                sent.append(item)
            report.sent += 1
            if item.key() in seen:
                report.duplicates += 1
            else:
                seen.add(item.key())
                report.unique += 1
            await batch.add(item)
        await _finish(batch, report)
    finally:
        if not interactive:
            stream.close()
    return sent


async def _finish(batch: Batch, report: Report) -> None:
    try:
        await batch.flush()
    except PublishFailed as exc:
        report.unconfirmed = len(exc.unconfirmed)
        report.errors.append(str(exc))
    report.last_confirm_at = time.time()
    report.confirmed = batch.confirmed
    report.written = batch.written


async def main(args: argparse.Namespace, settings: PublisherSettings) -> int:
    report = Report()
    progress = Progress(None if args.file else args.count, enabled=sys.stderr.isatty() and not args.quiet)
    verifier = None
    verifying = args.verify or args.verify_all
    if settings.wait_stored and args.via != "http":
        print("publisher: --wait-stored needs --via http (it waits through the api)", file=sys.stderr)
        return EXIT_USAGE
    if args.via == "http" or verifying:
        problem = await api_problem(settings.api_url)
        if problem is not None:
            print(
                f"publisher: the api at {settings.api_url} is unreachable ({problem}); nothing was published",
                file=sys.stderr,
            )
            return EXIT_VERIFY  # the README's 4: the api it needs is unreachable
    if verifying:
        verifier = Verifier(
            settings.api_url, args.verify_timeout, settings.api_key, None if args.verify_all else 1000
        )
        try:
            await verifier.baseline()
        except VerifyError as exc:
            print(f"publisher: {exc}; nothing was published", file=sys.stderr)
            return EXIT_VERIFY
    confirmed_log = ConfirmedLog(args.confirmed_log) if args.confirmed_log else None

    def on_confirmed(events: list[AnyEvent]) -> None:
        if confirmed_log is not None:
            confirmed_log.record(events)
        progress.add(events)

    started = time.monotonic()

    def interrupted() -> None:
        # Ctrl-C: say so once and report what the broker confirmed, then leave at once. Waiting out the
        # messages still in flight (their confirms, time-outs and re-sends) would take up to attempts x
        # confirm timeout and only print warnings; whatever they were, re-sending is safe.
        progress.close()
        report.confirmed = progress.done
        report.written = progress.written()
        # What is not confirmed of the whole run: a load not yet generated in full counts in full.
        planned = report.sent if args.file else args.count
        report.unconfirmed = max(planned - report.confirmed, 0)
        report.stop_clock(started)
        if confirmed_log is not None:
            confirmed_log.close()
        print_interrupted(report, args.json, "the api" if args.via == "http" else "the broker")
        os._exit(EXIT_INTERRUPTED)

    asyncio.get_running_loop().add_signal_handler(signal.SIGINT, interrupted)
    progress.start()
    try:
        async with open_transport(args.via, settings) as transport:
            if args.file:
                sent = await send_file(transport, args, settings, report, on_confirmed, progress, verifying)
            else:
                sent = await send_load(transport, args, report, on_confirmed, progress, verifying)
            if isinstance(transport, HttpTransport) and settings.wait_stored:
                report.stored = dict(transport.stored)
    except PublishFailed as exc:
        report.errors.append(str(exc))
        sent = []
    except UNREACHABLE as exc:
        where = settings.safe_amqp_url() if args.via == "amqp" else settings.api_url
        print(f"publisher: cannot reach {where}: {exc}; nothing was published", file=sys.stderr)
        return EXIT_UNCONFIRMED
    finally:
        progress.close()
        if confirmed_log is not None:
            confirmed_log.close()
    report.stop_clock(started)
    code = report.exit_code()
    verified: dict[str, object] | None = None
    if verifier is not None and code != EXIT_UNCONFIRMED:
        status = VerifyStatus(args.quiet)
        status.start(f"waiting until the api shows the events took effect (up to {args.verify_timeout:g}s)")
        try:
            outcome = await verifier.check(sent, report.sent, status.show)
        finally:
            status.close()
        verified = outcome.as_dict()
        if not outcome.ok:
            code = EXIT_VERIFY
    print_summary(report, verified, code, args.json)
    return code


async def check(args: argparse.Namespace, settings: PublisherSettings) -> int:
    """`--check`: the workload these options describe against the confirmed log and the store."""
    if args.file:
        workload = await read_workload_file(args.file, settings)
    else:
        workload = generated_load(args).events
    try:
        result = await run_check(settings.api_url, settings.api_key, workload, args.confirmed_log)
    except CheckError as exc:
        print(f"publisher: {exc}", file=sys.stderr)
        return EXIT_VERIFY
    return print_check(result, args.json)


async def read_workload_file(name: str, settings: PublisherSettings) -> list[Event]:
    """The good lines of an NDJSON file, as a publishing run read them (bad lines were never sent)."""
    stream = await asyncio.to_thread(Path(name).open, "rb")
    with stream:
        items = [item async for item in read_ndjson(stream, settings.limits(), False)]
    return [item for item in items if isinstance(item, Event)]


def cli(argv: list[str] | None = None) -> int:
    given = sys.argv[1:] if argv is None else argv
    if given[:1] == ["dead-letters"]:
        return deadletters.cli(given[1:], cli)
    if given[:1] == ["tail"]:
        return tail.cli(given[1:])
    if given[:1] == ["export"]:
        return export.cli(given[1:])
    if given[:1] == ["replay"]:
        return export.replay(given[1:], cli)
    args = parser().parse_args(given)
    if args.file is None and (args.count < 0 or args.topics < 1 or not 0 <= args.duplicates < 1):
        print("publisher: need --count >= 0, --topics >= 1 and 0 <= --duplicates < 1", file=sys.stderr)
        return EXIT_USAGE
    if args.file is None:
        bad = [name for name in load.topic_names(args.topics, args.topic_prefix) if not is_valid_topic(name)]
        if bad:
            print(
                f"publisher: --topic-prefix {args.topic_prefix!r} makes invalid topic names such as "
                f"{bad[0]!r} (letters, digits and . _ : - only, at most 255 characters)",
                file=sys.stderr,
            )
            return EXIT_USAGE
    try:
        settings = build_settings(args)
    except ValidationError as exc:
        print(f"publisher: invalid configuration:\n{describe(exc, given_options(args))}", file=sys.stderr)
        return EXIT_USAGE
    configure_logging(settings.log_level, settings.log_format)
    # A run's output is its report; "connected to the broker" at every start is detail there, not news
    # (reconnects and failures are WARNING and still show).
    if logging.getLogger().level >= logging.INFO:
        logging.getLogger("broker.connection").setLevel(logging.WARNING)
    if args.file and args.file != "-" and not Path(args.file).is_file():
        print(f"publisher: no such file: {args.file}", file=sys.stderr)
        return EXIT_USAGE
    if args.check:
        if args.confirmed_log is None or args.file == "-" or (args.file is None and args.seed is None):
            print(
                "publisher: --check needs --confirmed-log and the workload the publisher sent: --file "
                "PATH, or the same --count/--duplicates/--topics/--topic-prefix and an explicit --seed",
                file=sys.stderr,
            )
            return EXIT_USAGE
        return run_async(check(args, settings))
    try:
        return run_async(main(args, settings))
    except KeyboardInterrupt:
        return EXIT_INTERRUPTED


if __name__ == "__main__":
    sys.exit(cli())
