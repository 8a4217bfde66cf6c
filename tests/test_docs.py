"""The documentation (README.md, bench/README.md, docs/*.md) names only what the repository holds: every
relative link and its anchor, every path under one of the repository's top-level directories, every
`python -m` module of the repository's packages, and every file named alone (`test_compat.py`,
`Dockerfile.api`)."""

from __future__ import annotations

import os
import re
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.harness.deploy import REPO

DOCS = sorted([REPO / "README.md", REPO / "bench" / "README.md", *(REPO / "docs").glob("*.md")])
TOP_DIRS = sorted(p.name for p in REPO.iterdir() if p.is_dir() and not p.name.startswith((".", "__")))
# Paths a reader creates or finds outside the repository: the venv, the store's default directory.
NOT_IN_REPO = {".venv", "data"}

LINK = re.compile(r"\[[^\]]*\]\(([^)\s]+)\)")
# A path starts a token: not inside a URL (`http://host/api/...`), an absolute path or another word.
PATH = re.compile(
    r"(?<![\w./:~@-])(\.ci/[\w./…*-]*|(?:" + "|".join(map(re.escape, TOP_DIRS)) + r")/[\w./…*-]*)"
)
MODULE = re.compile(r"python -m ([\w.]+)")
# A file named without its directory (`test_compat.py`, `DESIGN.md`) must be somewhere in the repository.
# Not .json or .ndjson: those name files a reader writes (`--output results.json`).
FILE_NAME = re.compile(
    r"(?<![\w./-])(Dockerfile(?:\.\w+)?|\w[\w.-]*\.(?:py|md|yaml|yml|conf|toml|lock|sh))(?![\w/-])"
)


def slug(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, punctuation dropped, spaces to hyphens."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def anchors(doc: Path) -> set[str]:
    text = re.sub(r"^```.*?^```", "", doc.read_text(), flags=re.S | re.M)
    return {slug(m) for m in re.findall(r"^#+ (.+)$", text, flags=re.M)}


def exists(path: str) -> bool:
    # `bench/results/…` and `bench-<uuid>.*` name a family: the directory before the wildcard must exist.
    path = re.split(r"[…*<]", path.replace("...", "…"))[0].rstrip(".,;:")
    if not path.rstrip("/") or path.split("/")[0] in NOT_IN_REPO:
        return True
    return (REPO / path).is_dir() if path.endswith("/") else (REPO / path).exists()


def module_exists(name: str) -> bool:
    if name.split(".")[0] not in TOP_DIRS:
        return True  # pip, uv, pytest: not the repository's to hold
    base = REPO.joinpath(*name.split("."))
    return base.with_suffix(".py").is_file() or (base / "__init__.py").is_file()


def walk_repo() -> Iterator[tuple[str, list[str], list[str]]]:
    """The repository's tree without the venv, git, caches and other dot-directories."""
    for top, dirs, files in os.walk(REPO):
        dirs[:] = [d for d in dirs if not d.startswith(".") and d != "__pycache__"]
        yield top, dirs, files


def broken_references(doc: Path) -> list[str]:
    text = doc.read_text()
    names = {name for _, _, files in walk_repo() for name in files}
    broken = []
    for target in LINK.findall(text):
        if re.match(r"[a-z]+:", target):
            continue  # http://, https://, mailto:
        file, _, anchor = target.partition("#")
        linked = (doc.parent / file).resolve() if file else doc
        if not linked.exists():
            broken.append(f"link {target}: no {linked.relative_to(REPO)}")
        elif anchor and linked.suffix == ".md" and anchor not in anchors(linked):
            broken.append(f"link {target}: no heading #{anchor} in {linked.relative_to(REPO)}")
    broken += [f"path {p}" for p in PATH.findall(text) if not exists(p)]
    broken += [f"module {m}" for m in MODULE.findall(text) if not module_exists(m.rstrip("."))]
    broken += [f"file {n}" for n in FILE_NAME.findall(text) if n not in names]
    return broken


@pytest.mark.parametrize("doc", DOCS, ids=lambda p: str(p.relative_to(REPO)))
def test_documentation_names_only_files_links_and_modules_the_repository_holds(doc: Path) -> None:
    assert doc.exists(), f"{doc.relative_to(REPO)} is listed as documentation but missing"
    assert broken_references(doc) == []


def test_every_page_besides_the_readme_is_linked_from_another_page() -> None:
    linked = {
        (doc.parent / target.partition("#")[0]).resolve()
        for doc in DOCS
        for target in LINK.findall(doc.read_text())
        if not re.match(r"[a-z]+:", target) and target.partition("#")[0]
    }
    pages = [doc for doc in DOCS if doc != REPO / "README.md"]
    assert [str(doc.relative_to(REPO)) for doc in pages if doc.resolve() not in linked] == []


def test_the_docker_tests_run_the_commands_the_readme_gives() -> None:
    """tests/test_docker.py types these commands as they are; the README must still give them verbatim."""
    from tests.test_docker import COMPOSE_FILE, KILL_CONSUMER

    readme = (REPO / "README.md").read_text()
    assert f"docker compose -f {COMPOSE_FILE} up --build" in readme
    assert f'exec consumer python -c "{KILL_CONSUMER}"' in readme
    assert "python -m publisher --count 20000 --verify-all" in readme
    assert f"docker compose -f {COMPOSE_FILE} down -v" in readme
