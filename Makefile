# Commands a user needs: `make run`, `make test` (both tiers) and `make check` (ruff + the fast tier).
# Each creates or updates .venv first.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
export KERAS_BACKEND := jax
export ZENML_ANALYTICS_OPT_IN := false
export ZENML_ENABLE_RICH_TRACEBACK := false

.PHONY: setup run test check lint system-deps bench-deps benchmark nginx-conf prometheus-conf

setup: $(VENV)/.synced

# uv is itself pinned in the lock, so `uv pip sync` keeps it; pip only bootstraps it once.
$(VENV)/.synced: requirements.lock
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	test -x $(BIN)/uv || $(BIN)/python -m pip install -q --disable-pip-version-check uv==0.13.9
	$(BIN)/uv pip sync -q --python $(BIN)/python requirements.lock
	touch $@

# nginx serves the local canary, Prometheus scrapes it (`serve --monitor`) and the map page's test
# drives Debian's chromium through Playwright (no browser download); the packages are installed when
# missing and we are root.
system-deps:
	@command -v nginx >/dev/null 2>&1 || test -x /usr/sbin/nginx || \
	  { if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	      apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq nginx-light >/dev/null; \
	    else echo "nginx is missing: install it (Debian/Ubuntu: sudo apt-get install nginx-light)"; exit 1; fi; }
	@command -v prometheus >/dev/null 2>&1 || test -x /usr/bin/prometheus || \
	  { if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	      apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends prometheus >/dev/null; \
	    else echo "prometheus is missing: install it (Debian/Ubuntu: sudo apt-get install prometheus)"; exit 1; fi; }
	@command -v chromium >/dev/null 2>&1 || test -x /usr/bin/chromium || \
	  { if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	      apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends chromium >/dev/null; \
	    else echo "chromium is missing: install it (Debian/Ubuntu: sudo apt-get install chromium)"; exit 1; fi; }

run: setup
	$(BIN)/python run.py

test: setup system-deps
	$(BIN)/python -m pytest

lint: setup
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

check: lint
	$(BIN)/python -m pytest -m "not slow"

# The compose canary's nginx config comes from the local canary's template (tests check it is current).
nginx-conf: setup
	$(BIN)/python -c 'from visionzero.rollout.nginx import render_container_nginx_conf as r; \
	  print(r(), end="")' > container/nginx/canary.conf

# The compose Prometheus config comes from the local one's template (tests check it is current).
prometheus-conf: setup
	$(BIN)/python -c 'from visionzero.rollout.prometheus import render_container_prometheus_config as r; \
	  print(r(), end="")' > container/prometheus/prometheus.yml

# The serving benchmark's load generators: wrk (saturation) and hey (fixed request rates); Debian's
# packages are installed when missing and we are root.
bench-deps:
	@for tool in wrk hey; do command -v $$tool >/dev/null 2>&1 || \
	  { if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	      apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$tool >/dev/null; \
	    else echo "$$tool is missing: install it (Debian/Ubuntu: sudo apt-get install $$tool)"; exit 1; fi; }; \
	done

benchmark: setup bench-deps
	$(BIN)/python benchmarks/data_loader.py
	$(BIN)/python benchmarks/pipeline.py
