"""The /events filters as options of the publisher's reading subcommands (tail, export)."""

from __future__ import annotations

import argparse

from pydantic import ValidationError

from contract.cli import describe
from publisher.settings import PublisherSettings


def add_filters(p: argparse.ArgumentParser) -> None:
    p.add_argument("--url", help="api base URL (env API_URL)")
    which = p.add_argument_group("which events (the filters of GET /events)")
    which.add_argument("--topic", help="only this topic")
    which.add_argument("--source", help="only events from this source")
    which.add_argument("--since", help="stored at or after (ISO 8601)")
    which.add_argument("--until", help="stored before (ISO 8601)")
    which.add_argument("--q", help="words, or a quoted phrase, in the payload's text values or the source")
    which.add_argument(
        "--payload",
        action="append",
        default=[],
        metavar="FIELD=VALUE",
        help="a top-level payload field equals VALUE (repeatable)",
    )


def params(args: argparse.Namespace) -> list[tuple[str, str]] | str:
    """The query parameters the options ask for, or what is wrong with them."""
    found = [(name, getattr(args, name)) for name in ("topic", "source", "since", "until", "q")]
    chosen = [(name, value) for name, value in found if value is not None]
    for given in args.payload:
        field, sep, value = given.partition("=")
        if not sep or not field:
            return f"--payload takes FIELD=VALUE, got {given!r}"
        chosen.append((f"payload.{field}", value))
    return chosen


def settings_of(args: argparse.Namespace) -> PublisherSettings | str:
    try:
        return PublisherSettings(**({"api_url": args.url} if args.url else {}))
    except ValidationError as exc:
        return f"invalid configuration:\n{describe(exc, {'api_url': '--url'})}"


def headers_of(settings: PublisherSettings) -> dict[str, str]:
    return {"x-api-key": settings.api_key} if settings.api_key else {}


def reading(args: argparse.Namespace) -> tuple[list[tuple[str, str]], PublisherSettings] | str:
    """What `tail` and `export` read, and from where: the filters' query and the api's settings, or what
    is wrong with the options (a usage error, exit code 2)."""
    query = params(args)
    if isinstance(query, str):
        return query
    settings = settings_of(args)
    if isinstance(settings, str):
        return settings
    return query, settings
