"""The original RTCEF services, started from ``../shared/vendor/rtcef`` (read-only) for a real loop.

Test infrastructure, like ``tests/kafka/broker.py``. It provides, from the
project's own files only:

* the services' Python 3.9 environment, installed once per lock hash from
  ``requirements-py39.lock`` (``just rtcef-lock`` regenerates it from the vendored
  ``requirements.txt``) into the user cache;
* a configuration generated from a vendored template (``configs/port/conf_N.ini``):
  every path that is written to points into the run's own folder, the ones that
  are only read (patterns, schemas, starting models, offline pickles) into the
  vendored copy, the data set is our converted maritime sample, and the optimiser's
  budget and time window are set as asked;
* the services as processes (the two Wayeb JVMs, then factory, collector, engine,
  the controller under test, observer, replayer), each with its log in the run
  folder, started in the order they need and all stopped together, by process
  group, on exit, Ctrl-C, SIGTERM or SIGHUP (the controller by its helper,
  ``dataflow.sim.process``).

Nothing is written into the vendored tree: Python runs with
``PYTHONDONTWRITEBYTECODE`` and every process's working directory is the run folder.
"""

from __future__ import annotations

import configparser
import contextlib
import hashlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from dataflow.sim.process import ControllerProcess, signals_held, stop_all
from dataflow.sim.process import (
    interrupts_as_keyboard_interrupt as interrupts_as_keyboard_interrupt,  # the loops' guard
)
from tests.kafka import broker as kafka_broker
from tests.rtcef import wayeb

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
SHARED = Path(os.environ.get("RTCEF_SHARED_DIR", ROOT.parent / "shared"))
VENDOR = SHARED / "vendor" / "rtcef"
SAMPLE = SHARED / "vendor" / "wayeb-sample" / "227592820.csv"
LOCK = HERE / "requirements-py39.lock"

#: Wayeb's Kafka clients hard-code this address: the loop's broker must listen here.
BROKER_PORT = 9092
BOOTSTRAP = f"localhost:{BROKER_PORT}"

#: The eleven topics of the maritime configurations (one partition each, as upstream).
TOPICS = (
    "optimiser_instructions", "factory_commands", "factory_reports", "dataset_versions",
    "model_versions", "input_stream", "output_stream", "model_runtime_scores",
    "engine_current_position", "assembled_datasets", "engine_sync",
)  # fmt: skip

#: py4j ports: the factory's Wayeb ``server`` (java, python) and the engine's ``service``.
SERVER_PORTS = (25334, 25333)
SERVICE_PORTS = (25336, 25335)

#: How long the controller may take to stop on Ctrl-C before it is killed: the end of
#: its epoch (``-s 5``) and the snapshot written then, with room to spare.
CONTROLLER_GRACE_S = 15.0
#: The other services: SIGINT, SIGTERM after the first grace, SIGKILL after the second.
GRACES_S = (3.0, 10.0)
#: How long a killed service may take to be reaped.
KILLED_S = 30.0


class StackError(RuntimeError):
    """A part of the loop could not be built, configured or started."""


# --------------------------------------------------------------------------- Python 3.9


def find_python39() -> str:
    """The interpreter for the services: ``RTCEF_PYTHON``, pyenv's 3.9, or ``python3.9``."""
    explicit = os.environ.get("RTCEF_PYTHON")
    if explicit:
        return explicit
    pyenv_root = Path(os.environ.get("PYENV_ROOT", Path.home() / ".pyenv"))
    for candidate in sorted((pyenv_root / "versions").glob("3.9.*/bin/python"), reverse=True):
        return str(candidate)
    found = shutil.which("python3.9")
    if found:
        return found
    raise StackError("no Python 3.9 found: set RTCEF_PYTHON, or install 3.9 with pyenv")


def services_env_dir(lock: Path = LOCK, name: str = "rtcef-py39") -> Path:
    """A cached environment's folder, keyed by its lock's content."""
    digest = hashlib.sha256(lock.read_bytes()).hexdigest()[:12]
    return kafka_broker.cache_root() / f"{name}-{digest}"


def ensure_services_python(
    quiet: bool = False,
    *,
    lock: Path = LOCK,
    name: str = "rtcef-py39",
    imports: str = "kafka, py4j, skopt, fastavro, avro, ujson, numpy",
) -> str:
    """Create (once) a Python 3.9 virtualenv from a hashed lock; return its python.

    By default the original services' environment; ``imports`` are checked once installed.
    """
    home = services_env_dir(lock, name)
    python = home / "bin" / "python"
    if (home / "complete").exists():
        return str(python)
    if home.exists():
        shutil.rmtree(home)
    if not quiet:
        print(f"{name}: installing the Python 3.9 environment of {lock.name} (first run only)...",
              file=sys.stderr)  # fmt: skip
    _run([find_python39(), "-m", "venv", str(home)], "creating the Python 3.9 venv")
    _run([str(python), "-m", "pip", "install", "--quiet", "--disable-pip-version-check",
          "--require-hashes", "--no-deps", "-r", str(lock)], "pip install of the lock")  # fmt: skip
    _run([str(python), "-c", f"import {imports}"], f"importing {imports}")
    (home / "complete").write_text(time.strftime("%Y-%m-%dT%H:%M:%S"))
    return str(python)


def _run(command: Sequence[str], what: str) -> None:
    result = subprocess.run(command, capture_output=True, text=True, check=False)
    if result.returncode != 0:
        raise StackError(f"{what} failed ({result.returncode}):\n{result.stdout}{result.stderr}")


# --------------------------------------------------------------------------- configuration


@dataclass(frozen=True)
class Window:
    """The stream time the replayer, engine and collector agree on (seconds)."""

    start: int  # replayer StartTime
    end: int  # replayer EndTime
    engine_start: int  # engine model.param.start_time: scores are counted after it
    reporting_dt: int = 604_800  # a score report per week of stream time


def write_config(
    run_dir: Path,
    dataset: Path,
    window: Window,
    *,
    template: str = "port/conf_1.ini",
    optimiser: Mapping[str, str] | None = None,
) -> Path:
    """Write ``run_dir/conf.ini`` from a vendored template; return its path.

    ``optimiser`` overrides keys of the original controller's ``[optimiser]``
    section (e.g. ``nTotalEvals``); our controller ignores the file.
    """
    parser = configparser.ConfigParser(interpolation=None)
    parser.optionxform = str  # type: ignore[assignment,method-assign]  # keep the keys' case
    source = VENDOR / "configs" / template
    if not parser.read(source):
        raise StackError(f"cannot read the template {source}")
    folders = {name: kafka_broker.ensure_dir(run_dir / name) for name in
               ("logs", "assembled", "collected", "models", "optimiser", "reader")}  # fmt: skip
    opt_folder = folders["optimiser"]
    settings: dict[str, dict[str, str]] = {
        "default": {"ProjectPath": str(VENDOR)},
        "kafka": {"all.bootstrap_servers": BOOTSTRAP},
        "optimiser": {
            "executionLog": str(folders["logs"] / "optimiser_service.log"),
            "optimisationLogs": f"{kafka_broker.ensure_dir(opt_folder / 'logs')}/",
            "optimisationSamples": f"{kafka_broker.ensure_dir(opt_folder / 'samples')}/",
            "optimisationModels": f"{kafka_broker.ensure_dir(opt_folder / 'models')}/",
            **(optimiser or {}),
        },
        "engine": {
            "executionLog": str(folders["logs"] / "engine_service.log"),
            "model.param.start_time": str(window.engine_start),
            "model.param.reporting_dt": str(window.reporting_dt),
        },
        "factory": {
            "executionLog": str(folders["logs"] / "factory_service.log"),
            "assembledDatasetsPath": f"{folders['assembled']}/",
            "savedModelsPath": str(folders["models"]),
        },
        "observer": {"executionLog": str(folders["logs"] / "observer_service.log")},
        "collector": {
            "executionLog": str(folders["logs"] / "collector_service.log"),
            "StoragePath": f"{folders['collected']}/",
        },
        "replayer": {
            "DatasetPath": str(dataset),
            "StartTime": str(window.start),
            "EndTime": str(window.end),
            "StartPeriod": "0",
            "cyclic": "false",
        },
        "reader": {"outputFolder": f"{folders['reader']}/"},
    }
    for section, values in settings.items():
        if not parser.has_section(section) and section != "default":
            raise StackError(f"{source} has no [{section}] section")
        for key, value in values.items():
            parser[section][key] = value
    path = run_dir / "conf.ini"
    with path.open("w") as handle:
        handle.write(f"; generated from {source} by tests/rtcef/stack.py\n")
        parser.write(handle)
    return path


# --------------------------------------------------------------------------- processes


@dataclass
class Service:
    """One started process: its name, pid and log."""

    name: str
    process: subprocess.Popen[bytes]
    log: Path
    #: Ends by itself when its work is done (the replayer): exiting with 0 is not a failure.
    finite: bool = False
    #: The controller's helper, which stops it (its whole process group).
    controller: ControllerProcess | None = None

    def alive(self) -> bool:
        return self.process.poll() is None

    def log_text(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""


@dataclass
class Stack:
    """Processes started for one run, stopped in reverse order by ``close``."""

    run_dir: Path
    config: Path | None = None
    services: list[Service] = field(default_factory=list)

    def start(
        self,
        name: str,
        command: Sequence[str],
        *,
        env: Mapping[str, str] | None = None,
        cwd: Path | None = None,
    ) -> Service:
        log = self.log_path(name)
        with log.open("ab") as handle:
            process = subprocess.Popen(
                list(command), cwd=cwd or self.run_dir, env={**os.environ, **(env or {})},
                stdout=handle, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                start_new_session=True,  # Ctrl-C is ours to handle; we stop each by pid
            )  # fmt: skip
        return self.add(Service(name, process, log))

    def log_path(self, name: str) -> Path:
        """Where a process's standard output and error go (its folder made)."""
        log = self.run_dir / "logs" / f"{name}.out"
        log.parent.mkdir(parents=True, exist_ok=True)
        return log

    def add(self, service: Service) -> Service:
        """Stop ``service`` with the others in ``close``."""
        self.services.append(service)
        return service

    def start_controller(self, env: Mapping[str, str], name: str = "controller") -> Service:
        """This controller as an operator runs it (``bytewax.run``, a fresh recovery store).

        Snapshots every 5 s, the store keeping 30 s of them; ``env`` is its settings.
        """
        controller = ControllerProcess(self.run_dir / f"{name}-recovery", env,
                                       log=self.log_path(name), snapshot_s=5, backup_s=30,
                                       cwd=ROOT).start()  # fmt: skip
        controller.wait_ready(120)  # it reads what is sent from now on (INPUT_START=end)
        assert controller.process is not None
        return self.add(Service(name, controller.process, self.log_path(name),
                                controller=controller))  # fmt: skip

    def crash_controller(self, name: str = "controller", down_s: float = 0.0) -> None:
        """SIGKILL the controller's whole process group (a crash), then start it again.

        The same recovery store and log: it resumes from its last snapshot, as a pod does.
        """
        service = next(s for s in self.services if s.name == name)
        assert service.controller is not None, f"{name} is no controller of ours"
        service.controller.kill()
        time.sleep(down_s)
        service.controller.start()
        assert service.controller.process is not None
        service.process = service.controller.process

    def start_rtcef(self, name: str, python: str) -> Service:
        """An original service: ``python main.py -s NAME -c conf.ini`` from the vendored tree."""
        assert self.config is not None, "write the configuration first"
        env = {"PYTHONDONTWRITEBYTECODE": "1", "PYTHONUNBUFFERED": "1"}
        service = self.start(
            name, [python, str(VENDOR / "main.py"), "-s", name, "-c", str(self.config)], env=env
        )
        service.finite = name == "replayer"  # replays the file once, then exits
        return service

    def start_wayeb(self, name: str, classpath: str, args: Sequence[str],
                    ports: Sequence[int], deadline: float = 60.0) -> Service:  # fmt: skip
        """A Wayeb JVM (``server`` or ``service``), returned once its py4j Java port listens."""
        # Wayeb's logback truncates ./wayeb.log at start: each JVM gets its own folder.
        folder = kafka_broker.ensure_dir(self.run_dir / name)
        command = wayeb.java_command(classpath, *args, logback=HERE / "logback.xml")
        service = self.start(name, command, cwd=folder)
        limit = time.monotonic() + deadline
        while not port_open(ports[0]):  # the Java side; the Python one opens per client
            if not service.alive():
                raise StackError(f"{name} exited during start-up:\n{_tail(service.log_text())}")
            if time.monotonic() > limit:
                raise StackError(f"{name} not listening on {ports[0]} after {deadline:.0f}s")
            time.sleep(0.2)
        return service

    def check_alive(self) -> None:
        """Raise, with its log tail, if a started process has died."""
        for service in self.services:
            if not service.alive() and not (service.finite and service.process.returncode == 0):
                raise StackError(
                    f"{service.name} exited with code {service.process.returncode}:\n"
                    + _tail(service.log_text())
                )

    def close(self) -> None:
        """Stop every process (its whole session), without being interrupted.

        All get SIGINT at once. The controller's helper stops it (SIGKILL after
        ``CONTROLLER_GRACE_S``); the others get SIGTERM, then SIGKILL, each after a
        grace period (``GRACES_S``). A second Ctrl-C or a SIGTERM meanwhile is held
        until all are stopped, then delivered: it cannot leave one running.
        """
        with signals_held():
            controllers = [s.controller for s in self.services if s.controller is not None]
            pending = [s.process for s in self.services if s.controller is None]
            _signal(pending, signal.SIGINT)
            sent = time.monotonic()
            stop_all(controllers, signal.SIGINT, CONTROLLER_GRACE_S)  # the others meanwhile
            _wait(pending, sent + GRACES_S[0])
            for sig, grace in ((signal.SIGTERM, GRACES_S[1]), (signal.SIGKILL, KILLED_S)):
                pending = _signal(pending, sig)
                _wait(pending, time.monotonic() + grace)
        self.services.clear()


def _signal(processes: list[subprocess.Popen[bytes]], sig: int) -> list[subprocess.Popen[bytes]]:
    """Send ``sig`` to the session of each process still running; those processes."""
    running = [p for p in processes if p.poll() is None]
    for process in running:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, sig)
    return running


def _wait(processes: list[subprocess.Popen[bytes]], limit: float) -> None:
    """Wait until every process has exited or the clock reads ``limit``."""
    while any(p.poll() is None for p in processes) and time.monotonic() < limit:
        time.sleep(0.05)


def port_open(port: int, host: str = "127.0.0.1") -> bool:
    """Whether something accepts connections on ``host:port``."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.settimeout(0.5)
        return sock.connect_ex((host, port)) == 0


def _tail(text: str, lines: int = 40) -> str:
    return "\n".join(text.splitlines()[-lines:])


def check_ports_free() -> None:
    """Refuse to start when the loop's fixed ports are taken (another loop, or leftovers).

    Checked before anything is deleted or started: Wayeb's Kafka client hard-codes
    ``localhost:9092`` and its py4j gateways listen on fixed ports, so two loops
    cannot share a machine, and a leftover JVM would answer in the new one's place.
    """
    taken = [p for p in (BROKER_PORT, SERVER_PORTS[0], SERVICE_PORTS[0]) if port_open(p)]
    if taken:
        raise StackError(
            f"port(s) {taken} in use: the real loop needs 9092 (Kafka, hard-coded in Wayeb)"
            f" and {SERVER_PORTS[0]}/{SERVICE_PORTS[0]} (Wayeb's py4j gateways). Another loop"
            " or a leftover process holds them: `ss -ltnp` names it; stop it and retry"
        )


@contextmanager
def loop_broker(state_dir: Path) -> Iterator[kafka_broker.Broker]:
    """A fresh broker on ``localhost:9092`` (call ``check_ports_free`` first)."""
    server = kafka_broker.start(state_dir, port=BROKER_PORT)
    try:
        yield server
    finally:
        server.stop()
