"""`python -m publisher tail`: print the events the store commits, as they come (GET /events/stream).

Each event is printed as one JSON line (as GET /events gives it). A dropped connection, or a stream the api
ended because this client fell behind, is resumed from the last position seen (Last-Event-ID): no event is
skipped and none printed twice.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import signal
import sys
from typing import TextIO

import httpx

from contract.cli import run as run_async
from publisher.filters import add_filters, headers_of, reading
from publisher.settings import PublisherSettings

EXIT_OK, EXIT_USAGE, EXIT_REFUSED = 0, 2, 4
# Between attempts to reach the api again; the tail goes on until interrupted.
RETRY = 1.0


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m publisher tail",
        description="Print each event once the store has committed it, one JSON line each, until "
        "interrupted. Reconnects by itself, resuming after the last event printed.",
    )
    add_filters(p)
    p.add_argument("--after", type=int, metavar="POSITION", help="start after this position (default: now)")
    return p


class Refused(Exception):
    """The api answered with an error that retrying will not change (a bad filter, a wrong key)."""


async def tail(
    settings: PublisherSettings, query: list[tuple[str, str]], after: int | None, out: TextIO
) -> None:
    """Print events until SIGINT; raises Refused on a 4xx. SIGINT is the loop's own handler (uvloop wakes
    for it at once), which cancels this task wherever it waits: a stream read, or the pause between tries."""
    task = asyncio.current_task()
    if task is not None:
        asyncio.get_running_loop().add_signal_handler(signal.SIGINT, task.cancel)
    last = after
    down = False  # said once when the api cannot be read, once when it can again
    timeout = httpx.Timeout(10, read=None)  # the api sends a comment every 15 s on an idle stream
    async with httpx.AsyncClient(timeout=timeout, headers=headers_of(settings)) as client:
        while True:
            headers = {} if last is None else {"Last-Event-ID": str(last)}
            try:
                url = f"{settings.api_url.rstrip('/')}/events/stream"
                async with client.stream("GET", url, params=tuple(query), headers=headers) as answer:
                    if 400 <= answer.status_code < 500:
                        await answer.aread()
                        raise Refused(f"{answer.status_code} {answer.text}")
                    answer.raise_for_status()
                    if down:
                        print(f"publisher: tail resumed after position {last}", file=sys.stderr)
                        down = False
                    last = await _print_events(answer, last, out)
            except httpx.HTTPError as exc:
                if not down:
                    where = "from now on" if last is None else f"after position {last}"
                    print(
                        f"publisher: cannot read {settings.api_url} ({type(exc).__name__}: {exc}); retrying "
                        f"every {RETRY:g}s, to resume {where}",
                        file=sys.stderr,
                    )
                    down = True
                await asyncio.sleep(RETRY)


async def _print_events(answer: httpx.Response, last: int | None, out: TextIO) -> int | None:
    fields: dict[str, str] = {}
    async for line in answer.aiter_lines():
        if line:
            if not line.startswith(":"):
                name, _, value = line.partition(":")
                fields[name] = value.removeprefix(" ")
            continue
        if "id" in fields:
            last = int(fields["id"])
        if fields.get("event") == "overflow":
            told = json.loads(fields["data"])
            print(f"publisher: {told['reason']}; resuming after {told['resume_from']}", file=sys.stderr)
        elif "data" in fields:
            out.write(fields["data"] + "\n")
            out.flush()
        fields = {}
    return last


def cli(argv: list[str]) -> int:
    args = parser().parse_args(argv)
    chosen = reading(args)
    if isinstance(chosen, str):
        print(f"publisher: {chosen}", file=sys.stderr)
        return EXIT_USAGE
    query, settings = chosen
    try:
        run_async(tail(settings, query, args.after, sys.stdout))
    except Refused as exc:
        print(f"publisher: the api refused the tail: {exc}", file=sys.stderr)
        return EXIT_REFUSED
    except (KeyboardInterrupt, asyncio.CancelledError):
        pass
    return EXIT_OK
