# The single entry point: everyone (README, CI, developers) calls these targets.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: system install lint test test-fast test-upgrade test-docker test-soak crash soak bench up down lock clean

install: $(STAMP)

# The services and system packages the tests use (RabbitMQ, PostgreSQL, chromium, docker-compose): installed
# with apt when missing and run as root, and PostgreSQL started (.ci/system).
system:
	.ci/system

$(STAMP): requirements.lock pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -r requirements.lock
	touch $(STAMP)

# Regenerate the lock file after changing dependencies in pyproject.toml.
lock:
	$(PYTHON) -m pip install --quiet uv
	$(PYTHON) -m uv pip compile pyproject.toml --all-extras --python-version 3.11 -o requirements.lock

lint: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy

test: system install
	$(BIN)/python -m pytest $(PYTEST_ARGS)

# Everything but the crash, cluster, soak and docker tests, for a quick loop while editing.
test-fast: install
	$(BIN)/python -m pytest -m "not crash and not cluster and not soak and not docker" $(PYTEST_ARGS)

# The libraries with private hooks (broker/hooks.py, api/http1.py, store/) at the newest versions that
# pyproject.toml's ranges allow, not the lock's: a fresh virtual environment from pyproject alone, then the
# canaries (every hook still active) and the end-to-end pipeline tests, on the fast and the plain path.
UPGRADE_VENV := .venv-upgrade
UPGRADE_TESTS := tests/contract/test_versions.py tests/broker/test_hooks.py tests/broker/test_wire.py \
	tests/api/test_http1.py tests/test_pipeline.py tests/test_plain_path.py
test-upgrade: system
	rm -rf $(UPGRADE_VENV)
	$(PYTHON) -m venv $(UPGRADE_VENV)
	$(PYTHON) -c 'import tomllib; p = tomllib.load(open("pyproject.toml", "rb"))["project"]; \
		print("\n".join([*p["dependencies"], *(d for e in p["optional-dependencies"].values() for d in e)]))' \
		> $(UPGRADE_VENV)/requirements.txt
	$(UPGRADE_VENV)/bin/python -m pip install --quiet --disable-pip-version-check --upgrade \
		-r $(UPGRADE_VENV)/requirements.txt
	$(UPGRADE_VENV)/bin/python -m pip list --disable-pip-version-check \
		| grep -iE '^(aio-pika|aiormq|pamqp|uvicorn) '
	$(UPGRADE_VENV)/bin/python -m pytest $(UPGRADE_TESTS) $(PYTEST_ARGS)

# The README's Docker commands on real engines (tests/test_docker.py, README "With Docker"): Compose v2 on
# Engine 26 and docker-compose v1 on the host's engine, which it starts if installed but not running.
# Stand-in base images where no registry answers; caches in /var/cache/eventagg-docker (EVENTAGG_DOCKER_CACHE).
test-docker: install
	$(BIN)/python -m pytest -m docker -s -p no:cacheprovider $(PYTEST_ARGS) tests/test_docker.py

# The crash scenarios alone, bigger than in `make test`, ending with the crash checker's table.
crash: install
	CRASH_SCALE=$${CRASH_SCALE:-5} $(BIN)/python -m pytest -m crash --timeout=3600 $(PYTEST_ARGS)

# A long run of every traffic and fault at once, checked exactly at the end, resources sampled and plotted
# (tests/soak/). SOAK_MINUTES (10), SOAK_BACKEND (sqlite|postgres), SOAK_SEED (replays the fault schedule),
# SOAK_OUT (where the report and the plots go; printed).
# The suite's bounded soak alone: both backends' 3-minute soaks at once (tests/test_soak.py).
test-soak: install
	$(BIN)/python -m pytest -m soak -s $(PYTEST_ARGS) tests/test_soak.py

soak: install
	SOAK_MINUTES=$${SOAK_MINUTES:-10} SOAK_BACKEND=$${SOAK_BACKEND:-sqlite} $(BIN)/python -m tests.soak

bench: install
	$(BIN)/python -m bench $(BENCH_ARGS)

# The whole system in Docker (README, "Run it"); `make down` keeps the store volume, `down -v` deletes it.
# COMPOSE="docker-compose" for the older standalone implementation.
COMPOSE ?= docker compose
COMPOSE_FILE := compose/compose.yaml
.PHONY: logs

up:
	$(COMPOSE) -f $(COMPOSE_FILE) up --build

down:
	$(COMPOSE) -f $(COMPOSE_FILE) down

logs:
	$(COMPOSE) -f $(COMPOSE_FILE) logs --follow

clean:
	rm -rf $(VENV) .mypy_cache .pytest_cache .ruff_cache
