"""`python -m publisher export`: stored events to an NDJSON file (GET /events/export), and `replay`, which
publishes such a file again through the confirming publisher, to rebuild another deployment (or this one
after a reset) from it."""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable
from pathlib import Path

import httpx

from contract.cli import run as run_async
from publisher.filters import add_filters, headers_of, reading
from publisher.progress import Counting
from publisher.settings import PublisherSettings

EXIT_OK, EXIT_USAGE, EXIT_UNREACHABLE = 0, 2, 4


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m publisher export",
        description="Write the stored events the filters select to FILE, one JSON line each, oldest first, "
        "as GET /events gives them. `python -m publisher replay FILE` publishes them again.",
    )
    p.add_argument("--out", required=True, type=Path, metavar="FILE", help="where to write ('-': stdout)")
    add_filters(p)
    p.add_argument("--quiet", action="store_true", help="no progress line")
    return p


async def export(
    settings: PublisherSettings, query: list[tuple[str, str]], out: Path, quiet: bool
) -> tuple[int, float]:
    """Events written, and seconds taken. The file is written under a temporary name and renamed at the
    end, so FILE is either the whole export or untouched."""
    started = time.monotonic()
    async with httpx.AsyncClient(timeout=httpx.Timeout(30, read=300), headers=headers_of(settings)) as client:
        total = await _total(client, settings.api_url, query)
        progress = Counting("exported", total, enabled=sys.stderr.isatty() and not quiet)
        partial = out.with_name(out.name + ".partial") if str(out) != "-" else None
        url = f"{settings.api_url.rstrip('/')}/events/export"
        try:
            with partial.open("wb") if partial is not None else sys.stdout.buffer as sink:
                async with client.stream("GET", url, params=tuple(query)) as answer:
                    if answer.status_code != 200:
                        await answer.aread()
                        raise httpx.HTTPStatusError(
                            f"{answer.status_code} {answer.text}", request=answer.request, response=answer
                        )
                    progress.start()
                    async for chunk in answer.aiter_bytes():
                        sink.write(chunk)
                        progress.add(chunk.count(b"\n"))
            if partial is not None:
                partial.replace(out)
        finally:
            progress.close()
            if partial is not None:
                partial.unlink(missing_ok=True)
    return progress.done, time.monotonic() - started


async def _total(client: httpx.AsyncClient, api_url: str, query: list[tuple[str, str]]) -> int | None:
    """How many events the export will hold, when /stats can tell (no filter, or only a topic)."""
    names = {name for name, _ in query}
    if not names <= {"topic"}:
        return None
    try:
        answer = await client.get(f"{api_url.rstrip('/')}/stats")
        stats = answer.raise_for_status().json()
    except (httpx.HTTPError, ValueError):
        return None
    if not names:
        return int(stats.get("stored_events", stats["unique_processed"]))
    return int(stats["topic_counts"].get(dict(query)["topic"], 0))


def cli(argv: list[str]) -> int:
    args = parser().parse_args(argv)
    chosen = reading(args)
    if isinstance(chosen, str):
        print(f"publisher: {chosen}", file=sys.stderr)
        return EXIT_USAGE
    query, settings = chosen
    try:
        count, seconds = run_async(export(settings, query, args.out, args.quiet))
    except httpx.HTTPError as exc:
        print(f"publisher: export from {settings.api_url} failed: {exc}", file=sys.stderr)
        return EXIT_UNREACHABLE
    if not args.quiet:
        print(f"exported {count} events to {args.out} in {seconds:.1f}s", file=sys.stderr)
    return EXIT_OK


def replay(argv: list[str], publish: Callable[[list[str]], int]) -> int:
    """`replay FILE [publisher options]`: the normal confirmed publish of an export's lines."""
    p = argparse.ArgumentParser(
        prog="python -m publisher replay",
        description="Publish an export (python -m publisher export) again, with confirms, like --file: to "
        "rebuild another deployment, or this one after a reset. Events already stored are dropped as "
        "duplicates (exactly-once), so replaying twice, or into a store that holds some of them, is safe. "
        "Other options are the publisher's (--verify, --json, --envelope-size, ...).",
    )
    p.add_argument("file", metavar="FILE", help="an export: NDJSON, one event per line")
    args, rest = p.parse_known_args(argv)
    if not Path(args.file).is_file():
        print(f"publisher: no such file: {args.file}", file=sys.stderr)
        return EXIT_USAGE
    # In the export's order: on one consumer the rebuilt store lists them as the exported one did.
    return publish(["--file", args.file, "--keep-order", *rest])
