"""Wayeb, the Scala forecasting engine bundled with RTCEF, compiled from its vendored sources.

Test infrastructure, standard library only, like ``tests/kafka/broker.py``. The
sbt build shipped with Wayeb cannot run here (its sbt plugins are not on Maven
Central), so ``wayeb-pom.xml`` beside this file compiles the vendored sources
with Maven instead. The vendored tree is only read: the classes and the runtime
jars go into a per-user cache folder keyed by the pom and Wayeb's sources, built
once in a staging folder that is renamed into place when Maven succeeds.

Wayeb then runs from that classpath as ``java ... ui.WayebCLI <command>``, which
is what upstream's ``java -jar wayeb-0.3.0-SNAPSHOT.jar <command>`` runs (the
fat jar's main class). RTCEF starts two such JVMs, reached from Python by py4j:
``server`` (the factory's, Java port 25334, Python callback port 25333) and
``service --pythonPort 25335 --javaPort 25336`` (the engine's). Only the Java
ports are listened on by the JVMs; the Python ports are the callback servers of
the Python side.

Command line::

    python -m tests.rtcef.wayeb build                  # compile once; prints the classpath
    python -m tests.rtcef.wayeb run -- --help          # execs Wayeb's CLI
    python -m tests.rtcef.wayeb run -- server
    python -m tests.rtcef.wayeb run -- service --pythonPort 25335 --javaPort 25336
"""

from __future__ import annotations

import argparse
import fcntl
import hashlib
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from tests.kafka.broker import cache_root

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
POM = HERE / "wayeb-pom.xml"

#: ``mainClass in assembly`` in Wayeb's ``project/Build.scala``.
MAIN_CLASS = "ui.WayebCLI"
#: Relative to Wayeb's folder: what the build depends on besides the pom.
HASHED = ("build.sbt", "src")


class WayebBuildError(RuntimeError):
    """Wayeb could not be compiled or launched."""


def wayeb_source_dir() -> Path:
    """The vendored Wayeb folder (holding ``build.sbt``); ``WAYEB_SOURCE`` overrides it."""
    explicit = os.environ.get("WAYEB_SOURCE")
    if explicit:
        return Path(explicit).resolve()
    shared = Path(os.environ.get("RTCEF_SHARED_DIR") or ROOT.parent / "shared")
    return (shared / "vendor/rtcef/libraries/models/wrappers/wayeb").resolve()


def source_digest(source: Path | None = None) -> str:
    """SHA-256 over the pom and every file of Wayeb's ``src/`` and ``build.sbt``.

    Files are taken in the order of their paths relative to Wayeb's folder; each
    contributes its path, its length and its content, so that a rename, a move
    or an edit all change the digest.
    """
    source = source or wayeb_source_dir()
    if not (source / "build.sbt").is_file() or not (source / "src").is_dir():
        raise WayebBuildError(f"no Wayeb sources (build.sbt, src/) in {source}; set WAYEB_SOURCE")
    files: list[tuple[str, Path]] = [("build.sbt", source / "build.sbt")]
    files += [
        (path.relative_to(source).as_posix(), path)
        for path in (source / "src").rglob("*")
        if path.is_file()
    ]
    digest = hashlib.sha256()
    for name, path in [("<pom>", POM), *sorted(files)]:
        data = path.read_bytes()
        digest.update(f"{name}\0{len(data)}\0".encode())
        digest.update(data)
    return digest.hexdigest()


def cache_dir(source: Path | None = None) -> Path:
    """Where this pom and these sources are built: ``<cache root>/wayeb-<12 hex>``."""
    return cache_root() / f"wayeb-{source_digest(source)[:12]}"


def classpath_of(build: Path) -> str:
    """The compiled classes first (Wayeb's own ``logback.xml`` wins), then the jars, sorted."""
    jars = sorted(str(jar) for jar in (build / "lib").glob("*.jar"))
    return os.pathsep.join([str(build / "classes"), *jars])


def ensure_built(quiet: bool = False) -> str:
    """Compile Wayeb with Maven once per pom and source digest; return its Java classpath.

    Concurrent callers wait on a lock in the cache folder; the first builds, the
    others find the ``complete`` marker. Raises ``WayebBuildError`` with the tail
    of Maven's output (the full log stays in the cache folder) on failure.
    """
    source = wayeb_source_dir()
    cache = cache_dir(source)
    build = cache / "build"
    if (cache / "complete").exists():
        return classpath_of(build)
    if shutil.which("mvn") is None:
        raise WayebBuildError("Maven (mvn) is not on PATH: it is needed once to compile Wayeb")
    cache.mkdir(parents=True, exist_ok=True)
    with open(cache / "lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not (cache / "complete").exists():
            _build(source, cache, quiet)
    return classpath_of(build)


def _build(source: Path, cache: Path, quiet: bool) -> None:
    build = cache / "build"
    log_path = cache / "maven.log"
    for leftover in cache.glob("staging-*"):  # from an interrupted build (we hold the lock)
        shutil.rmtree(leftover, ignore_errors=True)
    staging = Path(tempfile.mkdtemp(prefix="staging-", dir=cache))
    command = [
        "mvn", "-B", "--no-transfer-progress", "-f", str(POM),
        f"-Dwayeb.src={source}", f"-Dwayeb.out={staging}", "compile",
    ]  # fmt: skip
    if not quiet:
        print(
            f"wayeb: compiling {source} with Maven into {cache} (first run only, a few minutes)...",
            file=sys.stderr,
        )
    began = time.monotonic()
    try:
        with open(log_path, "wb") as log:
            result = subprocess.run(
                command, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, check=False
            )
    except BaseException:  # Ctrl-C: subprocess.run has already killed Maven
        shutil.rmtree(staging, ignore_errors=True)
        raise
    main_class = staging / "classes" / (MAIN_CLASS.replace(".", "/") + ".class")
    problem = ""
    if result.returncode != 0:
        problem = f"mvn failed with code {result.returncode}"
    elif not main_class.is_file() or not any((staging / "lib").glob("*.jar")):
        problem = f"mvn succeeded but left no {MAIN_CLASS} class or no runtime jars"
    if problem:
        shutil.rmtree(staging, ignore_errors=True)
        raise WayebBuildError(f"{problem} (full log: {log_path})\n{_failure_summary(log_path)}")
    if build.exists():  # left by an attempt interrupted between rename and marker
        shutil.rmtree(build)
    staging.rename(build)
    (cache / "complete").write_text(time.strftime("%Y-%m-%dT%H:%M:%S") + "\n")
    if not quiet:
        print(f"wayeb: built in {time.monotonic() - began:.0f}s", file=sys.stderr)


def _failure_summary(log_path: Path, errors: int = 40, tail: int = 25) -> str:
    """Maven's first ``[ERROR]`` lines (scalac's messages come first), then its output's tail.

    The tail alone is not enough: a failed forked scalac is followed by a long
    Java stack trace from the plugin, which pushes the compiler's messages out.
    """
    lines = log_path.read_text(errors="replace").splitlines()
    first_errors = [line for line in lines if line.startswith("[ERROR]")][:errors]
    return "\n".join(
        ["first [ERROR] lines:", *first_errors, "last lines:", *lines[-tail:]]
        if first_errors
        else ["last lines:", *lines[-tail:]]
    )


def java_command(
    classpath: str, *args: str, heap: str = "2g", logback: Path | None = None
) -> list[str]:
    """The command running Wayeb's CLI (``ui.WayebCLI``) with ``args``, e.g. ``server``.

    Wayeb's ``logback.xml`` logs at DEBUG to stdout and to ``wayeb.log`` in the
    working directory (truncated at start-up): give each JVM its own directory,
    or pass ``logback`` (e.g. ``tests/rtcef/logback.xml``) to log less.
    """
    java = shutil.which("java")
    if java is None:
        raise WayebBuildError("java is not on PATH: Wayeb needs a JDK/JRE 11+")
    options = [f"-Dlogback.configurationFile={logback}"] if logback else []
    return [java, f"-Xmx{heap}", *options, "-cp", classpath, MAIN_CLASS, *args]


def main(argv: list[str] | None = None) -> int:
    """Command-line entry point: ``build`` or ``run -- <Wayeb arguments>``."""
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--quiet", action="store_true", help="no progress messages")
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    actions = parser.add_subparsers(dest="action", required=True)
    actions.add_parser("build", parents=[common], help="compile once, print the classpath")
    run = actions.add_parser("run", parents=[common], help="compile if needed, exec Wayeb's CLI")
    run.add_argument("--heap", default="2g", help="the JVM's maximum heap (-Xmx)")
    run.add_argument("wayeb_args", nargs=argparse.REMAINDER, help="after --: Wayeb's arguments")
    args = parser.parse_args(argv)
    try:
        classpath = ensure_built(quiet=args.quiet)
        if args.action == "build":
            print(classpath)
            return 0
        wayeb_args = list(args.wayeb_args)
        if wayeb_args[:1] == ["--"]:
            wayeb_args = wayeb_args[1:]
        command = java_command(classpath, *wayeb_args, heap=args.heap)
    except WayebBuildError as error:
        print(f"wayeb: {error}", file=sys.stderr)
        return 1
    sys.stdout.flush()
    sys.stderr.flush()
    os.execv(command[0], command)  # noqa: S606 - argv, no shell; the JVM keeps our pid


if __name__ == "__main__":
    sys.exit(main())
