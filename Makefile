# dagseal: the two set-up commands of the README are `make demo` and `make test`.
# Both install what they need on a fresh Debian machine: apt packages, uv, the project's venv.
SHELL := /bin/bash
.SHELLFLAGS := -eu -o pipefail -c
PYTHON ?= python3
APT_PACKAGES := docker-registry skopeo umoci buildah debootstrap
VENV := .venv
AIRFLOW_VENV := .venv-airflow
AIRFLOW_VERSION := 3.3.2
UV := $(shell command -v uv 2>/dev/null)
PYTEST_ARGS ?=

.PHONY: setup apt uv venv airflow-env demo test bench clean

setup: apt venv

apt:
	@missing=""; for p in $(APT_PACKAGES); do dpkg -s $$p >/dev/null 2>&1 || missing="$$missing $$p"; done; \
	if [ -n "$$missing" ]; then \
	  echo "installing apt packages:$$missing"; \
	  SUDO=""; [ "$$(id -u)" = 0 ] || SUDO=sudo; \
	  $$SUDO apt-get update -qq; \
	  DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq --no-install-recommends$$missing >/dev/null; \
	fi

uv:
	@command -v uv >/dev/null 2>&1 || $(PYTHON) -m pip install -q --disable-pip-version-check 'uv>=0.13,<0.14'

venv: uv
	@uv sync -q --locked --extra test --python $(PYTHON)

# Real apache-airflow for the Airflow integration test, in its own environment (its dependency
# tree is large and must not shape the tool's own).
# Re-installs when pyproject.toml is newer than the stamp (new dependencies of the bundle class).
airflow-env: uv
	@test -x $(AIRFLOW_VENV)/bin/python || uv venv -q --python $(PYTHON) $(AIRFLOW_VENV)
	@test $(AIRFLOW_VENV)/.dagseal-stamp -nt pyproject.toml 2>/dev/null || { \
	  uv pip install -q --python $(AIRFLOW_VENV)/bin/python "apache-airflow==$(AIRFLOW_VERSION)" -e . && \
	  touch $(AIRFLOW_VENV)/.dagseal-stamp ; }

demo: setup
	@$(VENV)/bin/python -m bundler.demo

test: setup airflow-env
	@$(VENV)/bin/pytest -n 2 --dist loadgroup $(PYTEST_ARGS)

# Each bench/ script prints a table comparing dagseal with buildah/skopeo/umoci in the same run.
bench: setup
	@for b in bench/*; do [ -f $$b ] && { echo "== $$b"; $(VENV)/bin/python $$b || echo "$$b failed"; }; done

clean:
	rm -rf .dagseal $(VENV) $(AIRFLOW_VENV) .pytest_cache
