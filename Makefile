# The two commands a newcomer needs: `make run` and `make test` (see README.md).
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
VENDOR := app/static/vendor
ISLANDS := app/static/build
TEST_DB_URL ?= postgresql://nullops_test:nullops_test@127.0.0.1:5432/nullops_test

.PHONY: check-admin-password run demo demo-setup test chaos chaos-run molecule venv assets host-run host-test images lint pytest clean

## run: NullOps on http://127.0.0.1:8080 (embedded SQLite under var/, first admin created)
run: check-admin-password host-run venv assets
	NULLOPS_DEV=1 $(BIN)/nullops db upgrade
	NULLOPS_DEV=1 $(BIN)/nullops users create-admin --if-missing
	@$(MAKE) --no-print-directory demo-setup OPTIONAL=--optional || echo "[demo] not seeded (see above); NullOps starts without it"
	NULLOPS_DEV=1 exec $(BIN)/nullops dev

# A NULLOPS_ADMIN_PASSWORD the rule refuses stops `make run` at once, not after installing.
check-admin-password:
	@$(PYTHON) scripts/check_admin_password.py

## demo: what run does, then deploys the demo and prints the URL that shows its seeded rows
demo: check-admin-password host-run venv assets
	NULLOPS_DEV=1 $(BIN)/nullops db upgrade
	NULLOPS_DEV=1 $(BIN)/nullops users create-admin --if-missing
	@$(MAKE) --no-print-directory demo-setup
	NULLOPS_DEV=1 exec $(BIN)/nullops demo up

# The demo's images in the local registry (127.0.0.1:5000), then its project seeded. With
# OPTIONAL=--optional (make run) a missing Docker engine or registry skips it with a message.
demo-setup:
	@bash scripts/demo-images.sh $(OPTIONAL); rc=$$?; \
	if [ $$rc -eq 3 ]; then exit 0; elif [ $$rc -ne 0 ]; then exit $$rc; fi; \
	NULLOPS_DEV=1 $(BIN)/nullops demo seed --registry-url "http://$${DEMO_REGISTRY:-127.0.0.1:5000}"

## test: installs and starts Docker and PostgreSQL when missing, builds test images, runs pytest
test: host-run host-test venv assets images lint pytest

## chaos: the chaos suite with full counts (about half an hour), then docs/reliability.md from its figures
chaos: host-run host-test venv images chaos-run

CHAOS_RESULTS ?= var/chaos/results.json
# The report is written even when a scenario fails (its figures say what failed); make still fails.
# It restarts the Docker engine too (NULLOPS_CHAOS_DOCKER_RESTART=1): run it when nothing else
# uses the engine; `make test` leaves that scenario out.
chaos-run:
	rm -f $(CHAOS_RESULTS)
	NULLOPS_CHAOS_FULL=1 NULLOPS_CHAOS_DOCKER_RESTART=1 NULLOPS_CHAOS_RESULTS=$(CHAOS_RESULTS) \
	NULLOPS_TEST_DATABASE_URL=$(TEST_DB_URL) \
	NULLOPS_TEST_DOCKER=1 $(BIN)/pytest -p no:cacheprovider -s -rsx tests/chaos $(PYTEST_ARGS); rc=$$?; \
	$(BIN)/python scripts/chaos_report.py $(CHAOS_RESULTS) docs/reliability.md || rc=1; exit $$rc

## molecule: every Molecule scenario of the Ansible roles in roles/ (make test runs only the fast ones), and the slow provisioning-over-SSH cases
molecule: host-test venv images
	NULLOPS_MOLECULE_FULL=1 NULLOPS_TEST_DATABASE_URL=$(TEST_DB_URL) NULLOPS_TEST_DOCKER=1 $(BIN)/pytest -p no:cacheprovider -rs \
		tests/roles tests/controller/test_provisioning_over_ssh.py $(PYTEST_ARGS)

host-run:
	@bash scripts/run-host.sh

host-test:
	@bash scripts/test-host.sh

images:
	@bash scripts/build-test-images.sh

venv: $(STAMP)

$(STAMP): requirements.txt requirements-dev.txt pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -r requirements-dev.txt
	$(BIN)/pip install --quiet --no-deps -e .
	touch $(STAMP)

assets: $(VENDOR)/.stamp $(ISLANDS)/.stamp

$(VENDOR)/.stamp: package.json package-lock.json
	npm ci --no-audit --no-fund --loglevel=error
	mkdir -p $(VENDOR)
	cp node_modules/htmx.org/dist/htmx.min.js node_modules/@picocss/pico/css/pico.min.css $(VENDOR)/
	touch $@

# The React islands (frontend/README.md), bundled from node_modules by esbuild.
$(ISLANDS)/.stamp: $(VENDOR)/.stamp $(shell find frontend -type f)
	rm -rf $(ISLANDS)
	npm run --silent build
	touch $@

lint: venv
	$(BIN)/ruff check app agent client plugins demo tests scripts benchmarks wsgi.py migrations

# The 25 slowest tests are listed at the end: the suite must stay under 25 minutes.
pytest:
	NULLOPS_TEST_DATABASE_URL=$(TEST_DB_URL) NULLOPS_TEST_DOCKER=1 NULLOPS_TEST_BROWSER=1 $(BIN)/pytest -p no:cacheprovider --durations=25 $(PYTEST_ARGS)

clean:
	rm -rf $(VENV) node_modules $(VENDOR)
