"""``just image-check``: the Dockerfile built with buildah, its pod run as the StatefulSet runs it.

Test infrastructure (``python -m tests.deploy.image``; the deploy-tier test
``tests/deploy/test_image.py`` runs the same steps against the test broker).

Build
    ``buildah bud --isolation chroot`` with its storage in the user cache
    (``~/.cache/rtcef-controller/buildah``, driver ``vfs``: no kernel overlay or
    fuse needed), ``--layers`` so an unchanged step is reused. The Dockerfile's
    base, ``python:3.11-slim-bookworm``, is pulled when a registry answers; where
    none does (this machine), a stand-in is assembled once from Debian's
    packages with ``mmdebstrap`` (bookworm ``minbase`` with ``python3.11``,
    ``python3.11-venv`` and ``ca-certificates``; ``python`` and ``python3`` in
    ``/usr/local/bin`` as in the official image) and committed under the same
    name. The stand-in also gets this machine's CA bundle and a ``/etc/pip.conf``
    pointing pip at it, so that the build's ``pip install`` trusts the same
    proxies the host does. ``buildah`` and ``mmdebstrap`` come from Debian
    (``apt-get install buildah mmdebstrap``; ``.ci/run`` installs them).

Run (root, as CI runs)
    The built image's root file system (``buildah mount``) is entered in new
    mount and PID namespaces (``unshare --mount --pid --fork``) the way the
    kubelet would run the StatefulSet's pod: the root bound read-only, a
    256 MiB tmpfs at ``/tmp``, a host folder owned by 65532 at
    ``/var/recovery`` (the volume), ``/proc`` and ``/dev``; then, as uid/gid
    65532 and with only the rendered ConfigMaps' variables (and, for a secured
    broker, the Secret's), the pod's own variables and the test's broker and
    topics, the init container's ``entrypoint-recovery.sh`` and then
    ``entrypoint.sh``, whose Python is PID 1 of the namespace. Files a Secret
    volume would hold (the broker's CA) are written into the root, read-only,
    before it starts.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Mapping, Sequence
from pathlib import Path

from tests.kafka.broker import cache_root

ROOT = Path(__file__).resolve().parents[2]
BASE = "docker.io/library/python:3.11-slim-bookworm"
IMAGE = "localhost/rtcef-controller:check"
UID = 65532
#: What the stand-in base holds (Debian bookworm).
BASE_PACKAGES = ("python3.11", "python3.11-venv", "ca-certificates")
HOST_CA = Path("/etc/ssl/certs/ca-certificates.crt")

#: Run inside ``unshare --mount --pid --fork``: ``$1`` the image's root, ``$2`` the
#: recovery volume, then ``env`` arguments; execs the init step, then the entrypoint.
POD_SCRIPT = r"""
set -eu
root=$1; volume=$2; shift 2
mount --make-rprivate /
mount --bind "$root" "$root"
mkdir -p "$root/var/recovery" "$root/proc" "$root/dev" "$root/tmp"
mount -t proc proc "$root/proc"
mount --rbind /dev "$root/dev"
mount -t tmpfs -o size=256m,mode=1777 pod-tmp "$root/tmp"
mount --bind "$volume" "$root/var/recovery"
mount -o remount,bind,ro "$root"
exec chroot --userspec=65532:65532 "$root" /usr/bin/env -i "$@" /bin/sh -c \
    'cd /bytewax && sh ./entrypoint-recovery.sh && exec sh ./entrypoint.sh'
"""


class ImageCheckError(RuntimeError):
    """The image could not be built or run."""


def storage() -> Path:
    """The check's buildah storage (kept between runs: the base and layers are reused)."""
    return cache_root() / "buildah"


def buildah(*args: str, check: bool = True, timeout: float = 1800) -> str:
    """Run buildah on the check's storage; its standard output."""
    command = ["buildah", "--root", str(storage() / "root"), "--runroot",
               str(storage() / "run"), "--storage-driver", "vfs", *args]  # fmt: skip
    done = subprocess.run(command, capture_output=True, text=True, check=False, timeout=timeout)
    if check and done.returncode != 0:
        raise ImageCheckError(
            f"buildah {args[0]} failed:\n{done.stdout[-3000:]}{done.stderr[-3000:]}"
        )
    return done.stdout


def check_tools() -> None:
    """Raise naming what is missing: buildah, mmdebstrap, root."""
    missing = [tool for tool in ("buildah", "mmdebstrap", "unshare", "chroot")
               if shutil.which(tool) is None]  # fmt: skip
    if missing:
        raise ImageCheckError(
            f"{', '.join(missing)} not on PATH: apt-get install buildah mmdebstrap"
        )
    if os.geteuid() != 0:
        raise ImageCheckError("the pod emulation mounts and chroots: run it as root (as CI does)")


def ensure_base(quiet: bool = False) -> str:
    """The Dockerfile's base in the check's storage: present, pulled, or assembled."""
    if buildah("images", "--quiet", BASE, check=False).strip():
        return "cached"
    pulled = subprocess.run(
        ["buildah", "--root", str(storage() / "root"), "--runroot", str(storage() / "run"),
         "--storage-driver", "vfs", "pull", "--quiet", BASE],
        capture_output=True, text=True, check=False, timeout=300,
    )  # fmt: skip
    if pulled.returncode == 0:
        return "pulled"
    if not quiet:
        reason = pulled.stderr.strip()[-160:]
        print(f"image-check: no registry answers ({reason}); assembling the base from "
              "Debian packages (first run only)", file=sys.stderr)  # fmt: skip
    with tempfile.TemporaryDirectory(prefix="image-base-") as scratch:
        tar, pip_conf = Path(scratch) / "base.tar", Path(scratch) / "pip.conf"
        hooks = [
            'ln -s /usr/bin/python3.11 "$1/usr/local/bin/python"',
            'ln -s /usr/bin/python3.11 "$1/usr/local/bin/python3"',
            'rm -rf "$1"/var/lib/apt/lists/* "$1"/var/cache/apt/*',
        ]
        include = f"--include={','.join(BASE_PACKAGES)}"
        customize = [f"--customize-hook={hook}" for hook in hooks]
        command = ["mmdebstrap", "--variant=minbase", include, *customize, "bookworm", str(tar)]
        done = subprocess.run(command, capture_output=True, text=True, check=False, timeout=1200)
        if done.returncode != 0:
            raise ImageCheckError(f"mmdebstrap failed:\n{done.stderr[-3000:]}")
        container = buildah("from", "scratch").strip()
        try:
            buildah("add", container, str(tar), "/")
            if HOST_CA.is_file():
                buildah("copy", container, str(HOST_CA), str(HOST_CA))
                pip_conf.write_text(f"[global]\ncert = {HOST_CA}\n")
                buildah("copy", container, str(pip_conf), "/etc/pip.conf")
            path = "PATH=/usr/local/bin:/usr/local/sbin:/usr/sbin:/usr/bin:/sbin:/bin"
            buildah("config", "--env", path, "--env", "LANG=C.UTF-8", "--cmd", "python3",
                    container)  # fmt: skip
            buildah("commit", "--quiet", container, BASE)
        finally:
            buildah("rm", container, check=False)
    return "assembled"


def build() -> float:
    """Build the Dockerfile into ``IMAGE``; the seconds it took.

    Then the images no tag reaches any more are removed: each build leaves the
    previous ``IMAGE`` untagged (~0.6 GB with the vfs driver, which copies every
    layer), and a failed build its working container. Kept, they filled a 250 GB
    disk in a day of CI runs.
    """
    began = time.monotonic()
    try:
        buildah("bud", "--isolation", "chroot", "--pull-never", "--layers", "--quiet",
                "-t", IMAGE, "-f", str(ROOT / "Dockerfile"), str(ROOT))  # fmt: skip
    finally:
        prune()
    return time.monotonic() - began


def prune() -> None:
    """Remove the check's containers and the images no tag reaches (the base stays).

    Called after a build, before any pod of this run exists: a container left is
    one a failed build or a killed run did not remove.
    """
    buildah("rm", "--all", check=False)
    buildah("rmi", "--prune", check=False)


def shipped_package(root: str | Path) -> set[str]:
    """The package's files in an image mounted at ``root``, relative to the package."""
    found = sorted(Path(root, "opt/venv/lib").glob("python3*/site-packages/dataflow"))
    if len(found) != 1:
        raise ImageCheckError(f"expected one installed dataflow package, found {found}")
    return {path.relative_to(found[0]).as_posix() for path in found[0].rglob("*")
            if path.is_file() and "__pycache__" not in path.parts}  # fmt: skip


class Pod:
    """The image's pod, running; ``stop`` sends SIGTERM as the kubelet does."""

    def __init__(
        self,
        env: Mapping[str, str],
        volume: Path,
        log: Path,
        files: Mapping[str, bytes] | None = None,
    ) -> None:
        """Start the pod.

        ``files`` (an absolute path in the container: its content) are written into
        the container's root first, read-only (0444), as a Secret volume's files are.
        """
        self.log = log
        self.process: subprocess.Popen[bytes] | None = None
        self.container = buildah("from", "--pull-never", IMAGE).strip()
        try:
            self.root = buildah("mount", self.container).strip()
            for name, content in (files or {}).items():
                if not name.startswith("/"):
                    raise ImageCheckError(f"not an absolute path in the container: {name}")
                placed = Path(self.root, name.lstrip("/"))
                placed.parent.mkdir(mode=0o755, parents=True, exist_ok=True)
                placed.write_bytes(content)
                placed.chmod(0o444)
            volume.mkdir(parents=True, exist_ok=True)
            os.chown(volume, UID, UID)
            image_path = "/opt/venv/bin:/usr/local/bin:/usr/bin:/bin"
            variables = [f"{k}={v}" for k, v in {"PATH": image_path, **env}.items()]
            with log.open("ab") as out:
                self.process = subprocess.Popen(
                    ["unshare", "--mount", "--pid", "--fork", "--kill-child", "sh", "-c",
                     POD_SCRIPT, "pod", self.root, str(volume), *variables],
                    stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                    start_new_session=True,
                )  # fmt: skip
        except BaseException:
            self.close()
            raise

    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def stop(self, grace: float = 30.0) -> tuple[float, int | None]:
        """Send SIGTERM (the namespace's PID 1 is the controller); seconds and exit status.

        The status is -9 when it had to be killed.
        """
        began = time.monotonic()
        if self.process is None:
            return 0.0, None
        if self.process.poll() is None:
            os.killpg(self.process.pid, 15)
            try:
                self.process.wait(grace)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, 9)
                self.process.wait(30)
                return time.monotonic() - began, -9
        return time.monotonic() - began, self.process.returncode

    def close(self) -> None:
        try:
            self.stop()
        finally:
            buildah("umount", self.container, check=False)
            buildah("rm", self.container, check=False)

    def log_text(self) -> str:
        return self.log.read_text(errors="replace")


def pod_env(
    config_maps: Mapping[str, str],
    bootstrap: str,
    topics: Mapping[str, str],
    secret: Mapping[str, str] | None = None,
) -> dict[str, str]:
    """The pod's variables: the ConfigMaps, the Secret's, its own, broker and topics.

    The ConfigMaps then the Secret, as the StatefulSet's ``envFrom`` lists them; then
    the pod's own (pod name, namespace), the broker and the topics (its ``env``).
    """
    return {**config_maps, **(secret or {}), "BYTEWAX_POD_NAME": "rtcef-controller-0",
            "POD_NAMESPACE": "check", "KAFKA_BOOTSTRAP_SERVERS": bootstrap, **topics}  # fmt: skip


def main(argv: Sequence[str] | None = None) -> int:
    """``just image-check``: build, then the deploy-tier test that runs the pod."""
    parser = argparse.ArgumentParser(
        prog="python -m tests.deploy.image",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--build-only", action="store_true", help="build, do not run the pod")
    args = parser.parse_args(argv)
    try:
        check_tools()
        base = ensure_base()
        seconds = build()
    except (ImageCheckError, subprocess.TimeoutExpired) as error:
        print(f"image-check: {error}", file=sys.stderr)
        return 1
    print(f"image-check: base {base}; built {IMAGE} in {seconds:.0f} s", file=sys.stderr)
    if args.build_only:
        return 0
    return subprocess.call([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
                            str(Path(__file__).with_name("test_image.py"))], cwd=ROOT)  # fmt: skip


if __name__ == "__main__":
    sys.exit(main())
