# The front door: `just` lists every recipe. Everything runs from the project's
# own virtualenv (.venv), which `bootstrap` creates from the lock file on demand.

set shell := ["bash", "-euo", "pipefail", "-c"]
set positional-arguments

py := ".venv/bin/python"
lock := ".ci/requirements.lock"
shared := env_var_or_default("RTCEF_SHARED_DIR", "../shared")

# List the recipes
default:
    @just --list --unsorted

# Create or refresh .venv from the lock file (no-op when up to date)
bootstrap:
    #!/usr/bin/env bash
    set -euo pipefail
    python="${PYTHON:-python3}"
    if ! "$python" -c 'import sys; sys.exit(not ((3, 11) <= sys.version_info[:2] < (3, 13)))'; then
        echo "bootstrap: need Python 3.11 or 3.12 (set PYTHON=...); $python is $("$python" -V 2>&1)" >&2
        exit 1
    fi
    stamp="$(cat {{lock}} pyproject.toml | sha256sum | cut -d' ' -f1)"
    if [ -f .venv/.stamp ] && [ "$(cat .venv/.stamp)" = "$stamp" ]; then exit 0; fi
    echo "bootstrap: installing the locked dependencies into .venv" >&2
    [ -x {{py}} ] || "$python" -m venv .venv
    {{py}} -m pip install --quiet --require-hashes --no-deps -r {{lock}}
    {{py}} -m pip install --quiet --no-deps --no-build-isolation -e .
    echo "$stamp" > .venv/.stamp

# Fetch the Kafka broker's jars from Maven Central into the user cache (once)
jars: bootstrap
    {{py}} tests/kafka/broker.py jars > /dev/null

# Start a local Kafka broker in the background (address in .kafka/bootstrap)
kafka-up: jars
    {{py}} tests/kafka/broker.py up --state .kafka

# Stop the broker that kafka-up started
kafka-down:
    {{py}} tests/kafka/broker.py down --state .kafka

# Run the controller end to end: a local broker, the controller, simulated factory and engine
run *args: jars
    {{just_executable()}} _with-broker dataflow.sim.demo "$@"

# The demo with a real Prometheus beside it (the shipped alert rules), held open: prints where to look
monitor *args: jars
    {{just_executable()}} _with-broker dataflow.sim.monitor "$@"

# Run a module with a local broker unless KAFKA_BOOTSTRAP_SERVERS names one
_with-broker module *args:
    #!/usr/bin/env bash
    set -euo pipefail
    shift  # the module
    if [ -z "${KAFKA_BOOTSTRAP_SERVERS:-}" ]; then
        trap '{{py}} tests/kafka/broker.py down --state .kafka/demo' EXIT
        {{py}} tests/kafka/broker.py up --state .kafka/demo > /dev/null
        export KAFKA_BOOTSTRAP_SERVERS="$(cat .kafka/demo/bootstrap)"
    fi
    {{py}} -m {{module}} "$@"

# Run everything CI runs: lint, then unit, flow and integration tests (real Kafka broker)
test *args: lint jars
    {{py}} -m pytest "$@"

# Run pytest alone with any arguments (e.g. `just pytest -k recovery`)
pytest *args: jars
    {{py}} -m pytest "$@"

# Run only the pure unit tests (no broker)
test-unit *args: bootstrap
    {{py}} -m pytest tests/unit "$@"

# Lint and type-check: ruff (lint and format) and mypy --strict on dataflow/
lint: bootstrap
    {{py}} -m ruff check dataflow tests
    {{py}} -m ruff format --check dataflow tests
    {{py}} -m mypy

# Redraw the README's state diagram from the transition table (a test checks they agree)
diagram: bootstrap
    {{py}} -c 'import pathlib, re, sys; from dataflow.domain import table; p = pathlib.Path("README.md"); text, n = re.subn(r"```mermaid\nstateDiagram-v2\n.*?```", lambda _: "```mermaid\n" + table.mermaid() + "```", p.read_text(), flags=re.S); n == 1 or sys.exit(f"diagram: expected one stateDiagram block in README.md, found {n}"); p.write_text(text)'

# Show the sessions stored in a recovery directory (e.g. after a crash)
inspect dir *args: bootstrap
    {{py}} -m dataflow.tools.inspection "$@"

# Print the package's import graph (Mermaid) and check the layering rule
imports: bootstrap
    {{py}} -m tests.imports

# Apply ruff's formatter and safe fixes
fmt: bootstrap
    {{py}} -m ruff format dataflow tests
    {{py}} -m ruff check --fix dataflow tests

# Re-resolve the lock files from pyproject.toml: dev (.venv, CI), runtime and build backend (the image)
lock: bootstrap
    {{py}} -m uv pip compile pyproject.toml --group dev --python-version 3.11 --generate-hashes --quiet -o {{lock}}
    {{py}} -m uv pip compile pyproject.toml --python-version 3.11 --generate-hashes --quiet -o .ci/runtime.lock
    grep -m1 '^setuptools==' {{lock}} | cut -d' ' -f1 | {{py}} -m uv pip compile - --python-version 3.11 --generate-hashes --quiet --custom-compile-command "just lock" -o .ci/build.lock

# Remove the virtualenv, caches and local broker/recovery state
clean: kafka-down
    rm -rf .venv .kafka .pytest_cache .mypy_cache .ruff_cache demo-output recovery .rtcef-loop .rtcef-rescore .seed-loop

# Build the Dockerfile with buildah (base assembled from Debian packages when no registry answers) and run its pod as the StatefulSet would against a test broker
image-check *args: jars
    {{py}} -m tests.deploy.image "$@"

# The 21 recorded RTCEF runs through a real broker, the controller SIGKILLed at its worst moments, every delivery counted: one row per run
chaos *args: jars
    {{py}} -m tests.integration.chaos "$@"

# Run the benchmarks (state, latency, optimiser, throughput, recovery) and save tests/bench/RESULTS.md
bench *args: jars
    {{py}} -m tests.bench.bench "$@"

# The real loop: the original RTCEF services and Wayeb driven by this controller, by the original one, and not adapted; writes tests/rtcef/RESULTS.md
rtcef-loop *args: jars
    {{py}} -m tests.rtcef.loop "$@"

# Score the models of the real loop's OPTIMIZE rounds again, all on records fixed by stream time (after just rtcef-loop; run folders as arguments)
rtcef-rescore *args: bootstrap
    {{py}} -m tests.rtcef.rescore "$@"

# The seed's loop: the PyFlink port's Flink factory, inference engine and Observer driven by this controller, by the port's own PyFlink controller, and not adapted; writes tests/seed/RESULTS.md
seed-loop *args: jars
    {{py}} -m tests.seed.loop "$@"

# Build the seed's Flink jobs and their Wayeb fork with Maven (cached); prints what was built
seed-build: bootstrap
    {{py}} -m tests.seed.build

# Build Wayeb from the vendored source with Maven (cached by source hash); prints its classpath
wayeb: bootstrap
    {{py}} -m tests.rtcef.wayeb build

# Re-resolve the original services' hashed Python 3.9 lock from their vendored requirements.txt
rtcef-lock: bootstrap
    {{py}} -m uv pip compile {{shared}}/vendor/rtcef/requirements.txt --python-version 3.9 --generate-hashes --quiet --custom-compile-command "just rtcef-lock" -o tests/rtcef/requirements-py39.lock

# Re-resolve the port's PyFlink controller's hashed Python 3.9 lock (the seed loop's `port` run)
seed-pyflink-lock: bootstrap
    {{py}} -m uv pip compile tests/seed/requirements-pyflink.in --python-version 3.9 --generate-hashes --quiet --custom-compile-command "just seed-pyflink-lock" -o tests/seed/requirements-pyflink.lock
