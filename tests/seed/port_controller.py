"""The port's own controller, its PyFlink job, for the seed loop's ``port`` run.

Test infrastructure; the vendored ``python/controller_job`` is run unmodified
from ``../shared/vendor/flink-rtcef`` (never copied). How:

* **Python 3.9** (apache-flink 1.17 supports 3.7-3.10) in a cached virtualenv
  from ``requirements-pyflink.lock``, a hashed lock of the port's
  ``requirements.txt`` less ``python-avro==1.10.2``, which PyPI does not have
  (``just seed-pyflink-lock`` regenerates it; about 900 MB, 70 s to install).
* **Flink's jars**: ``python main.py`` starts a local MiniCluster in a JVM whose
  classpath is ``$FLINK_LIB_DIR``. Its Docker image puts the Kafka connector in
  Flink's ``lib``; here ``lib_dir`` links PyFlink's own jars and the connector
  and ``kafka-clients`` of the seed runtime build (the same 1.17.2 and 3.2.3)
  into one folder. PyFlink reads ``FLINK_LIB_DIR`` only with ``FLINK_HOME`` set.
* **JDK 17**: the ``--add-opens`` Flink needs go in ``JDK_JAVA_OPTIONS``
  (``JVM_ARGS`` reaches java as one argument); ``pyflink_main.py`` works around
  FLINK-32327 (PyFlink 1.17's Kafka sink builder fails on JDK 15+).
* **Settings**: environment only (``KAFKA_BOOTSTRAP_SERVERS``,
  ``INSTRUCTION_TOPIC``, ``REPORT_TOPIC``, ``COMMAND_TOPIC``, ``SYNC_TOPIC``), set to
  the port's Makefile values. It reads both topics from the earliest offset,
  so each run gets fresh topics. Its Python workers run ``python`` from
  ``PATH``, so the virtualenv's ``bin`` goes first. Its log (and its Python
  lines) are in ``$FLINK_LOG_DIR/flink-*-python-*.log``.

What it does with the seed's services (read from ``functions/controller_coprocess.py``):
OPTIMIZE rounds of 10 evaluations (5 random first), ``retrain`` only logged;
any error report aborts the round and plays ``model_id`` 0.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Mapping
from pathlib import Path

from tests.rtcef import stack
from tests.seed import build as seed_build
from tests.seed.services import JDK17_FLAGS, Topics

HERE = Path(__file__).resolve().parent
LOCK = HERE / "requirements-pyflink.lock"
LAUNCHER = HERE / "pyflink_main.py"
#: Its topics in the port's deployment (the Makefile's environment).
PORT_TOPICS = Topics()
#: The seed runtime jars the MiniCluster needs besides PyFlink's own.
CONNECTOR_JARS = ("flink-connector-kafka-", "kafka-clients-")


def main_script() -> Path:
    """The vendored controller's entry point."""
    return seed_build.port_source_dir() / "python" / "controller_job" / "main.py"


def ensure_python(quiet: bool = False) -> str:
    """The controller's Python 3.9 environment (installed once, cached by the lock)."""
    return stack.ensure_services_python(
        quiet, lock=LOCK, name="seed-pyflink", imports="pyflink, skopt, confluent_kafka"
    )


def flink_home(python: str) -> Path:
    """PyFlink's installation (its ``lib`` holds Flink's own jars)."""
    return Path(python).parent.parent / "lib" / "python3.9" / "site-packages" / "pyflink"


def lib_dir(build: seed_build.SeedBuild, python: str, run_dir: Path) -> Path:
    """A folder linking PyFlink's jars and the Kafka connector: the MiniCluster's classpath."""
    folder = run_dir / "flink-lib"
    folder.mkdir(parents=True, exist_ok=True)
    wanted = list((flink_home(python) / "lib").glob("*.jar"))
    wanted += [jar for jar in build.runtime_jars if jar.name.startswith(CONNECTOR_JARS)]
    names = {jar.name for jar in wanted}
    for prefix in CONNECTOR_JARS:
        if not any(name.startswith(prefix) for name in names):
            raise stack.StackError(f"the seed runtime build has no {prefix}*.jar")
    for jar in wanted:
        link = folder / jar.name
        if not link.exists():
            link.symlink_to(jar)
    return folder


def command(python: str) -> list[str]:
    """The controller started as ``python main.py`` would be, through the JDK 17 launcher."""
    return [python, str(LAUNCHER), str(main_script())]


def environment(
    bootstrap: str, python: str, build: seed_build.SeedBuild, run_dir: Path,
    topics: Topics = PORT_TOPICS,
) -> Mapping[str, str]:  # fmt: skip
    """Its environment: the Makefile's topics, this broker, Flink's folders in ``run_dir``."""
    scratch = run_dir / "port-controller"
    for sub in ("tmp", "log"):
        (scratch / sub).mkdir(parents=True, exist_ok=True)
    home = flink_home(python)
    return {
        "PATH": f"{Path(python).parent}{os.pathsep}{os.environ.get('PATH', '')}",
        "JDK_JAVA_OPTIONS": " ".join((*JDK17_FLAGS, f"-Djava.io.tmpdir={scratch / 'tmp'}")),
        "TMPDIR": str(scratch / "tmp"),
        "FLINK_HOME": str(home),
        "FLINK_LIB_DIR": str(lib_dir(build, python, run_dir)),
        "FLINK_LOG_DIR": str(scratch / "log"),
        "PYTHONPATH": str(main_script().parent.parent),
        "PYTHONDONTWRITEBYTECODE": "1",
        "PYTHONUNBUFFERED": "1",
        "KAFKA_BOOTSTRAP_SERVERS": bootstrap,
        "INSTRUCTION_TOPIC": topics.instructions,
        "REPORT_TOPIC": topics.reports,
        "COMMAND_TOPIC": topics.commands,
        "SYNC_TOPIC": topics.sync,
    }


def log_files(run_dir: Path) -> list[Path]:
    """The controller's Flink logs (its Python lines included)."""
    return sorted((run_dir / "port-controller" / "log").glob("flink-*.log"))


if __name__ == "__main__":
    print(ensure_python())
    sys.exit(0)
