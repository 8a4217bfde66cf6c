"""contract/versions.py: which versions count as verified, and pyproject.toml declaring the same ranges."""

from __future__ import annotations

import tomllib
from pathlib import Path

import pytest

from api.http1 import UVICORN
from broker.hooks import LIBRARIES
from contract import versions
from contract.versions import Verified

REPO = Path(__file__).resolve().parents[2]
HOOKED = (*LIBRARIES, UVICORN)


@pytest.mark.parametrize(
    ("version", "covered"),
    [
        ("7.2.3", False),
        ("7.2.4", True),
        ("7.2.4.post1", True),
        ("7.2.10", True),
        ("7.3", False),
        ("7.3.0", False),
        ("7.3.0rc1", False),
        ("8.0.0", False),
    ],
)
def test_a_range_covers_from_its_low_version_up_to_but_not_including_its_bound(
    version: str, covered: bool
) -> None:
    assert Verified("aiormq", "7.2.4", "7.3").covers(version) is covered


def test_the_assumed_version_replaces_the_installed_one_for_the_library_it_names_only(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv(versions.ASSUME_ENV, "aiormq=9.9.9, Uvicorn = 1.0")
    assert versions.installed("aiormq") == "9.9.9"
    assert versions.installed("uvicorn") == "1.0"
    monkeypatch.delenv(versions.ASSUME_ENV)
    assert versions.installed("aiormq") != "9.9.9"


def test_pyproject_declares_each_hooked_library_with_the_range_its_hooks_were_verified_on() -> None:
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    declared = [
        *project["dependencies"],
        *(dep for deps in project["optional-dependencies"].values() for dep in deps),
    ]
    for verified in HOOKED:
        assert f"{verified.distribution}{verified.specifier}" in declared, verified
    # The store runs SQLite on a thread of its own (store/sqlite/thread.py), with no library's private names.
    assert not [dep for dep in declared if dep.startswith("aiosqlite")]


def test_the_installed_versions_are_the_verified_ones_so_the_canaries_run_on_the_hooks() -> None:
    for verified in HOOKED:
        installed = versions.installed(verified.distribution)
        assert verified.covers(installed), (
            f"{verified.distribution} {installed} is outside {verified.specifier}"
        )
