"""The Debian mirror this machine's apt uses, read from its sources as apt reads them, for base-image.sh.

apt reads /etc/apt/sources.list, then every file in /etc/apt/sources.list.d/ whose name ends in `.list`
(one-line format) or `.sources` (deb822 stanzas), in name order; other names are ignored, and a stanza with
`Enabled: no` is skipped. The first `deb` source of a main suite is the archive mirror; the first of a
`-security` suite is the security mirror. `DEBIAN_MIRROR` / `DEBIAN_SECURITY_MIRROR` override them.

    python3 tests/harness/apt_mirror.py archive|security     prints the URI, or exits 1 saying why
"""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

APT = Path("/etc/apt")
OVERRIDES = {"archive": "DEBIAN_MIRROR", "security": "DEBIAN_SECURITY_MIRROR"}


@dataclass(frozen=True)
class Source:
    uri: str
    suites: tuple[str, ...]


def source_files(apt: Path = APT) -> list[Path]:
    """sources.list, then sources.list.d/*.list and *.sources, in name order, as apt reads them."""
    found = [apt / "sources.list"] if (apt / "sources.list").is_file() else []
    parts = apt / "sources.list.d"
    if parts.is_dir():
        found += sorted(p for p in parts.iterdir() if p.suffix in (".list", ".sources") and p.is_file())
    return found


def one_line(text: str) -> Iterator[Source]:
    """`deb [options] URI SUITE [COMPONENT...]` lines; `deb-src` and comments are not package sources."""
    for raw in text.splitlines():
        words = raw.split("#", 1)[0].split()
        if not words or words[0] != "deb":
            continue
        words = words[1:]
        if words and words[0].startswith("["):
            while words and not words[0].endswith("]"):
                words = words[1:]
            words = words[1:]
        if len(words) >= 2:
            yield Source(words[0], (words[1],))


def deb822(text: str) -> Iterator[Source]:
    """Stanzas of `Field: value` separated by blank lines; a value may continue on indented lines."""
    for stanza in _stanzas(text):
        if stanza.get("enabled", "yes").lower() == "no" or "deb" not in stanza.get("types", "").split():
            continue
        suites = tuple(stanza.get("suites", "").split())
        for uri in stanza.get("uris", "").split():
            yield Source(uri, suites)


def _stanzas(text: str) -> Iterator[dict[str, str]]:
    fields: dict[str, str] = {}
    last: str | None = None
    for raw in [*text.splitlines(), ""]:
        if raw.startswith("#"):
            continue
        if not raw.strip():
            if fields:
                yield fields
            fields, last = {}, None
        elif raw[0] in " \t" and last is not None:
            fields[last] += " " + raw.strip()
        elif ":" in raw:
            key, value = raw.split(":", 1)
            last = key.strip().lower()
            fields[last] = value.strip()
    return


def sources(apt: Path = APT) -> list[Source]:
    found: list[Source] = []
    for path in source_files(apt):
        text = path.read_text(errors="replace")
        found += deb822(text) if path.suffix == ".sources" else one_line(text)
    return [s for s in found if s.uri.startswith(("http://", "https://"))]


def mirror(kind: str, apt: Path = APT, environ: dict[str, str] | None = None) -> str | None:
    """The archive (or security) mirror's URI, without a trailing slash; None when apt names none."""
    override = (os.environ if environ is None else environ).get(OVERRIDES[kind])
    if override:
        return override.rstrip("/")
    for source in sources(apt):
        security = [s for s in source.suites if s.endswith("-security")]
        if (kind == "security") == bool(security) and (kind == "security" or source.suites):
            return source.uri.rstrip("/")
    return None


def main(argv: list[str]) -> int:
    if len(argv) != 1 or argv[0] not in OVERRIDES:
        print("usage: apt_mirror.py archive|security", file=sys.stderr)
        return 2
    found = mirror(argv[0])
    if found is None:
        print(
            f"apt_mirror.py: no http(s) Debian {argv[0]} source in {APT}/sources.list or "
            f"{APT}/sources.list.d/*.list|*.sources; set {OVERRIDES[argv[0]]}",
            file=sys.stderr,
        )
        return 1
    print(found)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
