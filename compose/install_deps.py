"""Installs one deployable's dependencies, every version pinned by requirements.lock (run by the Dockerfiles).

Usage: `python install_deps.py EXTRA`, with pyproject.toml and requirements.lock beside this file. It installs
pyproject's core dependencies plus that extra into the running interpreter's environment, with the lock as
pip constraints. The lock is compiled from all extras, so it pins these and everything they pull in, while
the dev tools it also lists (pytest, mypy, ruff, testcontainers) are never installed: nothing asks for them.
A constraint only pins what is asked for, so afterwards every installed distribution is checked against the
lock: one it does not pin means the lock is stale, and the build fails rather than ship an unpinned version.
"""

from __future__ import annotations

import re
import subprocess
import sys
import tempfile
import tomllib
from importlib import metadata
from pathlib import Path

HERE = Path(__file__).resolve().parent
# Part of the interpreter's own environment, not of the product.
BOOTSTRAP = {"pip", "setuptools", "wheel"}


def normalize(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def requirements(pyproject: Path, extra: str) -> list[str]:
    project = tomllib.loads(pyproject.read_text())["project"]
    extras = project.get("optional-dependencies", {})
    if extra not in extras:
        raise SystemExit(f"install_deps: no extra {extra!r} in {pyproject}; have {', '.join(sorted(extras))}")
    return [*project["dependencies"], *extras[extra]]


def pins(lock: Path) -> set[str]:
    found = re.findall(r"^([A-Za-z0-9][A-Za-z0-9._-]*)==(\S+)", lock.read_text(), re.MULTILINE)
    return {f"{normalize(name)}=={version}" for name, version in found}


def unpinned(lock: Path) -> list[str]:
    locked = pins(lock)
    installed = {f"{normalize(d.metadata['Name'])}=={d.version}" for d in metadata.distributions()}
    return sorted(p for p in installed - locked if p.split("==")[0] not in BOOTSTRAP)


def main(extra: str) -> int:
    pyproject, lock = HERE / "pyproject.toml", HERE / "requirements.lock"
    wanted = requirements(pyproject, extra)
    with tempfile.NamedTemporaryFile("w", suffix=".txt") as reqs:
        reqs.write("\n".join(wanted) + "\n")
        reqs.flush()
        pip = [sys.executable, "-m", "pip", "install", "--no-cache-dir", "-c", str(lock), "-r", reqs.name]
        subprocess.run(pip, check=True)
    stray = unpinned(lock)
    if stray:
        print(
            f"install_deps: not pinned by {lock.name} (re-run `make lock`): {' '.join(stray)}",
            file=sys.stderr,
        )
        return 1
    print(f"install_deps: extra={extra} requirements={' '.join(wanted)}")
    return 0


if __name__ == "__main__":
    if len(sys.argv) != 2:
        raise SystemExit("usage: python install_deps.py EXTRA")
    sys.exit(main(sys.argv[1]))
