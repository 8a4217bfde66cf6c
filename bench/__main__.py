"""`python -m bench`: the CLI. Runs the scenarios round-robin, prints the table, optionally writes JSON."""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import signal
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from bench import machine, report
from bench.broker import BrokerLink, BrokerUnreachable
from bench.trial import Trial, TrialSpec, run_trial

DEFAULT_URL = "amqp://guest:guest@127.0.0.1:5672/"
MAX_ENVELOPE_SIZE = 10_000  # the publisher's own limit
WARMUP_COUNT = 2_000
# Settings the deployables read from the environment that change what is measured; reported when set.
TUNING_VARS = (
    "BATCH_SIZE",
    "BATCH_WAIT",
    "PREFETCH",
    "LINGER",
    "MAX_IN_FLIGHT",
    "CONFIRM_TIMEOUT",
    "MAX_ATTEMPTS",
    "MAX_PAYLOAD_BYTES",
    "MAX_MESSAGE_BYTES",
)

EXIT_OK, EXIT_FAILED_RUNS, EXIT_USAGE, EXIT_INTERRUPTED = 0, 1, 2, 130


def envelope_sizes(text: str) -> tuple[int, ...]:
    try:
        sizes = tuple(dict.fromkeys(int(part) for part in text.split(",") if part.strip()))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from None
    if not sizes or any(not 1 <= size <= MAX_ENVELOPE_SIZE for size in sizes):
        raise argparse.ArgumentTypeError(f"envelope sizes must be 1..{MAX_ENVELOPE_SIZE}, got {text!r}")
    return sizes


def positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m bench",
        description="End-to-end throughput of the real pipeline: python -m publisher -> RabbitMQ -> "
        "python -m consumer -> SQLite, on throwaway queue names and stores. Broker: AMQP_URL, "
        f"else {DEFAULT_URL}.",
    )
    p.add_argument("--count", type=positive_int, default=20_000, help="events per run (default 20000)")
    p.add_argument("--runs", type=positive_int, default=5, help="runs per scenario (default 5)")
    p.add_argument(
        "--envelope-sizes",
        type=envelope_sizes,
        default=(1, 100),
        metavar="LIST",
        help="comma-separated events per message; 1 = single-event messages, the reference (default 1,100)",
    )
    p.add_argument("--output", type=Path, metavar="PATH", help="also write the results as JSON here")
    p.add_argument("--seed", type=int, default=42, help="load seed, the same for every run (default 42)")
    p.add_argument(
        "--warmup", type=int, default=1, help=f"unmeasured runs of {WARMUP_COUNT} events first (default 1)"
    )
    p.add_argument(
        "--timeout", type=float, default=120.0, help="seconds a run may take before it fails (default 120)"
    )
    p.add_argument(
        "--db-dir", type=Path, help="directory for the throwaway stores (default: the system temp dir)"
    )
    return p


def _cancel_once(task: asyncio.Task[Any]) -> None:
    # Once only: a second cancel would interrupt the cleanup the first one started.
    if not task.cancelling():
        task.cancel()


async def run_all(args: argparse.Namespace, url: str, workdir: Path) -> tuple[list[Trial], str]:
    """Warm up, then every scenario round-robin; returns the trials and the broker's version."""
    task = asyncio.current_task()
    if task is not None:
        asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, _cancel_once, task)
    link = BrokerLink(url)
    await link.connect()
    try:
        for i in range(args.warmup):
            spec = TrialSpec(
                url, min(WARMUP_COUNT, args.count), args.envelope_sizes[-1], args.seed, args.timeout
            )
            trial = await run_trial(spec, link, workdir, -1, f"warmup{i}")
            if not trial.ok:
                raise WarmupFailed(f"warm-up run failed, not measuring: {trial.error}")
            _progress(f"warm-up {i + 1}/{args.warmup}: ok ({trial.seconds:.2f}s)")
        trials: list[Trial] = []
        sizes: tuple[int, ...] = args.envelope_sizes
        for round_ in range(args.runs):
            # Rotate the order each round so no scenario always runs first (or right after another one).
            order = sizes[round_ % len(sizes) :] + sizes[: round_ % len(sizes)]
            for size in order:
                spec = TrialSpec(url, args.count, size, args.seed, args.timeout)
                trial = await run_trial(spec, link, workdir, round_, f"r{round_}-e{size}")
                trials.append(trial)
                _progress(_describe(trial, round_, args))
        return trials, link.server_version
    finally:
        leftovers = await link.delete_leftovers()
        if leftovers:
            _progress(f"WARNING: could not delete from the broker, please remove: {', '.join(leftovers)}")
        await link.close()


class WarmupFailed(Exception):
    """The warm-up run failed: every measured run would fail the same way."""


def _describe(trial: Trial, round_: int, args: argparse.Namespace) -> str:
    where = f"round {round_ + 1}/{args.runs} envelope {trial.envelope_size}"
    if not trial.ok or trial.seconds is None:
        return f"{where}: FAILED: {trial.error}"
    publish = trial.publish_events_per_second() or 0.0
    return (
        f"{where}: {args.count / trial.seconds:,.0f} events/s end to end ({trial.seconds:.2f}s), "
        f"publish {publish:,.0f} events/s"
    )


def _progress(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    # aiormq logs every failed connect with a traceback; the bench says it once, in one line.
    for name in ("aiormq", "aio_pika"):
        logging.getLogger(name).setLevel(logging.CRITICAL)
    if args.warmup < 0 or args.timeout <= 0:
        print("bench: --warmup must be >= 0 and --timeout > 0", file=sys.stderr)
        return EXIT_USAGE
    url = os.environ.get("AMQP_URL") or DEFAULT_URL
    db_root = args.db_dir or Path(tempfile.gettempdir())
    if not db_root.is_dir():
        print(f"bench: --db-dir {db_root} is not a directory", file=sys.stderr)
        return EXIT_USAGE
    if args.output is not None and not args.output.parent.is_dir():
        print(f"bench: --output: no such directory {args.output.parent}", file=sys.stderr)
        return EXIT_USAGE
    facts = machine.facts(db_root)
    config: dict[str, Any] = {
        "count": args.count,
        "runs": args.runs,
        "envelope_sizes": list(args.envelope_sizes),
        "seed": args.seed,
        "warmup": args.warmup,
        "timeout": args.timeout,
        "env_overrides": {name: os.environ[name] for name in TUNING_VARS if name in os.environ},
    }
    started = time.monotonic()
    try:
        with tempfile.TemporaryDirectory(prefix="eventagg-bench-", dir=db_root) as workdir:
            trials, facts["rabbitmq"] = asyncio.run(run_all(args, url, Path(workdir)))
    except BrokerUnreachable as exc:
        print(f"bench: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except WarmupFailed as exc:
        print(f"bench: {exc}", file=sys.stderr)
        return EXIT_FAILED_RUNS
    except (KeyboardInterrupt, asyncio.CancelledError):
        print("bench: interrupted; children stopped and the runs' queues deleted", file=sys.stderr)
        return EXIT_INTERRUPTED
    facts["load_average_end"] = machine.load_average()
    config["wall_seconds"] = round(time.monotonic() - started, 1)
    results = report.scenarios(trials, args.envelope_sizes, args.count)
    print(report.table(results, config, facts))
    if args.output is not None:
        args.output.write_text(json.dumps(report.as_json(results, config, facts), indent=2) + "\n")
        print(f"\nresults written to {args.output}")
    return EXIT_OK if all(t.ok for t in trials) else EXIT_FAILED_RUNS


if __name__ == "__main__":
    sys.exit(main())
