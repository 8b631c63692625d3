#!/usr/bin/env bash
# Sets up a checkout for `make run` and `make test`: checks what it needs first (one line each for what is
# missing, and how to get it), then installs the pinned Python packages with uv while bun comes from npm
# alongside and fetches the pages' npm packages into its cache, timing each step. Steps whose result is
# current are skipped.
#
#   scripts/setup.sh          the packages (with the test tools, the `dev` extra) and bun
#   scripts/setup.sh --run    the packages the portal runs on (not the test tools) and bun; also checks
#                             that the portal's port is free and its data dir writable
#
# PYTHON (default python3.11), PORTAL_PORT (3000), PORTAL_DATA_DIR (data/), BUN_PACKAGE and BUN_VERSION come
# from the environment (the Makefile sets them).
set -uo pipefail
cd "$(dirname "$0")/.."

PYTHON=${PYTHON:-python3.11}
VENV=.venv
BUN_PACKAGE=${BUN_PACKAGE:-@oven/bun-linux-x64}
BUN_VERSION=${BUN_VERSION:-1.4.5}
BUN=.tools/node_modules/$BUN_PACKAGE/bin/bun
PORT=${PORTAL_PORT:-3000}
DATA_DIR=${PORTAL_DATA_DIR:-data}

now() { date +%s.%N; }
seconds_since() { awk -v a="$1" -v b="$(now)" 'BEGIN { printf "%.1f", b - a }'; }
started=$(now)

# --- what the machine must have --------------------------------------------------------------------------
missing=()
if ! command -v "$PYTHON" >/dev/null 2>&1; then
  missing+=("Python 3.11 is missing ($PYTHON not found): install it (Debian: apt-get install python3.11 python3.11-venv), or name another 3.11 with PYTHON=...")
elif ! "$PYTHON" -c 'import sys; sys.exit(sys.version_info[:2] != (3, 11))' 2>/dev/null; then
  missing+=("$PYTHON is $("$PYTHON" -c 'import platform; print(platform.python_version())' 2>/dev/null), not Python 3.11: install 3.11, or name it with PYTHON=...")
elif ! "$PYTHON" -c 'import venv, ensurepip' 2>/dev/null; then
  missing+=("$PYTHON cannot make virtual environments: install its venv module (Debian: apt-get install python3.11-venv)")
fi
if ! command -v node >/dev/null 2>&1; then
  missing+=("Node.js is missing: install Node.js 20 or newer with npm (Debian: apt-get install nodejs npm)")
elif [ "$(node -p 'process.versions.node.split(".")[0]' 2>/dev/null || echo 0)" -lt 20 ]; then
  missing+=("Node.js $(node --version) is too old: install Node.js 20 or newer")
fi
if ! command -v npm >/dev/null 2>&1; then
  missing+=("npm is missing: install it with Node.js (Debian: apt-get install npm)")
fi
if [ "${1:-}" = "--run" ]; then
  if (exec 3<>"/dev/tcp/127.0.0.1/$PORT") 2>/dev/null; then
    missing+=("port $PORT is taken (another portal?): stop what listens there, or choose another with PORTAL_PORT=...")
  fi
  if ! mkdir -p "$DATA_DIR" 2>/dev/null || [ ! -w "$DATA_DIR" ]; then
    missing+=("the data dir $DATA_DIR is not writable: fix its permissions, or choose another with PORTAL_DATA_DIR=...")
  fi
fi
if [ ${#missing[@]} -gt 0 ]; then
  printf 'setup: %s\n' "${missing[@]}" >&2
  exit 2
fi

# --- bun from npm, then the pages' npm packages, alongside the Python packages --------------------------------
# The page build's `bun install` (Reflex's, from the lockfile it keeps in reflex.lock/) then finds every
# package in bun's cache and only links them: ~0.2 s instead of 3-7 s of downloads after the Python packages.
# Fetched into a scratch folder (.tools/pages): Reflex empties .web when it first makes it. Should Reflex
# want other packages (another version of it), its own install fetches what the cache lacks, as before.
BUN_CACHE=${BUN_INSTALL_CACHE_DIR:-$PWD/.bun-cache}
PAGES=.tools/pages
pages_wanted=
if [ -f reflex.lock/package.json ] && [ -f reflex.lock/bun.lock ]; then
  pages_wanted=$(cat reflex.lock/package.json reflex.lock/bun.lock | sha256sum | cut -d' ' -f1)
  if [ "$(cat "$PAGES/.fetched" 2>/dev/null)" = "$pages_wanted" ] && [ -d "$BUN_CACHE" ]; then
    pages_wanted=
  fi
fi
fetch_pages() {
  local step registry bun
  step=$(now)
  bun=$PWD/$BUN
  # The registry the page build will use (portal/frontend_build.py asks npm the same way).
  registry=${NPM_CONFIG_REGISTRY:-$(npm config get registry 2>/dev/null)}
  rm -rf "$PAGES" && mkdir -p "$PAGES" && cp reflex.lock/package.json reflex.lock/bun.lock "$PAGES"/ || return 1
  # Niced: the Python packages are the longer way to a first page, and they would wait on this for the
  # cores (half its time is the kernel's, writing ~23,000 files).
  (cd "$PAGES" && BUN_INSTALL_CACHE_DIR=$BUN_CACHE NPM_CONFIG_REGISTRY=${registry:-https://registry.npmjs.org/} \
    nice -n 10 "$bun" install --frozen-lockfile --ignore-scripts --legacy-peer-deps --no-progress) || return 1
  echo "$pages_wanted" >"$PAGES/.fetched"
  echo "setup: pages' npm packages       $(seconds_since "$step") s"
}
bun_log=$(mktemp)
bun_pid=
if [ ! -x "$BUN" ] || [ -n "$pages_wanted" ]; then
  (
    if [ ! -x "$BUN" ]; then
      step=$(now)
      npm install --prefix .tools --no-save --no-audit --no-fund --ignore-scripts "$BUN_PACKAGE@$BUN_VERSION" \
        >"$bun_log" 2>&1 && test -x "$BUN" || exit 1
      echo "setup: bun from npm             $(seconds_since "$step") s"
    fi
    if [ -n "$pages_wanted" ] && ! fetch_pages >"$bun_log.pages" 2>&1; then
      # Not a failure: the page build fetches them itself, only later.
      echo "setup: the pages' npm packages were not fetched ahead (the page build fetches them):"
      tail -n 3 "$bun_log.pages" | sed 's/^/setup:   /'
    elif [ -n "$pages_wanted" ]; then
      grep '^setup: ' "$bun_log.pages"
    fi
    rm -f "$bun_log.pages"
  ) &
  bun_pid=$!
fi

# --- the Python packages, pinned by constraints.txt, with uv -----------------------------------------------
# The stamp holds a digest of what the install is made from: any change to the pins or the project's
# requirements installs again (a file's time would miss a revert, or a checkout that keeps times).
# `make run` leaves out the test tools (the `dev` extra: Playwright, the Kubernetes schemas...: a third of
# the bytes and ~20,000 files, seconds on these cores); `make test` adds them. The stamp says "run" after
# an install without them, which serves `make run` but not `make test`.
status=0
wanted=$(cat pyproject.toml constraints.txt | sha256sum | cut -d' ' -f1)
installed=$(cat "$VENV/.installed" 2>/dev/null)
if [ "${1:-}" = "--run" ]; then
  project=.
  [ "$installed" = "$wanted run" ] && installed=$wanted
else
  project='.[dev]'
fi
if [ "$installed" != "$wanted" ] || [ ! -x "$VENV/bin/python" ]; then
  step=$(now)
  # The pip and setuptools wheels that `python -m venv` would install (ensurepip's own, or Debian's in
  # /usr/share/python-wheels). `venv` installs them with pip, compiling as it goes: 3-7 s here, the longest
  # step before uv. Without them the environment is made in 0.1 s; pip runs from its wheel to install uv,
  # and uv installs the same two wheels with the packages. Where they cannot be found, `venv` as before.
  mapfile -t wheels < <("$PYTHON" -c 'import ensurepip, os
here = os.path.join(os.path.dirname(ensurepip.__file__), "_bundled")
for package in ensurepip._get_packages().values():
    print(package.wheel_path or os.path.join(here, package.wheel_name))' 2>/dev/null)
  pip_wheel=
  for wheel in "${wheels[@]}"; do
    [[ $wheel == */pip-*.whl && -f $wheel ]] && pip_wheel=$wheel
  done
  [ -n "$pip_wheel" ] || wheels=()
  if [ ! -x "$VENV/bin/python" ]; then
    if [ -n "$pip_wheel" ]; then
      "$PYTHON" -m venv --without-pip "$VENV" || status=1
    else
      "$PYTHON" -m venv "$VENV" || status=1
    fi
  fi
  [ $status -eq 0 ] && echo "setup: virtual environment       $(seconds_since "$step") s"
  step=$(now)
  if [ $status -eq 0 ] && [ ! -x "$VENV/bin/uv" ]; then
    pip=(-m pip)
    [ -x "$VENV/bin/pip" ] || [ -z "$pip_wheel" ] || pip=("$pip_wheel/pip")
    "$VENV/bin/python" "${pip[@]}" install -qq --disable-pip-version-check -c constraints.txt uv || status=1
    [ $status -eq 0 ] && echo "setup: uv                        $(seconds_since "$step") s"
  fi
  step=$(now)
  if [ $status -eq 0 ]; then
    "$VENV/bin/uv" pip install --quiet --python "$VENV/bin/python" -c constraints.txt -e "$project" || status=1
  fi
  if [ $status -eq 0 ] && [ ! -x "$VENV/bin/pip" ] && [ ${#wheels[@]} -gt 0 ]; then
    "$VENV/bin/uv" pip install --quiet --python "$VENV/bin/python" --offline --no-deps "${wheels[@]}" || status=1
  fi
  if [ $status -eq 0 ]; then
    if [ "$project" = . ]; then echo "$wanted run"; else echo "$wanted"; fi >"$VENV/.installed"
    echo "setup: Python packages           $(seconds_since "$step") s"
  fi
else
  echo "setup: Python packages           current"
fi

if [ -n "$bun_pid" ] && ! wait "$bun_pid"; then
  cat "$bun_log" >&2
  echo "setup: bun could not be installed from npm (its output is above)" >&2
  status=1
fi
rm -f "$bun_log"
[ $status -eq 0 ] || { echo "setup: failed (see above)" >&2; exit 1; }
echo "setup: ready in $(seconds_since "$started") s"
