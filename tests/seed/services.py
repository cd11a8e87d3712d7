"""The seed's services (the PyFlink port's Flink jobs) started for a run, without Docker or root.

Test infrastructure, like ``tests/rtcef/stack.py``, whose ``Stack`` it uses: each
process is started in its own session with its log in ``<run>/logs/<name>.out``,
and stopped by its pid (the command line's ``up`` records the pids in
``<run>/services.json`` for ``down``). What runs is built by
``tests/seed/build.py`` from ``vendor/flink-rtcef`` (read-only).

The jobs
    ``ModelFactoryJob`` (the factory) and ``InferenceJob`` (Wayeb engine,
    Collector and Observer in one job). Each job's ``main()`` calls
    ``StreamExecutionEnvironment.getExecutionEnvironment()``, which outside a
    cluster runs the job in a local MiniCluster inside the same JVM:
    ``java <flags> -cp <job jar>:<runtime jars> <main class> <arguments>``. The
    arguments are the port's ``Makefile`` ones (``submit-factory``,
    ``submit-inference``) plus the broker: both jobs take ``--kafka-servers``
    (required by the factory; the inference job falls back to ``kafka:29092``,
    the compose network's name, and the Makefile never passes it). Nothing else
    about Kafka is hard-coded.

JVM flags
    * ``-XX:ActiveProcessorCount=1``: the local environment's parallelism is
      ``Runtime.availableProcessors()`` and no argument or configuration file
      changes it. It must be 1: with two subtasks one Kafka source subtask idles
      (one partition per topic), the watermark of the event-time windows never
      advances, and the Observer never scores (checked here: 5,000 records at
      parallelism 2 gave 500 engine heartbeats but no ``GLOBAL_REPORT``).
    * The ``--add-opens``/``--add-exports`` Flink itself ships for Java 17
      (``env.java.opts.all`` of Flink 1.18+, without the ``jdk.compiler`` exports
      only its table planner needs); Flink 1.17 does not support Java 17
      officially, but runs with them, checkpoints included.
    * ``-Dlogback.configurationFile=tests/seed/logback.xml`` (the Wayeb fork's
      own ``logback.xml`` logs everything at DEBUG to stdout and ``./wayeb.log``),
      ``-Djava.io.tmpdir=<run>/tmp/<name>`` (the MiniCluster's blob and spill
      folders), ``-XX:-UsePerfData`` (see below).

``/opt/flink`` without root
    The factory reads ``/opt/flink/data/pattern.sre`` and ``declarations.sre``
    and writes ``/opt/flink/data/datasets/`` and ``/opt/flink/data/saved_models/``
    (string literals in ``ModelFactoryEngine``; the model paths it reports are
    these). The engine reads the models at the paths it is told, and the
    Collector writes ``--outputPath`` (default ``/opt/flink/data/buckets``) and
    sends that path to the factory. Only ``--outputPath`` and ``--modelPath`` are
    arguments, and no path is built from a system property, so a JVM option
    cannot move them. Each JVM therefore runs under
    ``unshare --user --map-root-user --mount`` (an unprivileged user and mount
    namespace: no root, no setuid helper) where ``<run>/flink`` is mounted at
    ``/opt/flink``; every file the jobs write lands in the run's folder, owned by
    the user who started it. Here ``/opt`` exists (owned by root) but not
    ``/opt/flink``, and a bind mount needs an existing mount point, which cannot
    be created in a root-owned folder from the namespace. So ``MOUNT_SCRIPT``
    binds the original ``/opt`` to ``<run>/.opt``, mounts a tmpfs over ``/opt``,
    binds each original entry back into it (symlinks are copied) so nothing
    under ``/opt`` disappears (a JDK may live there), and binds ``<run>/flink``
    at ``/opt/flink``; where ``/opt/flink`` already exists it binds over it
    directly. (Building the tmpfs elsewhere and ``mount --move``-ing it onto
    ``/opt`` works as root but is refused to an unprivileged user.) Rejected:
    an overlayfs on ``/opt`` (needs Linux 5.11+ for unprivileged use and an
    upper folder on a file system that supports it), writing ``/opt/flink`` as
    root, and patching the jobs. Both jobs must see the same folder: the
    factory's model paths are read by the engine. The JVM sees
    itself as root inside, hence ``-XX:-UsePerfData`` (it would try
    ``/tmp/hsperfdata_root``). Unprivileged user namespaces must be enabled
    (``check_user_namespaces`` says so when they are not, e.g. under Ubuntu's
    ``kernel.apparmor_restrict_unprivileged_userns=1``).

Topics (one partition each; values are JSON text, keys are null)
    ========================  ==========================  ===============================
    topic                     written by                  read by (start offset)
    ========================  ==========================  ===============================
    ``maritime_input``        the feeder (``feed``)       InferenceJob (earliest)
    ``dataset_versions``      InferenceJob's Collector    factory (latest)
    ``assembly_reports``      factory                     InferenceJob's Collector
                                                          (earliest)
    ``observer_instructions`` InferenceJob's Observer     the controller
    ``factory_commands``      the controller              factory (latest)
    ``model_reports``         factory                     the controller, and InferenceJob's
                                                          engine (latest)
    ``enginesync``            the controller              InferenceJob's engine (latest)
    ========================  ==========================  ===============================

    The jobs' Kafka sources fail the job at start if a topic is missing, so
    ``create_topics`` creates all seven first. It creates them with
    ``message.timestamp.type=LogAppendTime``, as the port's broker is configured
    (``KAFKA_LOG_MESSAGE_TIMESTAMP_TYPE``): the jobs' sinks stamp each record
    with its element's event time (2015-2016 for this sample), a segment rolls
    whenever those stamps span more than ``segment.ms`` (7 days), and the next
    retention check (every 5 minutes) deletes every segment older than 7 days,
    so with ``CreateTime`` the broker empties ``observer_instructions``,
    ``dataset_versions`` and ``assembly_reports`` minutes after they are written.

Order
    topics, then the factory (it reads commands and data set notifications from
    the latest offset: it must be up before the stream and the controller), then
    the inference job (its engine reads reports and pause/play from the latest
    offset), then the controller, then the stream. A job is ready when each of
    its Kafka sources has been given its partitions (``Adding split(s) to
    reader`` in its log: 2 for the factory, 3 for the inference job).

Quirks seen against them (for operators and the orchestrator)
    * The engine drops the records it reads while paused (no buffering), and
      keeps only the latest pause/play in its broadcast state, applied at its
      next record: a ``play`` followed at once by the next round's ``pause``
      (a queued instruction) is never applied, the engine stays paused and the
      round's model is never served.
    * The Observer is chatty: one pass of the sample without a controller gives
      101 instructions (95 ``optimize``, 6 ``retrain``) from 468 hourly scores;
      each carries a new ``model_id`` (``dynamic_vN``).
    * The factory's catch-all error path replies ``{"status": "error",
      "error": ...}`` without ``reply_id``; its checked errors carry it, including
      the one answering ``opt_initialise`` when it has no data set yet (then every
      ``opt_step`` fails with "No optimization session active"). Each ``opt_step``
      uses up a model id. A step that fails after its parameters are parsed (too
      few events, an I/O error) still appends them to the list ``best_i``
      indexes, so a resent step shifts the indices of the steps after it.
    * The factory is one operator: data set notifications wait behind a running
      ``opt_step``. Its ``params_dict`` is a ``Map.of``, whose key order changes
      from one JVM to the next. Model swaps are driven by ``model_reports``
      records carrying ``model_path`` (``train`` and ``opt_finalise``), applied at
      the engine's next record; ``play`` carries none.
    * A swap carries the running automaton's state (``Run.snapshotState``) into
      the new model's run. When the new model has no such state, the engine's
      task fails at its next record (``NoSuchElementException: key not found:
      129`` in ``SPSTInterface.getSdfaStateFor``), restarts from its checkpoint,
      swaps again and fails again; after 3 failures in 5 minutes (its restart
      strategy) the job fails and its JVM exits. Seen here on the swap from the
      starting model to an OPTIMIZE round's; another run's seven swaps went
      through.
    * After such a restart the Collector numbers its data sets from 0 again
      (transient state), and the factory reassembles ``dataset_version_0.csv``.

Command line (``python -m tests.seed.services``)::

    up   --bootstrap HOST:PORT --run DIR   # build, data, model, topics, both jobs; returns
    feed --bootstrap HOST:PORT --run DIR [--rate N] [--limit N]
    down --run DIR                         # stops the jobs recorded in DIR/services.json
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

from tests.rtcef.stack import Service, Stack, StackError
from tests.seed import build as seed_build
from tests.seed import dataset

HERE = Path(__file__).resolve().parent
LOGBACK = HERE / "logback.xml"

#: Sets up the jobs' view of /opt/flink, then execs the JVM (``$1`` our folder, ``$2`` a
#: folder of ours that receives the original /opt, so its entries can be bound back).
MOUNT_SCRIPT = r"""
set -eu
data=$1; original=$2; shift 2
if [ -d /opt/flink ]; then
    mount --bind "$data" /opt/flink
elif [ -d /opt ]; then
    mkdir -p "$original"
    mount --rbind /opt "$original"
    mount -t tmpfs -o mode=755 seed-opt /opt
    for entry in "$original"/* "$original"/.[!.]*; do
        [ -e "$entry" ] || [ -L "$entry" ] || continue
        name=${entry##*/}
        if [ -L "$entry" ]; then cp -P "$entry" "/opt/$name"
        elif [ -d "$entry" ]; then mkdir "/opt/$name"; mount --rbind "$entry" "/opt/$name"
        else : > "/opt/$name"; mount --bind "$entry" "/opt/$name"; fi
    done
    mkdir /opt/flink
    mount --bind "$data" /opt/flink
else
    echo "seed: there is no /opt to mount /opt/flink in" >&2; exit 97
fi
exec "$@"
"""

#: Flink's own JVM options for Java 17 (``env.java.opts.all`` since Flink 1.18).
JDK17_FLAGS = (
    "--add-exports=java.base/sun.net.util=ALL-UNNAMED",
    "--add-exports=java.rmi/sun.rmi.registry=ALL-UNNAMED",
    "--add-exports=java.security.jgss/sun.security.krb5=ALL-UNNAMED",
    "--add-opens=java.base/java.lang=ALL-UNNAMED",
    "--add-opens=java.base/java.net=ALL-UNNAMED",
    "--add-opens=java.base/java.io=ALL-UNNAMED",
    "--add-opens=java.base/java.nio=ALL-UNNAMED",
    "--add-opens=java.base/sun.nio.ch=ALL-UNNAMED",
    "--add-opens=java.base/java.lang.reflect=ALL-UNNAMED",
    "--add-opens=java.base/java.text=ALL-UNNAMED",
    "--add-opens=java.base/java.time=ALL-UNNAMED",
    "--add-opens=java.base/java.util=ALL-UNNAMED",
    "--add-opens=java.base/java.util.concurrent=ALL-UNNAMED",
    "--add-opens=java.base/java.util.concurrent.atomic=ALL-UNNAMED",
    "--add-opens=java.base/java.util.concurrent.locks=ALL-UNNAMED",
)

#: The log line of a Kafka source reader that has its partitions (and so its start offsets).
SPLITS_ASSIGNED = "Adding split(s) to reader"
#: Log lines of a job that failed for good: the factory has no restart strategy, the
#: inference job gives up after 3 failures in 5 minutes.
JOB_FAILED = re.compile(r"switched from state \w+ to FAILED|Job execution failed")
#: The exception that failed a task (the innermost one Flink logs).
CAUSE = re.compile(r"^(?:Caused by: )?((?:[a-z]\w*\.)+\w*(?:Exception|Error): .*)$", re.MULTILINE)


class SeedServicesError(StackError):
    """The seed's services could not be prepared or started."""


@dataclass(frozen=True)
class Topics:
    """The port's topic names (its ``init-kafka`` target)."""

    input: str = "maritime_input"
    instructions: str = "observer_instructions"
    reports: str = "model_reports"
    commands: str = "factory_commands"
    sync: str = "enginesync"
    datasets: str = "dataset_versions"
    assembly: str = "assembly_reports"

    def all(self) -> tuple[str, ...]:
        """Every topic."""
        return tuple(asdict(self).values())


@dataclass(frozen=True)
class InferenceParams:
    """``InferenceJob`` arguments, defaults from the Makefile's ``submit-inference``."""

    horizon: int = 600
    threshold: float = 0.1
    max_spread: int = 5
    reporting_distance: int = 3600  # event-time seconds per Observer score
    optimize_diff: float = 0.10
    grace: int = 3  # scores ignored after an instruction
    bucket_size: int = 86_400  # Collector bucket (event-time seconds)
    last_k: int = 7  # buckets per data set
    naming: str = "dt_bucket_"
    extra: tuple[str, ...] = ()  # e.g. ("--observer-low-score", "0.1")


# --------------------------------------------------------------------------- the run folder


@dataclass(frozen=True)
class RunFolder:
    """A run's folder: ``flink/`` is what the jobs see as ``/opt/flink``."""

    root: Path

    @property
    def flink(self) -> Path:
        return self.root / "flink"

    @property
    def data(self) -> Path:
        """The host folder of ``/opt/flink/data``."""
        return self.flink / "data"

    def host_path(self, job_path: str) -> Path:
        """Where a path the jobs use (``/opt/flink/...``) is on this machine."""
        prefix = "/opt/flink/"
        if not job_path.startswith(prefix):
            raise ValueError(f"{job_path} is not under {prefix}")
        return self.flink / job_path[len(prefix) :]


def prepare_run_folder(run_dir: Path, initial_model: Path, source: Path | None = None) -> RunFolder:
    """Create ``run_dir/flink/data`` as the jobs expect it; return the folder.

    The pattern and declarations are the vendored ``data/*.sre`` (what the
    Makefile trains with and the factory reads); the starting model goes to
    ``saved_models/tmp.spst`` (the Makefile's ``MODEL_PATH``). The factory
    writes its models into ``saved_models/`` without creating it.
    """
    source = source or seed_build.port_source_dir()
    folder = RunFolder(run_dir)
    for sub in ("saved_models", "datasets", "buckets"):
        (folder.data / sub).mkdir(parents=True, exist_ok=True)
    for name in ("pattern.sre", "declarations.sre"):
        shutil.copyfile(source / "data" / name, folder.data / name)
    shutil.copyfile(initial_model, folder.data / "saved_models" / "tmp.spst")
    return folder


def ensure_initial_model(
    build: seed_build.SeedBuild, train: Path, source: Path | None = None, quiet: bool = False
) -> Path:
    """The engine's starting model, trained as the Makefile's ``train`` target; cached.

    ``learnSPST`` of the fork's CLI on ``train`` (``maritimejson``), with the
    Makefile's ``pMin`` 0.0, ``gammaMin`` 0.001 and ``alpha`` 1.05. Cached in the
    user cache under a digest of the Wayeb jar, the training stream and the
    pattern files.
    """
    source = source or seed_build.port_source_dir()
    patterns = source / "data" / "pattern.sre"
    declarations = source / "data" / "declarations.sre"
    digest = hashlib.sha256()
    for path in (build.wayeb_jar, train, patterns, declarations):
        data = path.read_bytes()
        digest.update(f"{len(data)}\0".encode())
        digest.update(data)
    model = seed_build.cache_root() / "seed-models" / f"tmp-{digest.hexdigest()[:12]}.spst"
    if model.is_file():
        return model
    model.parent.mkdir(parents=True, exist_ok=True)
    partial = model.with_suffix(".partial")
    workdir = model.parent / "work"  # Wayeb writes ./wayeb.log despite our logback.xml
    workdir.mkdir(exist_ok=True)
    if not quiet:
        print("seed: training the starting model (learnSPST, first run only)...", file=sys.stderr)
    command = [
        _java(), "-Xmx2g", f"-Dlogback.configurationFile={LOGBACK}", "-XX:-UsePerfData",
        "-cp", build.wayeb_classpath, seed_build.WAYEB_CLI, "learnSPST",
        "--fsmModel:dsfa", f"--patterns:{patterns}", f"--declarations:{declarations}",
        f"--stream:{train}", "--domainSpecificStream:maritimejson",
        f"--outputSpst:{partial}", "--pMin:0.0", "--gammaMin:0.001", "--alpha:1.05",
    ]  # fmt: skip
    result = subprocess.run(
        command, cwd=workdir, capture_output=True, text=True, check=False, timeout=600
    )
    if result.returncode != 0 or not partial.is_file():
        partial.unlink(missing_ok=True)
        output = (result.stdout + result.stderr).splitlines()[-30:]
        raise SeedServicesError("learnSPST failed:\n" + "\n".join(output))
    partial.rename(model)
    return model


# --------------------------------------------------------------------------- commands


def _java() -> str:
    java = shutil.which("java")
    if java is None:
        raise SeedServicesError("java is not on PATH: the jobs need a JDK 11+ (17 is used here)")
    return java


def check_user_namespaces() -> None:
    """Raise if this user cannot create the user and mount namespace the jobs run in."""
    if shutil.which("unshare") is None:
        raise SeedServicesError("unshare (util-linux) is not on PATH: it runs the jobs")
    probe = subprocess.run(
        ["unshare", "--user", "--map-root-user", "--mount", "true"],
        capture_output=True, text=True, check=False,
    )  # fmt: skip
    if probe.returncode != 0:
        raise SeedServicesError(
            "cannot create an unprivileged user namespace (unshare --user --map-root-user "
            f"--mount: {probe.stderr.strip()}); the jobs need one to see the run's folder at "
            "/opt/flink. Check sysctl user.max_user_namespaces, "
            "kernel.unprivileged_userns_clone or kernel.apparmor_restrict_unprivileged_userns."
        )


def java_command(
    build: seed_build.SeedBuild,
    main_class: str,
    args: Sequence[str],
    *,
    tmp_dir: Path,
    heap: str = "1g",
) -> list[str]:
    """The JVM running one job's ``main()`` in a local MiniCluster of parallelism 1."""
    return [
        _java(), f"-Xmx{heap}", "-XX:ActiveProcessorCount=1", "-XX:-UsePerfData",
        f"-Djava.io.tmpdir={tmp_dir}", f"-Dlogback.configurationFile={LOGBACK}",
        *JDK17_FLAGS, "-cp", build.classpath, main_class, *args,
    ]  # fmt: skip


def with_flink_folder(folder: RunFolder, command: Sequence[str]) -> list[str]:
    """``command`` run where ``/opt/flink`` is ``folder.flink`` (see the module docstring)."""
    return [
        "unshare", "--user", "--map-root-user", "--mount",
        "sh", "-c", MOUNT_SCRIPT, "seed-opt", str(folder.flink), str(folder.root / ".opt"),
        *command,
    ]  # fmt: skip


def factory_args(bootstrap: str, topics: Topics = Topics()) -> list[str]:
    """The Makefile's ``submit-factory`` arguments.

    It passes no ``--horizon``/``--threshold``/``--maxSpread``, so the factory
    scores its candidates with its defaults 600/0.3/5, not the engine's 0.1.
    """
    return [
        "--kafka-servers", bootstrap, "--commands-topic", topics.commands,
        "--datasets-topic", topics.datasets, "--output-topic", topics.reports,
        "--assembly-topic", topics.assembly,
    ]  # fmt: skip


def inference_args(
    bootstrap: str, topics: Topics = Topics(), params: InferenceParams = InferenceParams()
) -> list[str]:
    """The Makefile's ``submit-inference`` arguments, plus the broker and the sync topic."""
    return [
        "--kafka-servers", bootstrap,
        "--modelPath", "/opt/flink/data/saved_models/tmp.spst",
        "--inputTopic", topics.input, "--instructions-topic", topics.instructions,
        "--model-reports-topic", topics.reports, "--datasets-topic", topics.datasets,
        "--assembly-topic", topics.assembly, "--enginesync-topic", topics.sync,
        "--horizon", str(params.horizon), "--threshold", str(params.threshold),
        "--maxSpread", str(params.max_spread), "--inputSource", "kafka",
        "--observer-optimize-diff", str(params.optimize_diff),
        "--observer-grace", str(params.grace),
        "--reportingDistance", str(params.reporting_distance),
        "--bucketSize", str(params.bucket_size), "--lastK", str(params.last_k),
        "--naming", params.naming, *params.extra,
    ]  # fmt: skip


# --------------------------------------------------------------------------- Kafka


def controller_env(bootstrap: str, topics: Topics = Topics()) -> dict[str, str]:
    """This controller's settings against these services: the seed dialect, their topics."""
    return {
        "KAFKA_BOOTSTRAP_SERVERS": bootstrap,
        "CONTROLLER_DIALECT": "seed",
        "INSTRUCTION_TOPIC": topics.instructions,
        "REPORT_TOPIC": topics.reports,
        "COMMAND_TOPIC": topics.commands,
        "SYNC_TOPIC": topics.sync,
    }


def create_topics(bootstrap: str, topics: Topics = Topics(), extra: Sequence[str] = ()) -> None:
    """Create the seven topics and ``extra`` (one partition each, ``LogAppendTime``).

    See the module docstring; the broker's clock then dates every message, whoever wrote it.
    """
    from confluent_kafka.admin import AdminClient, NewTopic

    admin = AdminClient({"bootstrap.servers": bootstrap})
    wanted = [
        NewTopic(name, num_partitions=1, replication_factor=1,
                 config={"message.timestamp.type": "LogAppendTime"})
        for name in (*topics.all(), *extra)
    ]  # fmt: skip
    for name, future in admin.create_topics(wanted, operation_timeout=30).items():
        try:
            future.result(timeout=60)
        except Exception as error:
            if "TOPIC_ALREADY_EXISTS" not in str(error):
                raise SeedServicesError(f"creating topic {name}: {error}") from error


def feed(
    bootstrap: str,
    path: Path,
    topic: str = Topics.input,
    *,
    rate: float | None = None,
    limit: int | None = None,
    skip: int = 0,
    stop: threading.Event | None = None,
    hold: Callable[[], bool] | None = None,
    on_sent: Callable[[int, float], None] | None = None,
) -> int:
    """Produce ``path``'s lines (from line ``skip``) as values, like the port's ``data_feeder.py``.

    ``rate`` is in records per second (``None``: as fast as the producer goes,
    the feeder's ``--delay 0``); ``limit`` stops after that many; ``stop`` ends
    early. While ``hold()`` is true nothing is sent (what is produced is flushed
    first) and the pace restarts after it. ``on_sent(sent, held_s)`` hears about
    progress every 100 records and at the end. Unlike ``data_feeder.py``, the file
    is sent once (it loops forever). Returns the number of records produced
    (every one delivered).
    """
    from confluent_kafka import KafkaError, Message, Producer

    failures: list[KafkaError] = []

    def on_delivery(error: KafkaError | None, _message: Message) -> None:
        if error is not None:
            failures.append(error)

    producer = Producer({"bootstrap.servers": bootstrap, "linger.ms": 20, "acks": "all"})
    began = time.monotonic()
    sent = paced = 0  # paced: records sent since the pace (re)started at ``began``
    held = 0.0
    with path.open(encoding="utf-8") as lines:
        for index, line in enumerate(lines):
            if index < skip or not line.strip():
                continue
            if (limit is not None and sent >= limit) or (stop is not None and stop.is_set()):
                break
            if hold is not None and hold():
                producer.flush(30)
                waited = time.monotonic()
                while hold() and not (stop is not None and stop.is_set()):
                    time.sleep(0.05)
                held += time.monotonic() - waited
                began, paced = time.monotonic(), 0
            if rate:
                ahead = began + paced / rate - time.monotonic()
                if ahead > 0:
                    time.sleep(ahead)
            while True:
                try:
                    producer.produce(topic, value=line.strip().encode(), on_delivery=on_delivery)
                    break
                except BufferError:
                    producer.poll(0.1)
            producer.poll(0)
            sent += 1
            paced += 1
            if on_sent is not None and sent % 100 == 0:
                on_sent(sent, held)
    remaining = producer.flush(60)
    if on_sent is not None:
        on_sent(sent, held)
    if remaining or failures:
        raise SeedServicesError(f"feeding {topic}: {remaining} undelivered, errors {failures[:3]}")
    return sent


# --------------------------------------------------------------------------- the services


@dataclass
class SeedServices:
    """The two jobs of one run, on a ``Stack`` (stopped in reverse order by ``close``)."""

    folder: RunFolder
    build: seed_build.SeedBuild
    bootstrap: str
    topics: Topics = field(default_factory=Topics)
    stack: Stack = field(init=False)

    def __post_init__(self) -> None:
        self.stack = Stack(self.folder.root)

    def start_job(
        self, name: str, main_class: str, args: Sequence[str], *, sources: int,
        heap: str = "1g", deadline: float = 180.0,
    ) -> tuple[Service, float]:  # fmt: skip
        """Start a job; return it and its start-up time once its ``sources`` have partitions."""
        tmp_dir = self.folder.root / "tmp" / name
        tmp_dir.mkdir(parents=True, exist_ok=True)
        command = with_flink_folder(
            self.folder, java_command(self.build, main_class, args, tmp_dir=tmp_dir, heap=heap)
        )
        began = time.monotonic()
        service = self.stack.start(name, command)
        wait_job_ready(service, sources, deadline)
        return service, time.monotonic() - began

    def start_factory(self, heap: str = "1g") -> tuple[Service, float]:
        """``ModelFactoryJob``: commands and data set notifications, both from the latest offset."""
        return self.start_job(
            "factory", seed_build.FACTORY_CLASS, factory_args(self.bootstrap, self.topics),
            sources=2, heap=heap,
        )  # fmt: skip

    def start_inference(
        self, params: InferenceParams = InferenceParams(), heap: str = "1g"
    ) -> tuple[Service, float]:
        """``InferenceJob``: the stream (earliest), reports and pause/play (latest), ACKs."""
        return self.start_job(
            "inference", seed_build.INFERENCE_CLASS,
            inference_args(self.bootstrap, self.topics, params), sources=3, heap=heap,
        )  # fmt: skip

    def check_alive(self) -> None:
        """Raise, with its log tail, if a job's JVM has exited or its job has failed."""
        self.stack.check_alive()
        for service in self.stack.services:
            text = service.log_text()
            if JOB_FAILED.search(text):
                causes = CAUSE.findall(text)
                cause = f" ({causes[-1].strip()[:200]})" if causes else ""
                raise SeedServicesError(f"{service.name}: its job failed{cause}:\n{_tail(service)}")

    def close(self) -> None:
        """Stop both JVMs by pid (SIGINT, then SIGTERM, then SIGKILL)."""
        self.stack.close()


def wait_job_ready(service: Service, sources: int, deadline: float = 180.0) -> None:
    """Return once ``sources`` Kafka source readers have their partitions; raise if it fails."""
    limit = time.monotonic() + deadline
    while True:
        text = service.log_text()
        if text.count(SPLITS_ASSIGNED) >= sources:
            time.sleep(1.0)  # the readers resolve "latest" to an offset right after
            return
        if not service.alive():
            raise SeedServicesError(
                f"{service.name} exited with code {service.process.returncode} during start-up:"
                f"\n{_tail(service)}"
            )
        if JOB_FAILED.search(text):
            raise SeedServicesError(f"{service.name}: the job failed at start:\n{_tail(service)}")
        if time.monotonic() > limit:
            raise SeedServicesError(
                f"{service.name}: its sources had no partitions after {deadline:.0f}s:\n"
                + _tail(service)
            )
        time.sleep(0.3)


def _tail(service: Service, lines: int = 40) -> str:
    return "\n".join(line[:400] for line in service.log_text().splitlines()[-lines:])


# --------------------------------------------------------------------------- command line


def _up(args: argparse.Namespace) -> int:
    run_dir: Path = args.run.resolve()
    build = seed_build.ensure_built()
    check_user_namespaces()
    prepared = dataset.prepare(run_dir / "input")
    model = ensure_initial_model(build, prepared.train)
    folder = prepare_run_folder(run_dir, model)
    create_topics(args.bootstrap)
    services = SeedServices(folder, build, args.bootstrap)
    try:
        factory, factory_s = services.start_factory()
        inference, inference_s = services.start_inference()
    except BaseException:
        services.close()
        raise
    state = {
        "bootstrap": args.bootstrap,
        "pids": {"factory": factory.process.pid, "inference": inference.process.pid},
        "startup_s": {"factory": round(factory_s, 1), "inference": round(inference_s, 1)},
        "input": str(prepared.infer),
        "records": prepared.infer_records,
    }
    (run_dir / "services.json").write_text(json.dumps(state, indent=1))
    print(json.dumps(state, indent=1))
    return 0


def _feed(args: argparse.Namespace) -> int:
    run_dir: Path = args.run.resolve()
    path = run_dir / "input" / "infer.jsonl"
    began = time.monotonic()
    sent = feed(args.bootstrap, path, rate=args.rate, limit=args.limit, skip=args.skip)
    print(f"{sent} records to {Topics.input} in {time.monotonic() - began:.1f}s", file=sys.stderr)
    return 0


def _down(args: argparse.Namespace) -> int:
    state_file = args.run.resolve() / "services.json"
    if not state_file.exists():
        print(f"seed: no services recorded in {state_file}", file=sys.stderr)
        return 0
    state = json.loads(state_file.read_text())
    for name, pid in reversed(state["pids"].items()):
        outcome = "stopped" if stop_job_pid(pid) else "had already exited"
        print(f"seed: {name} (pid {pid}) {outcome}", file=sys.stderr)
    state_file.unlink()
    return 0


def stop_job_pid(pid: int, grace: float = 15.0) -> bool:
    """Stop a job started by ``up`` (a session leader) by pid; whether it was still running.

    A pid whose command line is not one of the jobs' (it exited and the pid was
    reused) is left alone.
    """
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
    except FileNotFoundError:
        return False
    if b"edu.insa_lyon.streams.rtcef_flink" not in cmdline:
        return False
    for sig, wait in ((signal.SIGINT, 3.0), (signal.SIGTERM, grace), (signal.SIGKILL, 30.0)):
        try:
            os.killpg(pid, sig)
        except ProcessLookupError:
            return True
        limit = time.monotonic() + wait
        while time.monotonic() < limit:
            if not Path(f"/proc/{pid}").exists():
                return True
            time.sleep(0.2)
    return True


def main(argv: Sequence[str] | None = None) -> int:
    """Command-line entry point: ``up``, ``feed`` or ``down``."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    actions = parser.add_subparsers(dest="action", required=True)
    up = actions.add_parser("up", help="build if needed, start the factory then the inference job")
    up.add_argument("--bootstrap", required=True)
    up.add_argument("--run", type=Path, required=True, help="the run's folder")
    feed_ = actions.add_parser("feed", help="produce the stream (input/infer.jsonl)")
    feed_.add_argument("--bootstrap", required=True)
    feed_.add_argument("--run", type=Path, required=True)
    feed_.add_argument("--rate", type=float, help="records per second (default: no pause)")
    feed_.add_argument("--limit", type=int)
    feed_.add_argument("--skip", type=int, default=0, help="lines of the file to skip first")
    down = actions.add_parser("down", help="stop the jobs that up started")
    down.add_argument("--run", type=Path, required=True)
    args = parser.parse_args(argv)
    try:
        return {"up": _up, "feed": _feed, "down": _down}[args.action](args)
    except (seed_build.SeedBuildError, StackError, OSError, ValueError) as error:
        print(f"seed: {error}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
