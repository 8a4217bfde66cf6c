"""`python -m publisher dead-letters`: what the consumer rejected; `... replay --file` re-publishes fixes."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable, Iterator
from typing import Any

import httpx
from pydantic import ValidationError

from contract.cli import describe
from publisher.settings import PublisherSettings

# The publisher's codes (publisher/report.py, README): 4 is "the api it needs is unreachable".
EXIT_OK, EXIT_USAGE, EXIT_UNREACHABLE = 0, 2, 4


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m publisher dead-letters",
        description="List the messages the consumer rejected (newest first), as the api's GET /dead-letters "
        "keeps them. To fix and re-publish: `--bodies > fixed.ndjson`, edit the lines, then "
        "`python -m publisher dead-letters replay --file fixed.ndjson` (confirmed like any publish; events "
        "already stored are dropped as duplicates).",
    )
    p.add_argument("--url", help="api base URL (env API_URL)")
    p.add_argument("--limit", type=int, default=100, help="how many, newest first (default 100; 0: all)")
    out = p.add_mutually_exclusive_group()
    out.add_argument("--json", action="store_true", help="one JSON object per dead letter, as the api has it")
    out.add_argument("--bodies", action="store_true", help="only the bodies of the UTF-8 ones, one per line")
    return p


def letters(url: str, api_key: str | None, limit: int) -> Iterator[dict[str, Any]]:
    headers = {"x-api-key": api_key} if api_key else {}
    page = 1000 if limit == 0 else min(limit, 1000)
    given = 0
    with httpx.Client(timeout=10, headers=headers) as client:
        next_url: str | None = f"{url.rstrip('/')}/dead-letters?limit={page}"
        while next_url is not None:
            answer = client.get(next_url)
            answer.raise_for_status()
            for letter in answer.json():
                yield letter
                given += 1
                if given == limit:
                    return
            next_url = answer.links.get("next", {}).get("url")


def line(letter: dict[str, Any]) -> str:
    size = f"{letter['size']} bytes" + (", truncated" if letter["truncated"] else "")
    where = f"#{letter['id']}  {letter['kind']}  {letter['routing_key']}  ({size})"
    return f"{letter['at']}  {where}  {letter['reason']}"


def cli(argv: list[str], publish: Callable[[list[str]], int]) -> int:
    if argv[:1] == ["replay"]:
        return replay(argv[1:], publish)
    args = parser().parse_args(argv)
    if args.limit < 0:
        print("publisher: --limit must be 0 (all) or more", file=sys.stderr)
        return EXIT_USAGE
    try:
        settings = PublisherSettings(**({"api_url": args.url} if args.url else {}))
    except ValidationError as exc:
        print(f"publisher: invalid configuration:\n{describe(exc, {'api_url': '--url'})}", file=sys.stderr)
        return EXIT_USAGE
    listed = 0
    try:
        for letter in letters(settings.api_url, settings.api_key, args.limit):
            listed += 1
            if args.json:
                print(json.dumps(letter))
            elif args.bodies:
                # Binary bodies are not lines one could edit and re-send; their listing shows them.
                if letter["body_encoding"] == "utf-8" and not letter["truncated"]:
                    print(letter["body"].replace("\n", " "))
            else:
                print(line(letter))
    except (httpx.HTTPError, ValueError) as exc:
        print(f"publisher: cannot read dead letters from {settings.api_url}: {exc}", file=sys.stderr)
        return EXIT_UNREACHABLE
    if not listed:
        # On stderr: stdout stays the listing itself (empty), for a script that reads it.
        print(f"publisher: no dead letters at {settings.api_url}", file=sys.stderr)
    return EXIT_OK


def replay(argv: list[str], publish: Callable[[list[str]], int]) -> int:
    """`replay --file PATH [publisher options]`: the normal confirmed publish of corrected events."""
    p = argparse.ArgumentParser(
        prog="python -m publisher dead-letters replay",
        description="Publish corrected events (NDJSON, one event or envelope per line) the normal way: with "
        "confirms, deduplicated by the consumer. Other options are the publisher's (--verify, --json, ...).",
    )
    p.add_argument("--file", required=True, metavar="PATH", help="NDJSON events; '-' for stdin")
    args, rest = p.parse_known_args(argv)
    return publish(["--file", args.file, *rest])
