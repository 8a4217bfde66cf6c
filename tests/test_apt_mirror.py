"""Tests of tests/harness/apt_mirror.py: base-image.sh's Debian mirror comes from apt's own sources."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from tests.harness.apt_mirror import mirror, source_files

DEB822 = """\
Types: deb-src
URIs: http://sources-only.test/debian
Suites: bookworm
Components: main

Types: deb
# a comment inside a stanza
URIs: http://disabled.test/debian
Suites: bookworm
Enabled: no

Types: deb
URIs: http://archive.test/debian
Suites: bookworm
  bookworm-updates
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg

Types: deb
URIs: http://security.test/debian-security/
Suites: bookworm-security
Components: main
"""


def apt_dir(tmp_path: Path, files: dict[str, str]) -> Path:
    (tmp_path / "sources.list.d").mkdir()
    for name, text in files.items():
        (tmp_path / name).write_text(text)
    return tmp_path


def test_deb822_sources_give_the_first_enabled_deb_source_for_each_kind(tmp_path: Path) -> None:
    apt = apt_dir(tmp_path, {"sources.list.d/debian.sources": DEB822})
    assert mirror("archive", apt, {}) == "http://archive.test/debian"
    assert mirror("security", apt, {}) == "http://security.test/debian-security"


def test_sources_list_comes_first_and_one_line_options_and_comments_are_understood(tmp_path: Path) -> None:
    apt = apt_dir(
        tmp_path,
        {
            "sources.list": "# deb http://commented.test/debian bookworm main\n"
            "deb-src http://src.test/debian bookworm main\n"
            "deb [arch=amd64 signed-by=/k.gpg] http://first.test/debian bookworm main # trailing\n"
            "deb http://first.test/debian-security bookworm-security main\n",
            "sources.list.d/debian.sources": DEB822,
        },
    )
    assert mirror("archive", apt, {}) == "http://first.test/debian"
    assert mirror("security", apt, {}) == "http://first.test/debian-security"


def test_files_apt_ignores_are_ignored_and_the_rest_are_read_in_name_order(tmp_path: Path) -> None:
    apt = apt_dir(
        tmp_path,
        {
            "sources.list.d/a.list.disabled-by-hand": "deb http://ignored.test/debian bookworm main\n",
            "sources.list.d/b.save": "deb http://ignored.test/debian bookworm main\n",
            "sources.list.d/c.sources": DEB822,
            "sources.list.d/0-local.list": "deb file:/srv/repo ./\ndeb http://zero.test/debian trixie main\n",
        },
    )
    assert [p.name for p in source_files(apt)] == ["0-local.list", "c.sources"]
    assert mirror("archive", apt, {}) == "http://zero.test/debian"  # file: is no mirror for debootstrap
    assert mirror("security", apt, {}) == "http://security.test/debian-security"


def test_the_environment_overrides_and_no_source_is_an_error_naming_the_variable(tmp_path: Path) -> None:
    apt = apt_dir(tmp_path, {})
    assert mirror("archive", apt, {}) is None
    assert mirror("archive", apt, {"DEBIAN_MIRROR": "http://override.test/debian/"}) == (
        "http://override.test/debian"
    )
    script = Path(__file__).parent / "harness" / "apt_mirror.py"
    run = subprocess.run([sys.executable, str(script), "nonsense"], capture_output=True, text=True)
    assert run.returncode == 2 and "usage" in run.stderr


def test_this_machine_has_an_archive_mirror_or_the_script_says_which_variable_to_set() -> None:
    script = Path(__file__).parent / "harness" / "apt_mirror.py"
    run = subprocess.run([sys.executable, str(script), "archive"], capture_output=True, text=True)
    if run.returncode == 0:
        assert run.stdout.strip().startswith(("http://", "https://")) and run.stdout.count("\n") == 1
    else:
        assert (run.returncode, "set DEBIAN_MIRROR" in run.stderr) == (1, True), run
