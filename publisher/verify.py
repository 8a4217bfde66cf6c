"""`--verify`: wait until the api shows that what was published took effect, and say exactly what did not."""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import quote

import httpx

from contract.event import AnyEvent
from contract.schema import COUNTERS

# Tries per event lookup before --verify gives up on the api.
LOOKUP_ATTEMPTS = 3


class VerifyError(Exception):
    pass


# How long to keep trying an api that does not answer at all before saying so: a few seconds, not the
# whole --verify-timeout (that one is for the consumer to catch up with an api that answers).
REACH_ATTEMPTS = 3
REACH_TIMEOUT = 2.0


async def api_problem(api_url: str) -> str | None:
    """None when the api answers (any HTTP status), else why it cannot be reached."""
    problem = None
    async with httpx.AsyncClient(timeout=REACH_TIMEOUT) as client:
        for attempt in range(REACH_ATTEMPTS):
            try:
                await client.get(f"{api_url.rstrip('/')}/health")
                return None
            except httpx.TransportError as exc:
                problem = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
            if attempt + 1 < REACH_ATTEMPTS:
                await asyncio.sleep(0.5)
    return problem


@dataclass
class Outcome:
    ok: bool
    summary: str
    deltas: dict[str, int] = field(default_factory=dict)
    missing: list[tuple[str, str]] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return {
            "ok": self.ok,
            "summary": self.summary,
            "deltas": self.deltas,
            "missing": [list(key) for key in self.missing[:20]],
            "missing_count": len(self.missing),
        }


class Verifier:
    def __init__(
        self, api_url: str, timeout: float, api_key: str | None = None, sample: int | None = 1000
    ) -> None:
        self._url = api_url.rstrip("/")
        self._sample = sample
        self._timeout = timeout
        self._headers = {"x-api-key": api_key} if api_key else {}
        self._before: dict[str, int] = {}

    async def _stats(self, client: httpx.AsyncClient) -> dict[str, int]:
        response = await client.get(f"{self._url}/stats", headers=self._headers)
        response.raise_for_status()
        data = response.json()
        return {name: int(data[name]) for name in COUNTERS}

    async def baseline(self) -> None:
        async with httpx.AsyncClient(timeout=5) as client:
            deadline = time.monotonic() + self._timeout
            while True:
                try:
                    self._before = await self._stats(client)
                    return
                except httpx.HTTPError as exc:
                    if time.monotonic() > deadline:
                        raise VerifyError(f"cannot read {self._url}/stats for --verify: {exc}") from exc
                await asyncio.sleep(0.5)

    async def check(
        self, sent: Sequence[AnyEvent], sent_count: int, progress: Callable[[str], None] | None = None
    ) -> Outcome:
        """Wait until the counters moved by at least what was sent, then look up the unique keys."""
        keys = list(dict.fromkeys(item.key() for item in sent))
        deadline = time.monotonic() + self._timeout
        async with httpx.AsyncClient(timeout=5, limits=httpx.Limits(max_connections=16)) as client:
            deltas: dict[str, int] = {}
            while True:
                try:
                    after = await self._stats(client)
                    deltas = {name: after[name] - self._before.get(name, 0) for name in COUNTERS}
                except httpx.HTTPError:
                    deltas = {}
                # `received` counts every event of every consumed message, so once it moved by what we sent
                # the consumer has (at least) taken our messages; others may publish at the same time.
                if deltas and deltas["received"] >= sent_count:
                    break
                if progress is not None:
                    progress(f"consumer has taken {deltas.get('received', '?')} of {sent_count} events")
                if time.monotonic() > deadline:
                    got = deltas.get("received", "unknown")
                    return Outcome(
                        False,
                        f"FAILED: received moved by {got}, expected {sent_count} within {self._timeout:g}s",
                        deltas,
                    )
                await asyncio.sleep(0.2)
            checked = keys
            if self._sample is not None and len(keys) > self._sample:
                # One lookup per key costs a request each; a uniform sample bounds the time on big loads and
                # still catches any systematic loss. --verify-all checks every key.
                checked = random.sample(keys, self._sample)
            if progress is not None:
                progress(f"looking up {len(checked)} stored events")
            try:
                missing = await self._missing(client, checked)
            except httpx.HTTPError as exc:
                return Outcome(False, f"FAILED: looking up the events at {self._url}: {exc!r}", deltas)
        what = (
            f"all {len(keys)}" if len(checked) == len(keys) else f"a sample of {len(checked)} of {len(keys)}"
        )
        if missing:
            return Outcome(
                False, f"FAILED: {len(missing)} of {what} unique events not stored", deltas, missing
            )
        return Outcome(
            True,
            f"ok: {what} unique events stored; received +{deltas['received']}, "
            f"unique +{deltas['unique_processed']}, duplicates +{deltas['duplicate_dropped']}",
            deltas,
        )

    async def _missing(self, client: httpx.AsyncClient, keys: list[tuple[str, str]]) -> list[tuple[str, str]]:
        slots = asyncio.Semaphore(16)

        async def stored(key: tuple[str, str]) -> bool:
            async with slots:
                url = f"{self._url}/events/{quote(key[0], safe='')}/{quote(key[1], safe='/')}"
                for attempt in range(1, LOOKUP_ATTEMPTS + 1):
                    try:
                        response = await client.get(url, headers=self._headers)
                        break
                    except httpx.TransportError:
                        # A kept-alive connection the server closed just as it was reused (uvicorn closes
                        # idle ones after 5 s) fails the request with ReadError; a lookup is safe to repeat.
                        # Seen once in 16,000 --verify-all lookups on a loaded machine (make test-docker).
                        if attempt == LOOKUP_ATTEMPTS:
                            raise
                        await asyncio.sleep(0.2 * attempt)
                if response.status_code not in (200, 404):
                    response.raise_for_status()
                return response.status_code == 200

        found = await asyncio.gather(*(stored(key) for key in keys))
        return [key for key, ok in zip(keys, found, strict=True) if not ok]
