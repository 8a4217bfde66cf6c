"""The packages import one way: contract <- broker <- consumer, api, publisher; contract <- store <- consumer,
api. Read from the code's own import statements (tests/test_deploy.py's project_imports)."""

from __future__ import annotations

import pytest

from tests.test_deploy import project_imports

ALLOWED = {
    "contract": set(),
    "broker": {"contract"},
    "store": {"contract"},
    "consumer": {"contract", "broker", "store"},
    "api": {"contract", "broker", "store"},
    "publisher": {"contract", "broker"},
}


@pytest.mark.parametrize("package", sorted(ALLOWED))
def test_a_package_imports_only_the_packages_below_it(package: str) -> None:
    assert project_imports(package) <= ALLOWED[package]


def test_the_broker_package_is_what_the_deployables_reach_the_broker_through() -> None:
    for deployable in ("consumer", "api", "publisher"):
        assert "broker" in project_imports(deployable), deployable
