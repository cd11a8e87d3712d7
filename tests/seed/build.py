"""The seed's services, built from the vendored PyFlink port (``vendor/flink-rtcef``, read-only).

Test infrastructure, standard library only, like ``tests/rtcef/wayeb.py``. The port
(rayan-insa/flink-RTCEF) ships two Java Flink jobs, ``ModelFactoryJob`` and
``InferenceJob`` (the latter also runs the Collector and the Observer), built
with Maven against a fork of Wayeb that upstream builds with sbt. Three stages,
each cached in the per-user cache under a digest of what it is built from, built
once in a staging folder that is renamed into place when Maven succeeds:

``seed-wayeb-<digest>``
    The Wayeb fork (``com.gitlab.elias:wayeb_2.12:0.6.0-SNAPSHOT``) compiled by
    ``wayeb-fork-pom.xml`` beside this file (scala-maven-plugin, Maven Central
    only; see the pom for the three dependencies it changes) and installed into
    the private local repository ``seed-m2``. Digest: the pom, the fork's
    ``build.sbt`` and ``cef/src/main``.
``seed-job-<digest>``
    A copy of the port's ``java/`` folder (Maven writes ``target/`` next to the
    pom, and the vendored tree is read-only), packaged with
    ``mvn -DskipTests package`` against that repository:
    ``job/target/flink-rtcef-1.0-SNAPSHOT.jar``. Every dependency of the job is
    ``provided``, so the jar holds the port's classes only. Digest: the Wayeb
    stage's and every file under ``java/``.
``seed-runtime-<digest>``
    What a Flink cluster would provide, as ``lib/*.jar``: Flink 1.17.2, the Kafka
    connector and kafka-clients 3.2.3, flink-scala and chill, the Wayeb fork with
    its dependencies and logback, resolved in one Maven mediation by
    ``flink-runtime-pom.xml`` and copied by ``dependency:copy-dependencies``.
    Digest: that pom and the Wayeb stage's.

``seed-m2`` is a local repository of our own (``-Dmaven.repo.local``), never
``~/.m2``: the fork's SNAPSHOT is installed there, and Maven 3.8 cannot chain a
private repository in front of the user's, so a cold build downloads its
plugins and dependencies once into it (about 250 MB). Because the installed
SNAPSHOT is shared by every digest, the fork is re-installed from its stage
before a job or runtime stage is built, all under one lock.

Command line::

    python tests/seed/build.py           # build what is missing; print the classpaths
    python tests/seed/build.py --quiet   # the same without progress messages
"""

from __future__ import annotations

import argparse
import fcntl
import hashlib
import os
import shlex
import shutil
import stat
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from functools import partial
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
WAYEB_POM = HERE / "wayeb-fork-pom.xml"
RUNTIME_POM = HERE / "flink-runtime-pom.xml"

#: The coordinates the port's ``java/pom.xml`` asks for (``provided``).
WAYEB_GROUP, WAYEB_ARTIFACT, WAYEB_VERSION = "com.gitlab.elias", "wayeb_2.12", "0.6.0-SNAPSHOT"
WAYEB_JAR = f"{WAYEB_ARTIFACT}-{WAYEB_VERSION}.jar"
#: ``artifactId-version`` of ``java/pom.xml``; the shade plugin replaces the plain jar.
JOB_JAR = "flink-rtcef-1.0-SNAPSHOT.jar"
FACTORY_CLASS = "edu.insa_lyon.streams.rtcef_flink.ModelFactoryJob"
INFERENCE_CLASS = "edu.insa_lyon.streams.rtcef_flink.InferenceJob"
#: Wayeb's command line (``mainClass in assembly``), used to train the starting model.
WAYEB_CLI = "ui.WayebCLI"
INSTALL_FILE = "org.apache.maven.plugins:maven-install-plugin:3.1.3:install-file"
COPY_DEPENDENCIES = "org.apache.maven.plugins:maven-dependency-plugin:3.8.1:copy-dependencies"

#: A stage's build step: ``step(staging folder, Maven log)``.
Builder = Callable[[Path, Path], None]


class SeedBuildError(RuntimeError):
    """A part of the seed's services could not be built."""


@dataclass(frozen=True)
class SeedBuild:
    """What the services need to run: the job jar and the runtime jars (Wayeb fork included)."""

    job_jar: Path
    wayeb_jar: Path
    lib_dir: Path

    @property
    def runtime_jars(self) -> list[Path]:
        """The runtime jars, sorted (one of each library: Maven mediated their versions)."""
        return sorted(self.lib_dir.glob("*.jar"))

    @property
    def classpath(self) -> str:
        """The jobs' classpath: the job jar, then every runtime jar."""
        return os.pathsep.join(str(path) for path in [self.job_jar, *self.runtime_jars])

    @property
    def wayeb_classpath(self) -> str:
        """Wayeb's CLI (``ui.WayebCLI``): the runtime jars hold the fork and all it needs."""
        return os.pathsep.join(str(path) for path in self.runtime_jars)


# --------------------------------------------------------------------------- locations


def port_source_dir() -> Path:
    """The vendored port (holding ``java/`` and ``Wayeb/``); ``SEED_SOURCE`` overrides it."""
    explicit = os.environ.get("SEED_SOURCE")
    if explicit:
        return Path(explicit).resolve()
    shared = Path(os.environ.get("RTCEF_SHARED_DIR") or ROOT.parent / "shared")
    return (shared / "vendor" / "flink-rtcef").resolve()


def cache_root() -> Path:
    """The per-user cache of ``tests/kafka/broker.py`` and ``tests/rtcef/wayeb.py`` (same rule)."""
    root = os.environ.get("KAFKA_HARNESS_CACHE") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "rtcef-controller"
    )
    return Path(root)


def maven_repository() -> Path:
    """The private local Maven repository of the seed builds."""
    return cache_root() / "seed-m2"


# --------------------------------------------------------------------------- digests


def _tree_files(base: Path, *parts: str) -> list[tuple[str, Path]]:
    """``(path relative to base, path)`` of each file at or under ``base/part``."""
    found: list[tuple[str, Path]] = []
    for part in parts:
        top = base / part
        paths = [top] if top.is_file() else [p for p in top.rglob("*") if p.is_file()]
        found += [(path.relative_to(base).as_posix(), path) for path in paths]
    return found


def _digest(named: Iterable[tuple[str, Path]], *, salt: str = "") -> str:
    """SHA-256 over the files in path order: each adds its name, length and content."""
    digest = hashlib.sha256(salt.encode())
    for name, path in sorted(named):
        data = path.read_bytes()
        digest.update(f"{name}\0{len(data)}\0".encode())
        digest.update(data)
    return digest.hexdigest()


def wayeb_digest(source: Path) -> str:
    """The fork pom, the fork's ``build.sbt`` and ``cef/src/main``."""
    fork = source / "Wayeb"
    if not (fork / "build.sbt").is_file() or not (fork / "cef/src/main/scala").is_dir():
        raise SeedBuildError(f"no Wayeb fork (Wayeb/build.sbt, Wayeb/cef/src/main) in {source}")
    return _digest([("<pom>", WAYEB_POM), *_tree_files(fork, "build.sbt", "cef/src/main")])


def job_digest(source: Path, wayeb: str) -> str:
    """Every file of the port's ``java/`` folder, salted with the Wayeb stage's digest."""
    if not (source / "java/pom.xml").is_file():
        raise SeedBuildError(f"no job sources (java/pom.xml) in {source}")
    return _digest(_tree_files(source, "java"), salt=wayeb)


def runtime_digest(wayeb: str) -> str:
    """The runtime pom, salted with the Wayeb stage's digest (the fork is one of the jars)."""
    return _digest([("<pom>", RUNTIME_POM)], salt=wayeb)


# --------------------------------------------------------------------------- building


def ensure_built(quiet: bool = False) -> SeedBuild:
    """Build every missing stage (Maven, once per digest); return the paths the services need.

    Concurrent callers wait on one lock (the stages share the private
    repository); the first builds, the others find each stage's ``complete``
    marker. Raises :class:`SeedBuildError` with the first ``[ERROR]`` lines and
    the tail of Maven's output (the full log stays in the stage's folder).
    """
    source = port_source_dir()
    wayeb_key = wayeb_digest(source)
    wayeb_dir = cache_root() / f"seed-wayeb-{wayeb_key[:12]}"
    job_dir = cache_root() / f"seed-job-{job_digest(source, wayeb_key)[:12]}"
    runtime_dir = cache_root() / f"seed-runtime-{runtime_digest(wayeb_key)[:12]}"
    result = SeedBuild(
        job_jar=job_dir / "build" / "job" / "target" / JOB_JAR,
        wayeb_jar=wayeb_dir / "build" / WAYEB_JAR,
        lib_dir=runtime_dir / "build" / "lib",
    )
    stages = (wayeb_dir, job_dir, runtime_dir)
    if all((stage / "complete").exists() for stage in stages):
        return result
    for tool in ("mvn", "java"):
        if shutil.which(tool) is None:
            raise SeedBuildError(f"{tool} is not on PATH: Maven and a JDK 11+ build the seed")
    repository = maven_repository()
    repository.mkdir(parents=True, exist_ok=True)
    with open(cache_root() / "seed-m2.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not (wayeb_dir / "complete").exists():
            _stage(wayeb_dir, "the Wayeb fork", quiet, partial(_build_wayeb, source))
        dependents: tuple[tuple[Path, str, Builder], ...] = (
            (job_dir, "the job jar", partial(_build_job, source)),
            (runtime_dir, "the runtime jars", _build_runtime),
        )
        for stage, what, step in dependents:
            if not (stage / "complete").exists():
                _install_wayeb(wayeb_dir, stage)
                _stage(stage, what, quiet, step)
    return result


def _stage(stage: Path, what: str, quiet: bool, step: Builder) -> None:
    """Run ``step(staging, log)`` in a fresh staging folder; rename it to ``build/`` on success."""
    stage.mkdir(parents=True, exist_ok=True)
    for leftover in stage.glob("staging-*"):  # from an interrupted build (we hold the lock)
        shutil.rmtree(leftover, ignore_errors=True)
    staging = Path(tempfile.mkdtemp(prefix="staging-", dir=stage))
    if not quiet:
        print(f"seed: building {what} into {stage} (first run only)...", file=sys.stderr)
    began = time.monotonic()
    try:
        step(staging, stage / "maven.log")
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    final = stage / "build"
    if final.exists():  # left by an attempt interrupted between rename and marker
        shutil.rmtree(final)
    staging.rename(final)
    elapsed = time.monotonic() - began
    (stage / "complete").write_text(f"{time.strftime('%Y-%m-%dT%H:%M:%S')} {elapsed:.0f}s\n")
    if not quiet:
        print(f"seed: {what} built in {elapsed:.0f}s", file=sys.stderr)


def _build_wayeb(source: Path, staging: Path, log: Path) -> None:
    _maven(
        ["-f", str(WAYEB_POM), f"-Dwayeb.src={source / 'Wayeb'}", f"-Dwayeb.out={staging}",
         "install"],
        log,
    )  # fmt: skip
    _require(staging / WAYEB_JAR, log)
    shutil.copyfile(WAYEB_POM, staging / "pom.xml")  # what was installed, to re-install it


def _build_job(source: Path, staging: Path, log: Path) -> None:
    job = staging / "job"
    shutil.copytree(source / "java", job, copy_function=shutil.copyfile)
    _make_writable(job)  # the vendored tree is read-only, and so were the copied folders
    _maven(["-f", str(job / "pom.xml"), "-DskipTests", "package"], log)
    _require(job / "target" / JOB_JAR, log)


def _build_runtime(staging: Path, log: Path) -> None:
    lib = staging / "lib"
    _maven(
        ["-f", str(RUNTIME_POM), COPY_DEPENDENCIES, f"-DoutputDirectory={lib}",
         "-DincludeScope=runtime"],
        log,
    )  # fmt: skip
    _require(lib / WAYEB_JAR, log)


def _install_wayeb(wayeb_dir: Path, stage: Path) -> None:
    """(Re-)install the fork of ``wayeb_dir`` into the repository: the next stage resolves it."""
    built = wayeb_dir / "build"
    stage.mkdir(parents=True, exist_ok=True)
    _maven(
        [INSTALL_FILE, f"-Dfile={built / WAYEB_JAR}", f"-DpomFile={built / 'pom.xml'}"],
        stage / "install.log",
    )


def _maven(args: Sequence[str], log: Path) -> None:
    command = [
        "mvn", "-B", "--no-transfer-progress", f"-Dmaven.repo.local={maven_repository()}", *args,
    ]  # fmt: skip
    with open(log, "wb") as out:  # on Ctrl-C, subprocess.run kills Maven before re-raising
        result = subprocess.run(
            command, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            cwd=log.parent, check=False,
        )  # fmt: skip
    if result.returncode != 0:
        raise SeedBuildError(
            f"mvn failed with code {result.returncode} (full log: {log})\n{_failure_summary(log)}"
        )


def _require(path: Path, log: Path) -> None:
    if not path.is_file():
        raise SeedBuildError(f"mvn succeeded but left no {path} (full log: {log})")


def _make_writable(tree: Path) -> None:
    for path in [tree, *tree.rglob("*")]:
        mode = path.stat().st_mode
        path.chmod(mode | stat.S_IWUSR | (stat.S_IXUSR if path.is_dir() else 0))


def _failure_summary(log_path: Path, errors: int = 40, tail: int = 25) -> str:
    """Maven's first ``[ERROR]`` lines (the compilers' messages come first), then its tail."""
    lines = log_path.read_text(errors="replace").splitlines()
    first_errors = [line for line in lines if line.startswith("[ERROR]")][:errors]
    head = ["first [ERROR] lines:", *first_errors] if first_errors else []
    return "\n".join([*head, "last lines:", *lines[-tail:]])


def main(argv: list[str] | None = None) -> int:
    """Command-line entry point: build what is missing, print the paths as shell assignments."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quiet", action="store_true", help="no progress messages")
    args = parser.parse_args(argv)
    try:
        build = ensure_built(quiet=args.quiet)
    except SeedBuildError as error:
        print(f"seed: {error}", file=sys.stderr)
        return 1
    for name, value in (
        ("SEED_JOB_JAR", str(build.job_jar)),
        ("SEED_WAYEB_JAR", str(build.wayeb_jar)),
        ("SEED_CLASSPATH", build.classpath),
        ("SEED_WAYEB_CLASSPATH", build.wayeb_classpath),
    ):
        print(f"{name}={shlex.quote(value)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
