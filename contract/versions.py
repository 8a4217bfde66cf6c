"""Which versions of a library with private hooks were verified, and the start-up decision that follows.

A fast path that touches names a library's authors did not publish (aiormq's and aio-pika's in
broker/hooks.py, uvicorn's in api/http1.py) is taken only on a version its canary test passed on; on any
other version the deployable runs on the library's public API (the plain path: slower, never different in
what it stores or acknowledges) and says so in one WARNING naming the library and its version. The ranges
here are the ones pyproject.toml declares (tests/test_versions.py holds the two together), so that
`make test-upgrade`, which installs the newest versions the ranges allow, runs the canaries on them.

`EVENTAGG_ASSUME_VERSIONS` (for example `aiormq=7.3.0,uvicorn=1.0.0`) makes the check see other versions
than the installed ones: it is how the plain path is tested end to end in real processes.
"""

from __future__ import annotations

import importlib.metadata
import logging
import os
import re
from dataclasses import dataclass

log = logging.getLogger(__name__)

ASSUME_ENV = "EVENTAGG_ASSUME_VERSIONS"


@dataclass(frozen=True, slots=True)
class Verified:
    """A library's versions its hooks were verified on: from `low` (inclusive) to `below` (exclusive)."""

    distribution: str
    low: str
    below: str

    @property
    def specifier(self) -> str:
        """As pyproject.toml writes the range."""
        return f">={self.low},<{self.below}"

    def covers(self, version: str) -> bool:
        return release(self.low) <= release(version) < release(self.below)


def release(version: str) -> tuple[int, ...]:
    """The release numbers of a version (7.2.4 of 7.2.4.post1); a pre-release of 7.3 counts as 7.3."""
    match = re.match(r"\d+(?:\.\d+)*", version)
    if match is None:
        raise ValueError(f"not a version: {version!r}")
    numbers = [int(part) for part in match.group().split(".")]
    while len(numbers) > 1 and numbers[-1] == 0:
        numbers.pop()
    return tuple(numbers)


def installed(distribution: str) -> str:
    """The version in use: the installed one, unless EVENTAGG_ASSUME_VERSIONS names another."""
    for item in os.environ.get(ASSUME_ENV, "").split(","):
        name, sep, version = item.partition("=")
        if sep and name.strip().lower() == distribution.lower():
            return version.strip()
    return importlib.metadata.version(distribution)


_decided: dict[str, bool] = {}


def hooks_allowed(verified: Verified, hooks: str) -> bool:
    """True when the version in use is one `verified` covers; decided once per process and library, and
    the one WARNING is logged then. `hooks` names what is switched off, for that line."""
    key = verified.distribution
    allowed = _decided.get(key)
    if allowed is None:
        version = installed(key)
        allowed = _decided[key] = verified.covers(version)
        if not allowed:
            log.warning(
                "%s %s is not a version the fast paths were verified on (%s): running on its public API "
                "without %s",
                key,
                version,
                verified.specifier,
                hooks,
            )
    return allowed


def forget() -> None:
    """Decide again at the next check (tests that change EVENTAGG_ASSUME_VERSIONS in-process)."""
    _decided.clear()
