"""A real Apache Kafka broker (KRaft, one node, loopback) run from Maven Central jars.

Test and demo infrastructure, standard library only so that it runs before
anything else is installed. ``pom.xml`` beside this file names the broker and
its logging binding; Maven copies their runtime jars into a per-user cache once,
then every start formats a fresh KRaft storage directory, picks free ports,
launches ``kafka.Kafka`` and waits (with a deadline) until the broker says it has
started. It is stopped by the pid it was started with, never by name.

Command line (used by the Justfile)::

    python tests/kafka/broker.py up   --state .kafka   # prints the bootstrap address
    python tests/kafka/broker.py down --state .kafka
    python tests/kafka/broker.py jars                  # only fill the jar cache

``start(..., secured=Security.generate(...))`` starts the same broker secured instead:
clients on a SASL_SSL listener (a CA and a broker certificate made per run with
``openssl``, hostname verification on), SCRAM-SHA-512 users written at format time,
the standard authorizer with no ACL meaning no access, and ``admin`` its only super
user besides the KRaft controller listener's (see ``SECURED_OVERRIDES``).
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import hashlib
import json
import os
import secrets
import shutil
import signal
import socket
import ssl
import struct
import subprocess
import sys
import tempfile
import time
import uuid
from dataclasses import asdict, dataclass, field
from pathlib import Path

HERE = Path(__file__).resolve().parent
POM = HERE / "pom.xml"
SERVER_TEMPLATE = HERE / "server.properties"
LOG4J_CONFIG = HERE / "log4j2.properties"
DEPENDENCY_PLUGIN = "org.apache.maven.plugins:maven-dependency-plugin:3.8.1:copy-dependencies"


class BrokerError(RuntimeError):
    """The broker could not be provisioned, started or stopped."""


def cache_root() -> Path:
    """The per-user cache of everything the tests build or fetch (jars, Wayeb, venvs)."""
    root = os.environ.get("KAFKA_HARNESS_CACHE") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "rtcef-controller"
    )
    return Path(root)


def jar_cache_dir() -> Path:
    """Where the broker's jars are cached: keyed by the pom's content, so a bump re-resolves."""
    digest = hashlib.sha256(POM.read_bytes()).hexdigest()[:12]
    return cache_root() / f"kafka-{digest}"


def ensure_jars(quiet: bool = False) -> Path:
    """Resolve the broker's runtime jars with Maven (once) and return the folder holding them."""
    cache = jar_cache_dir()
    libs = cache / "libs"
    if (cache / "complete").exists():
        return libs
    if shutil.which("mvn") is None:
        raise BrokerError("Maven (mvn) is not on PATH: it is needed once to fetch Kafka's jars")
    staging = Path(tempfile.mkdtemp(prefix="libs-", dir=ensure_dir(cache)))
    command = [
        "mvn", "-q", "-B", "-f", str(POM), DEPENDENCY_PLUGIN,
        f"-DoutputDirectory={staging}", "-DincludeScope=runtime",
    ]  # fmt: skip
    if not quiet:
        print("kafka-harness: resolving Kafka jars with Maven (first run only)...", file=sys.stderr)
    result = subprocess.run(command, capture_output=True, text=True, check=False)
    if result.returncode != 0:
        shutil.rmtree(staging, ignore_errors=True)
        raise BrokerError(f"mvn failed ({result.returncode}):\n{result.stdout}\n{result.stderr}")
    if libs.exists():
        shutil.rmtree(libs)
    staging.rename(libs)
    (cache / "complete").write_text(time.strftime("%Y-%m-%dT%H:%M:%S"))
    return libs


def free_port() -> int:
    """Ask the kernel for a free loopback port."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def ensure_dir(path: Path) -> Path:
    """Create ``path`` (and its parents) if missing; return it."""
    path.mkdir(parents=True, exist_ok=True)
    return path


def _cluster_id() -> str:
    """A KRaft cluster id: a 22-character base64url UUID (a hex GUID is rejected).

    One in 64 of those starts with ``-``, which the storage tool's argument parser
    takes for an option ("--cluster-id: expected one argument"): draw again.
    """
    while True:
        cluster_id = base64.urlsafe_b64encode(uuid.uuid4().bytes).decode().rstrip("=")
        if not cluster_id.startswith("-"):
            return cluster_id


#: The SCRAM users a secured broker is formatted with: ``admin`` (the harness's super
#: user, to create topics and ACLs), the controller, and the services around it.
SECURED_USERS = ("admin", "controller", "factory", "engine", "observer")
#: The secured listener's name (SASL_SSL): clients and the broker itself use it.
SECURED_LISTENER = "SECURE"


def _openssl(*args: str, cwd: Path) -> None:
    done = subprocess.run(["openssl", *args], cwd=cwd, capture_output=True, text=True,
                          check=False)  # fmt: skip
    if done.returncode != 0:
        raise BrokerError(f"openssl {args[0]} failed: {done.stderr.strip()}")


def make_ca(directory: Path, name: str) -> Path:
    """A self-signed CA (``<name>.pem`` and ``<name>.key``) in ``directory``."""
    _openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2",
             "-keyout", f"{name}.key", "-out", f"{name}.pem", "-subj", f"/CN=rtcef test {name}",
             "-addext", "basicConstraints=critical,CA:TRUE",
             "-addext", "keyUsage=critical,keyCertSign,cRLSign", cwd=directory)  # fmt: skip
    return directory / f"{name}.pem"


def make_certificate(
    directory: Path, name: str, ca: str, *, server: bool, key_password: str | None = None
) -> tuple[Path, Path]:
    """A certificate signed by CA ``ca`` and its PKCS#8 key; a server's names 127.0.0.1, localhost.

    ``key_password``: the key is encrypted with it (AES-256).
    """
    encrypt = ["-aes256", "-pass", f"pass:{key_password}"] if key_password else []
    _openssl("genpkey", "-algorithm", "RSA", "-pkeyopt", "rsa_keygen_bits:2048",
             *encrypt, "-out", f"{name}.key", cwd=directory)  # fmt: skip
    passin = ["-passin", f"pass:{key_password}"] if key_password else []
    _openssl("req", "-new", "-key", f"{name}.key", *passin, "-out", f"{name}.csr",
             "-subj", f"/CN={'localhost' if server else name}", cwd=directory)  # fmt: skip
    usage = "serverAuth" if server else "clientAuth"
    extensions = [f"extendedKeyUsage={usage}", "keyUsage=critical,digitalSignature,keyEncipherment"]
    if server:
        extensions.append("subjectAltName=IP:127.0.0.1,DNS:localhost")
    (directory / f"{name}.ext").write_text("\n".join(extensions) + "\n")
    _openssl("x509", "-req", "-in", f"{name}.csr", "-CA", f"{ca}.pem", "-CAkey", f"{ca}.key",
             "-CAcreateserial", "-days", "2", "-out", f"{name}.pem",
             "-extfile", f"{name}.ext", cwd=directory)  # fmt: skip
    return directory / f"{name}.pem", directory / f"{name}.key"


@dataclass(frozen=True)
class Security:
    """What a secured broker is started with, and what its clients need to reach it.

    ``directory`` holds ``ca.pem`` (the broker's CA), ``broker.pem``/``broker.key``,
    a client certificate with an encrypted key (``client.pem``, ``client.key``,
    ``key_password``) and a CA the broker does not use (``other-ca.pem``).
    """

    directory: str
    passwords: dict[str, str] = field(default_factory=dict)
    key_password: str = ""

    @classmethod
    def generate(cls, directory: str | os.PathLike[str]) -> Security:
        """New CAs, certificates and random passwords for every user in ``directory``."""
        where = ensure_dir(Path(directory))
        make_ca(where, "ca")
        make_ca(where, "other-ca")
        make_certificate(where, "broker", "ca", server=True)
        key_password = secrets.token_urlsafe(12)
        make_certificate(where, "client", "ca", server=False, key_password=key_password)
        passwords = {user: secrets.token_urlsafe(16) for user in SECURED_USERS}
        return cls(str(where), passwords, key_password)

    @property
    def ca_location(self) -> str:
        """The CA file that signed the broker's certificate."""
        return str(Path(self.directory) / "ca.pem")

    @property
    def other_ca_location(self) -> str:
        """A CA that did not sign the broker's certificate."""
        return str(Path(self.directory) / "other-ca.pem")

    def client_config(self, user: str, password: str | None = None) -> dict[str, str]:
        """The librdkafka settings of a SASL_SSL + SCRAM-SHA-512 client as ``user``."""
        return {
            "security.protocol": "SASL_SSL",
            "sasl.mechanism": "SCRAM-SHA-512",
            "sasl.username": user,
            "sasl.password": self.passwords[user] if password is None else password,
            "ssl.ca.location": self.ca_location,
        }

    def controller_env(self, user: str = "controller") -> dict[str, str]:
        """The controller's ``KAFKA_*`` security settings as ``user`` (with a client key)."""
        directory = Path(self.directory)
        return {
            "KAFKA_SECURITY_PROTOCOL": "SASL_SSL",
            "KAFKA_SASL_MECHANISM": "SCRAM-SHA-512",
            "KAFKA_SASL_USERNAME": user,
            "KAFKA_SASL_PASSWORD": self.passwords[user],
            "KAFKA_SSL_CA_LOCATION": self.ca_location,
            "KAFKA_SSL_CERTIFICATE_LOCATION": str(directory / "client.pem"),
            "KAFKA_SSL_KEY_LOCATION": str(directory / "client.key"),
            "KAFKA_SSL_KEY_PASSWORD": self.key_password,
        }

    def ssl_context(self) -> ssl.SSLContext:
        """A TLS context that trusts the broker's CA (for the readiness probe)."""
        return ssl.create_default_context(cafile=self.ca_location)

    def scram_arguments(self) -> list[str]:
        """The storage tool's ``--add-scram`` arguments: one per user."""
        return [argument for user, password in self.passwords.items() for argument in
                ("--add-scram", f"SCRAM-SHA-512=[name={user},password={password}]")]  # fmt: skip

    def overrides(self, port: int, controller_port: int) -> dict[str, str]:
        """The broker properties that differ from the plaintext template."""
        directory = Path(self.directory)
        name = SECURED_LISTENER
        jaas = "org.apache.kafka.common.security.scram.ScramLoginModule required"
        return {
            "listeners": f"{name}://127.0.0.1:{port},CONTROLLER://127.0.0.1:{controller_port}",
            "advertised.listeners": f"{name}://127.0.0.1:{port}",
            "inter.broker.listener.name": name,
            "listener.security.protocol.map": f"CONTROLLER:PLAINTEXT,{name}:SASL_SSL",
            "sasl.enabled.mechanisms": "SCRAM-SHA-512",
            "sasl.mechanism.inter.broker.protocol": "SCRAM-SHA-512",
            # Server side, and the broker's own client side on the same listener (as admin).
            f"listener.name.{name.lower()}.scram-sha-512.sasl.jaas.config": (
                f'{jaas} username="admin" password="{self.passwords["admin"]}";'
            ),
            "ssl.keystore.type": "PEM",
            "ssl.keystore.location": str(directory / "broker-keystore.pem"),
            "ssl.truststore.type": "PEM",
            "ssl.truststore.location": self.ca_location,
            "ssl.endpoint.identification.algorithm": "https",
            "ssl.client.auth": "none",
            "authorizer.class.name": "org.apache.kafka.metadata.authorizer.StandardAuthorizer",
            "allow.everyone.if.no.acl.found": "false",
            # The KRaft controller listener stays PLAINTEXT on loopback (KRaft supports no
            # SCRAM there): the broker reaches its controller as ANONYMOUS, which must be a
            # super user. It is not advertised; every client comes in on SECURE.
            "super.users": "User:admin;User:ANONYMOUS",
        }

    def write_keystore(self) -> None:
        """The broker's PEM keystore: its key, then its certificate chain."""
        directory = Path(self.directory)
        (directory / "broker-keystore.pem").write_text(
            (directory / "broker.key").read_text()
            + (directory / "broker.pem").read_text()
            + (directory / "ca.pem").read_text()
        )


def _with_overrides(template: str, overrides: dict[str, str]) -> str:
    """``template`` with each overridden property's line replaced, the new ones appended."""
    lines, seen = [], set()
    for line in template.splitlines():
        key = line.split("=", 1)[0].strip()
        if "=" in line and not line.lstrip().startswith("#") and key in overrides:
            lines.append(f"{key}={overrides[key]}")
            seen.add(key)
        else:
            lines.append(line)
    lines += [f"{key}={value}" for key, value in overrides.items() if key not in seen]
    return "\n".join(lines) + "\n"


@dataclass
class Broker:
    """A running broker: where it listens, where it keeps its files, and its pid."""

    pid: int
    port: int
    controller_port: int
    workdir: str
    startup_seconds: float
    #: A secured broker's TLS and SCRAM material (``None``: plaintext).
    security: Security | None = None

    @property
    def bootstrap(self) -> str:
        """The bootstrap address clients use."""
        return f"127.0.0.1:{self.port}"

    @property
    def log_path(self) -> Path:
        """The broker's combined stdout/stderr."""
        return Path(self.workdir) / "broker.log"

    def log_tail(self, lines: int = 40) -> str:
        """The last lines of the broker's log, for error messages."""
        return _tail(self.log_path, lines)

    def alive(self) -> bool:
        """Whether the broker's process still exists."""
        return _pid_alive(self.pid)

    def stop(self, timeout: float = 30.0) -> None:
        """Stop the broker by its pid: SIGTERM, then SIGKILL after ``timeout`` seconds."""
        stop_pid(self.pid, timeout)


def _tail(path: Path, lines: int) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except FileNotFoundError:
        return "(no broker log)"


def _pid_alive(pid: int) -> bool:
    try:
        waited, _ = os.waitpid(pid, os.WNOHANG)
        if waited == pid:
            return False
    except ChildProcessError:
        pass  # not our child (started by another process): fall back to kill(0)
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def stop_pid(pid: int, timeout: float = 30.0) -> None:
    """Terminate one process we started, escalating to SIGKILL at the deadline."""
    if not _pid_alive(pid):
        return
    os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not _pid_alive(pid):
            return
        time.sleep(0.1)
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGKILL)
    while _pid_alive(pid):
        time.sleep(0.05)


def start(
    workdir: str | os.PathLike[str] | None = None,
    *,
    port: int | None = None,
    controller_port: int | None = None,
    deadline: float = 90.0,
    heap: str = "512m",
    secured: Security | None = None,
) -> Broker:
    """Start a broker and return once it serves clients.

    ``secured``: the broker is secured with it (module docstring); plaintext otherwise.

    A new ``workdir`` is formatted; an existing formatted one (a restart of the
    same broker, same ports) keeps its data. Raises ``BrokerError`` with the
    broker's log tail if it exits or does not become ready within ``deadline``.
    """
    java = shutil.which("java")
    if java is None:
        raise BrokerError("java is not on PATH: the broker needs a JDK 17+")
    libs = ensure_jars()
    work = ensure_dir(Path(workdir) if workdir else Path(tempfile.mkdtemp(prefix="kafka-")))
    properties = work / "server.properties"
    if properties.exists() and port is None:
        previous = json.loads((work / "ports.json").read_text())
        port, controller_port = previous["port"], previous["controller_port"]
    port = port or free_port()
    controller_port = controller_port or free_port()
    log_dir = work / "data"
    text = SERVER_TEMPLATE.read_text().format(
        port=port, controller_port=controller_port, log_dir=log_dir
    )
    if secured is not None:
        secured.write_keystore()
        text = _with_overrides(text, secured.overrides(port, controller_port))
    properties.write_text(text)
    (work / "ports.json").write_text(json.dumps({"port": port, "controller_port": controller_port}))
    classpath = f"{libs}/*"
    if not (log_dir / "meta.properties").exists():
        formatted = subprocess.run(
            [java, "-cp", classpath, "kafka.tools.StorageTool", "format",
             "-t", _cluster_id(), "-c", str(properties),
             *(secured.scram_arguments() if secured else [])],
            capture_output=True, text=True, check=False,
        )  # fmt: skip
        if formatted.returncode != 0:
            raise BrokerError(
                f"formatting KRaft storage failed:\n{formatted.stdout}{formatted.stderr}"
            )
    log_path = work / "broker.log"
    began = time.monotonic()
    with open(log_path, "ab") as log:
        process = subprocess.Popen(
            [java, "-Xms256m", f"-Xmx{heap}", "-XX:+UseSerialGC",
             f"-Dlog4j2.configurationFile={LOG4J_CONFIG}",
             "-cp", classpath, "kafka.Kafka", str(properties)],
            stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            start_new_session=True,  # Ctrl-C in the terminal is ours to handle, not the broker's
        )  # fmt: skip
    broker = Broker(process.pid, port, controller_port, str(work), 0.0, secured)
    try:
        _wait_ready(process, broker, began + deadline, deadline)
    except BaseException:  # a failed start or a Ctrl-C: the broker is in its own session
        stop_pid(process.pid, timeout=5)
        raise
    broker.startup_seconds = round(time.monotonic() - began, 2)
    return broker


def _wait_ready(
    process: subprocess.Popen[bytes], broker: Broker, limit: float, deadline: float
) -> None:
    port = broker.port
    while True:
        if process.poll() is not None:
            raise BrokerError(
                f"broker exited with code {process.returncode} during start-up; log tail:\n"
                + broker.log_tail()
            )
        if _ready(port, broker.security.ssl_context() if broker.security else None):
            break
        if time.monotonic() > limit:
            raise BrokerError(
                f"broker not ready after {deadline:.0f}s on port {port}; log tail:\n"
                + broker.log_tail()
            )
        time.sleep(0.1)


def _ready(port: int, tls: ssl.SSLContext | None = None) -> bool:
    """Whether the broker answers an ApiVersions request (v0) without error.

    Speaking the protocol, rather than waiting for a log line, keeps readiness
    independent of the logging configuration. ``tls``: over TLS (a SASL listener
    answers ApiVersions before the SASL handshake).
    """
    client_id = b"kafka-harness"
    header = struct.pack(">hhih", 18, 0, 1, len(client_id)) + client_id
    try:
        with contextlib.ExitStack() as stack:
            sock = stack.enter_context(socket.create_connection(("127.0.0.1", port), timeout=2.0))
            if tls is not None:
                sock = stack.enter_context(tls.wrap_socket(sock, server_hostname="127.0.0.1"))
            sock.sendall(struct.pack(">i", len(header)) + header)
            size = struct.unpack(">i", _recv_exact(sock, 4))[0]
            body = _recv_exact(sock, size)
    except (OSError, struct.error):
        return False
    correlation_id, error_code = struct.unpack(">ih", body[:6])
    return correlation_id == 1 and error_code == 0


def _recv_exact(sock: socket.socket, size: int) -> bytes:
    data = b""
    while len(data) < size:
        chunk = sock.recv(size - len(data))
        if not chunk:
            raise OSError("connection closed")
        data += chunk
    return data


def _state_file(state_dir: Path) -> Path:
    return state_dir / "broker.json"


def _cli_up(state_dir: Path, deadline: float) -> int:
    state = _state_file(state_dir)
    if state.exists():
        running = Broker(**json.loads(state.read_text()))
        if running.alive():
            print(running.bootstrap)
            print(f"kafka-harness: already running, pid {running.pid}", file=sys.stderr)
            return 0
    broker = start(ensure_dir(state_dir) / "broker", deadline=deadline)
    state.write_text(json.dumps(asdict(broker)))
    (state_dir / "bootstrap").write_text(broker.bootstrap)
    print(broker.bootstrap)
    print(
        f"kafka-harness: broker pid {broker.pid} ready on {broker.bootstrap} "
        f"in {broker.startup_seconds:.2f}s (log: {broker.log_path})",
        file=sys.stderr,
    )
    return 0


def _cli_down(state_dir: Path) -> int:
    state = _state_file(state_dir)
    if not state.exists():
        print("kafka-harness: no broker recorded in " + str(state_dir), file=sys.stderr)
        return 0
    broker = Broker(**json.loads(state.read_text()))
    broker.stop()
    state.unlink()
    (state_dir / "bootstrap").unlink(missing_ok=True)
    shutil.rmtree(broker.workdir, ignore_errors=True)
    print(f"kafka-harness: broker pid {broker.pid} stopped", file=sys.stderr)
    return 0


def main(argv: list[str] | None = None) -> int:
    """Command-line entry point: ``up``, ``down`` or ``jars``."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("action", choices=["up", "down", "jars"])
    parser.add_argument("--state", default=".kafka", help="folder recording the running broker")
    parser.add_argument(
        "--deadline", type=float, default=90.0, help="seconds to wait for readiness"
    )
    args = parser.parse_args(argv)
    try:
        if args.action == "jars":
            print(ensure_jars())
            return 0
        if args.action == "up":
            return _cli_up(Path(args.state), args.deadline)
        return _cli_down(Path(args.state))
    except BrokerError as error:
        print(f"kafka-harness: {error}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
