"""Composition root of the consumer: `python -m consumer`."""

from __future__ import annotations

import asyncio
import logging
import signal
import sys

from pydantic import ValidationError

from consumer.faults import Faults
from consumer.service import run
from consumer.settings import ConsumerSettings
from contract.cli import describe, parse_args
from contract.cli import run as run_async
from contract.config import configure_logging
from store import StoreConfigError, locate

log = logging.getLogger("consumer")


async def main(settings: ConsumerSettings, faults: Faults) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    await run(settings, stop, faults)


DESCRIPTION = """The aggregator's consumer: takes events from the queue, stores each (topic, event_id) once
in one transaction per batch, then acks. The only writer of the store. Configured by environment variables;
stops cleanly on SIGTERM or Ctrl-C."""


def cli(argv: list[str] | None = None) -> int:
    parse_args("python -m consumer", DESCRIPTION, ConsumerSettings, argv)
    try:
        settings = ConsumerSettings()
    except ValidationError as exc:
        print(f"consumer: invalid configuration:\n{describe(exc)}", file=sys.stderr)
        return 2
    configure_logging(settings.log_level, settings.log_format)
    try:
        faults = Faults.from_env()
    except ValueError as exc:
        print(f"consumer: {exc}", file=sys.stderr)
        return 2
    try:
        log.info(
            "consumer starting store=%s queue=%s exchange=%s url=%s",
            locate(settings).describe(),
            settings.amqp_queue,
            settings.amqp_exchange,
            settings.safe_amqp_url(),
        )
        run_async(main(settings, faults))
    except StoreConfigError as exc:  # one line naming the variable to fix, no traceback
        print(f"consumer: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(cli())
