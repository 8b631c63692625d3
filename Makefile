# GPU Portal: `make run` serves the portal on http://127.0.0.1:3000, `make test` runs the suite.
# Everything is installed from PyPI, npm and Debian by these rules; nothing else is fetched.

PYTHON ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
BUN_VERSION := 1.4.5
# CPUs without AVX2 need bun's baseline build.
BUN_PACKAGE := @oven/bun-linux-x64$(shell grep -q avx2 /proc/cpuinfo 2>/dev/null || echo -baseline)
BUN := .tools/node_modules/$(BUN_PACKAGE)/bin/bun

export REFLEX_TELEMETRY_ENABLED := false
export REFLEX_CHECK_LATEST_VERSION := 0
export REFLEX_HTTP_CLIENT_BIND_ADDRESS := 0.0.0.0
export REFLEX_DIR := $(CURDIR)/.reflex
export REFLEX_BUN_PATH := $(CURDIR)/$(BUN)
export BUN_INSTALL_CACHE_DIR := $(CURDIR)/.bun-cache
export UV_CACHE_DIR := $(CURDIR)/.uv-cache
# Python keeps the bytecode it compiles (__pycache__), so a second `make run` does not compile the ~2,400
# modules the portal imports again (7 s of CPU): some images set PYTHONDONTWRITEBYTECODE for every shell.
unexport PYTHONDONTWRITEBYTECODE

.PHONY: setup run test test-fast bench lint browser mesh k8s pgbouncer haproxy containers worker clean

SETUP := PYTHON=$(PYTHON) BUN_PACKAGE=$(BUN_PACKAGE) BUN_VERSION=$(BUN_VERSION) bash scripts/setup.sh

# Checks what the machine must have, then installs the pinned packages with uv while bun comes from npm,
# timing each step (scripts/setup.sh); what is current is skipped.
setup:
	@$(SETUP)

# Debian's Chromium for the browser tests (Playwright cannot download its own browser here), and Debian's
# Prometheus (promtool checks the exposition; a real server scrapes the portal in the tests).
browser:
	@command -v chromium >/dev/null || { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium; }
	@command -v promtool >/dev/null || { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends prometheus; }

# Debian's Nebula: nebula-cert signs and checks the overlay's certificates in the tests (the portal is the
# overlay's certificate authority), nebula runs its nodes. iproute2 and iptables build the namespace tests'
# small internet (tests/netns.py: veth pairs, a bridge, NAT routers).
mesh:
	@command -v nebula-cert >/dev/null || { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends nebula; }
	@command -v ip >/dev/null || { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends iproute2; }
	@command -v iptables >/dev/null || { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends iptables; }

# Debian's kubectl renders deploy/k8s offline (kubectl kustomize) for tests/test_k8s_manifests.py.
k8s:
	@command -v kubectl >/dev/null || { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends kubernetes-client; }

# Debian's PgBouncer: tests/test_pgbouncer.py runs the portal through one in transaction mode.
pgbouncer:
	@command -v pgbouncer >/dev/null || [ -x /usr/sbin/pgbouncer ] || { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends pgbouncer; }

# Debian's HAProxy: tests/test_multi_process.py balances two portal processes behind one.
haproxy:
	@command -v haproxy >/dev/null || [ -x /usr/sbin/haproxy ] || { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends haproxy; }

# Debian's Podman with runc for the isolation tests (customer code in containers, tests/test_isolation*.py),
# and mmdebstrap, which makes the test worker image's Debian rootfs (gpu_pool/image/build-test-image.sh).
containers:
	@command -v podman >/dev/null && command -v runc >/dev/null || { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends podman runc; }
	@command -v mmdebstrap >/dev/null || { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends mmdebstrap; }

run:
	@$(SETUP) --run
	$(BIN)/portal run

worker: setup
	$(BIN)/portal worker

test: setup browser mesh k8s pgbouncer haproxy containers
	$(BIN)/pytest

# Without the tests that drive Chromium or start real portals, Ray nodes or agents (pyproject.toml markers).
test-fast: setup
	$(BIN)/pytest -m "not browser and not slow"

bench: setup
	$(BIN)/python -m bench

lint: setup
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/hadolint Dockerfile gpu_pool/Containerfile

clean:
	rm -rf $(VENV) .web .reflex .bun-cache .uv-cache .tools
