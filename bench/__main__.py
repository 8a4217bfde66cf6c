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
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

from bench import bigstore, machine, report
from bench.broker import BenchError, BrokerLink, BrokerUnreachable
from bench.scenarios import FULL, QUICK, SCENARIOS, Context, Sizes, describe
from bench.trial import Sample, ScenarioSkipped
from broker.publisher import DEFAULT_LINGER

DEFAULT_URL = "amqp://guest:guest@127.0.0.1:5672/"
# Earlier runs' JSON; the newest is what this run's must-not-fall figures are compared with.
RESULTS_DIR = Path(__file__).resolve().parent / "results"
# Settings the deployables read from the environment that change what is measured; reported when set.
TUNING_VARS = ("BATCH_SIZE", "BATCH_WAIT", "PREFETCH", "LINGER", "MAX_IN_FLIGHT", "CONFIRM_TIMEOUT", "SEARCH")
NAMES = tuple(s.name for s in SCENARIOS)

EXIT_OK, EXIT_FAILED_RUNS, EXIT_USAGE, EXIT_INTERRUPTED = 0, 1, 2, 130


def scenario_list(text: str) -> tuple[str, ...]:
    names = tuple(dict.fromkeys(part.strip() for part in text.split(",") if part.strip()))
    unknown = [n for n in names if n not in NAMES]
    if not names or unknown:
        raise argparse.ArgumentTypeError(f"unknown scenario(s) {unknown}; choose from {', '.join(NAMES)}")
    return names


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m bench",
        description="Throughput, latency, memory and scale of the real deployables (python -m publisher, "
        "consumer, api) on throwaway queue names and stores, against the broker's own ceiling and a "
        f"baseline of the design it replaces. Broker: AMQP_URL, else {DEFAULT_URL}.",
    )
    p.add_argument("--quick", action="store_true", help="small sizes, one repetition: checks it all works")
    p.add_argument("--runs", type=int, help="repetitions per scenario (default 3; --quick: 1)")
    p.add_argument(
        "--only", type=scenario_list, default=NAMES, help=f"comma-separated subset of: {', '.join(NAMES)}"
    )
    p.add_argument("--count", type=int, help="events per throughput run (default 100000; quick 1000)")
    p.add_argument(
        "--latency-linger",
        type=float,
        default=DEFAULT_LINGER,
        metavar="S",
        help=f"the latency run's publisher linger in seconds (default {DEFAULT_LINGER:g}, "
        "the publisher CLI's default)",
    )
    p.add_argument("--output", type=Path, metavar="PATH", help="also write the results as JSON here")
    p.add_argument(
        "--previous",
        type=Path,
        metavar="PATH",
        help=f"an earlier run's JSON to compare with (default: the newest in {RESULTS_DIR})",
    )
    p.add_argument("--seed", type=int, default=42, help="load seed, the same for every run (default 42)")
    p.add_argument(
        "--timeout", type=float, help="seconds one repetition may wait for its events (default 300; quick 60)"
    )
    p.add_argument(
        "--db-dir", type=Path, help="directory for the throwaway stores (default: system temp dir)"
    )
    p.add_argument(
        "--stored",
        type=int,
        metavar="N",
        help="events in the pre-filled store of the scale scenarios (default 1000000; quick 10000)",
    )
    p.add_argument(
        "--keep-stores",
        type=Path,
        metavar="DIR",
        help="build the pre-filled stores in DIR once and reuse them on later runs with the same --stored",
    )
    p.add_argument(
        "--key-retention",
        type=float,
        metavar="S",
        help="the retention scenarios' KEY_RETENTION in seconds (default: twice RETENTION, 120; 0 keeps keys "
        "forever, and the store then grows by its tombstones)",
    )
    return p


def chosen_sizes(args: argparse.Namespace) -> Sizes:
    sizes = QUICK if args.quick else FULL
    if args.stored is not None:
        sizes = replace(sizes, stored=args.stored)
    if args.key_retention is not None:
        kept = args.key_retention or None  # 0: forever
        sizes = replace(sizes, steady=replace(sizes.steady, key_retention=kept))
    return sizes if args.count is None else replace(sizes, count=args.count)


def _cancel_once(task: asyncio.Task[Any]) -> None:
    # Once only: a second cancel would interrupt the cleanup the first one started.
    if not task.cancelling():
        task.cancel()


async def run_all(args: argparse.Namespace, url: str, workdir: Path) -> tuple[list[Sample], str]:
    task = asyncio.current_task()
    if task is not None:
        asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, _cancel_once, task)
    link = BrokerLink(url)
    await link.connect()
    ctx = Context(link, workdir, chosen_sizes(args), args.seed, args.timeout)
    ctx.latency_linger = args.latency_linger
    sizes = ctx.sizes
    chosen = [s for s in SCENARIOS if s.name in args.only]
    try:
        kept = args.keep_stores or workdir
        for kind, needed in (
            ("events", any(s.needs_big_store == "events" for s in chosen)),
            ("tombstones", any(s.needs_big_store == "tombstones" for s in chosen)),
            ("searchable", any(s.needs_big_store == "searchable" for s in chosen)),
        ):
            if not needed:
                continue
            path = kept / f"prefilled-{kind}-{sizes.stored}.db"
            if not path.exists():
                started = time.monotonic()
                building = path.with_name(path.name + ".building")
                await asyncio.to_thread(
                    bigstore.build, building, sizes.stored, 1, kind == "tombstones", kind == "searchable"
                )
                building.rename(path)
                _progress(f"store with {sizes.stored:,} {kind} built in {time.monotonic() - started:.1f}s")
            if kind == "events":
                ctx.big_store = path
            elif kind == "searchable":
                ctx.search_store = path
            else:
                ctx.tombstone_store = path
        samples: list[Sample] = []
        for round_ in range(args.runs):
            # Rotate the order each round so no scenario always runs first (or right after another one).
            shift = round_ % len(chosen)
            for scenario in chosen[shift:] + chosen[:shift]:
                sample = Sample(scenario.name, round_)
                started = time.monotonic()
                ctx.info = sample.info
                ctx.round = round_
                try:
                    sample.values = await scenario.measure(ctx, f"r{round_}-{scenario.name}")
                except ScenarioSkipped as exc:
                    sample.skipped = str(exc)
                except BenchError as exc:
                    sample.error = str(exc)
                except (OSError, ValueError, KeyError, TimeoutError) as exc:
                    sample.error = f"{type(exc).__name__}: {exc}"
                sample.info["wall_seconds"] = round(time.monotonic() - started, 1)
                samples.append(sample)
                outcome = describe(sample.values) if sample.ok else f"FAILED: {sample.error}"
                outcome = f"skipped: {sample.skipped}" if sample.skipped else outcome
                _progress(f"round {round_ + 1}/{args.runs} {scenario.name}: {outcome}")
        return samples, link.server_version
    finally:
        leftovers = await link.delete_leftovers()
        if leftovers:
            _progress(f"WARNING: could not delete from the broker, please remove: {', '.join(leftovers)}")
        await link.close()


def previous_run(path: Path | None) -> tuple[dict[str, Any] | None, str]:
    """The earlier run's results and its file name; (None, "") when there is none or it cannot be read. By
    default the newest in RESULTS_DIR that measured the figure a run must not fall below (envelopes end to
    end): runs of a few scenarios alone are kept there too."""
    if path is None:
        for found in sorted(RESULTS_DIR.glob("*.json"), reverse=True):
            try:
                loaded = json.loads(found.read_text())
            except (OSError, ValueError):
                continue
            if isinstance(loaded, dict) and report.previous_median(
                loaded, "e2e_envelopes", "events_per_second"
            ):
                return loaded, found.name
        return None, ""
    try:
        loaded = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        _progress(f"WARNING: cannot read the previous run {path}: {exc}")
        return None, ""
    return (loaded, path.name) if isinstance(loaded, dict) else (None, "")


def _progress(line: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {line}", file=sys.stderr, flush=True)


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    for name in ("aiormq", "aio_pika"):
        logging.getLogger(name).setLevel(logging.CRITICAL)
    args.runs = args.runs or (1 if args.quick else 3)
    args.timeout = args.timeout or (60.0 if args.quick else 300.0)
    if args.runs < 1 or args.timeout <= 0 or (args.count is not None and args.count < 100):
        print("bench: need --runs >= 1, --timeout > 0 and --count >= 100", file=sys.stderr)
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
    sizes = chosen_sizes(args)
    config: dict[str, Any] = {
        "mode": "quick" if args.quick else "full",
        "runs": args.runs,
        "scenarios": list(args.only),
        "sizes": asdict(sizes),
        "seed": args.seed,
        "timeout": args.timeout,
        "latency_linger": args.latency_linger,
        "command": " ".join(["python -m bench", *(argv if argv is not None else sys.argv[1:])]),
        "env_overrides": {name: os.environ[name] for name in TUNING_VARS if name in os.environ},
    }
    previous, config["previous_run"] = previous_run(args.previous)
    started = time.monotonic()
    try:
        with tempfile.TemporaryDirectory(prefix="eventagg-bench-", dir=db_root) as workdir:
            samples, facts["rabbitmq"] = asyncio.run(run_all(args, url, Path(workdir)))
    except BrokerUnreachable as exc:
        print(f"bench: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except (KeyboardInterrupt, asyncio.CancelledError):
        print("bench: interrupted; children stopped and the runs' queues deleted", file=sys.stderr)
        return EXIT_INTERRUPTED
    facts["load_average_end"] = machine.load_average()
    config["wall_seconds"] = round(time.monotonic() - started, 1)
    results = report.Results(samples)
    print(report.table(results, config, facts, sizes, previous))
    if args.output is not None:
        args.output.write_text(json.dumps(report.as_json(results, config, facts, previous), indent=2) + "\n")
        print(f"\nresults written to {args.output}")
    return EXIT_OK if all(s.ok for s in samples) else EXIT_FAILED_RUNS


if __name__ == "__main__":
    sys.exit(main())
