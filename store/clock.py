"""The store's clock as text: `received_at` and every cut-off compare with it as strings."""

from __future__ import annotations

from datetime import UTC, datetime


def utc_now() -> str:
    # Always with microseconds: `received_at` values are compared as text, and "...:45Z" sorts after
    # "...:45.5Z".
    return datetime.now(UTC).isoformat(timespec="microseconds").replace("+00:00", "Z")


def utc_text(moment: datetime) -> str:
    """A moment as `received_at` is stored (UTC, microseconds, `Z`), so the two compare as text."""
    return moment.astimezone(UTC).isoformat(timespec="microseconds").replace("+00:00", "Z")
