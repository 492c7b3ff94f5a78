"""A throwaway PostgreSQL server on 127.0.0.1 for the database tests.

``initdb`` makes a cluster in a temporary directory (trust authentication, so
any user name and password are accepted), ``pg_ctl`` starts and stops it. The
server refuses to run as root: as root, the cluster belongs to the ``postgres``
user (or ``nobody``) and every server command runs as that user.
"""

from __future__ import annotations

import contextlib
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
from pathlib import Path

__all__ = ["PgServer", "find_bin_dir", "free_port"]

_TIMEOUT = 60.0


def find_bin_dir() -> Path | None:
    """The directory of ``initdb`` and ``pg_ctl`` (the newest installed PostgreSQL), or None."""
    candidates = sorted(
        (p for p in Path("/usr/lib/postgresql").glob("*/bin") if p.parent.name.isdigit()),
        key=lambda p: int(p.parent.name),
        reverse=True,
    )
    for directory in candidates:
        if (directory / "initdb").exists() and (directory / "pg_ctl").exists():
            return directory
    found = shutil.which("initdb")
    if found and shutil.which("pg_ctl"):
        return Path(found).resolve().parent
    return None


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on (now)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _server_user() -> pwd.struct_passwd | None:
    """The user the server runs as: None for the current user, unless that is root."""
    if os.geteuid() != 0:
        return None
    for name in ("postgres", "nobody"):
        with contextlib.suppress(KeyError):
            return pwd.getpwnam(name)
    raise RuntimeError("running as root, and neither a 'postgres' nor a 'nobody' user exists")


class PgServer:
    """One PostgreSQL cluster: :meth:`start`, :meth:`stop`, :meth:`destroy`."""

    def __init__(self, bin_dir: Path) -> None:
        self.bin_dir = bin_dir
        self.port = free_port()
        self.host = "127.0.0.1"
        self._user = _server_user()
        # Under /tmp: short enough for the socket's path, and reachable by the server's user
        # (a TMPDIR inside root's home would not be).
        parent = "/tmp" if Path("/tmp").is_dir() else None  # noqa: S108 - a private mkdtemp directory
        self.root = Path(tempfile.mkdtemp(prefix="otelres-pg-", dir=parent))
        self.data = self.root / "data"
        self.socket_dir = self.root
        if self._user is not None:
            os.chown(self.root, self._user.pw_uid, self._user.pw_gid)
        try:
            self._run(
                "initdb",
                "-D",
                str(self.data),
                "-U",
                "postgres",
                "--auth=trust",
                "-E",
                "UTF8",
                "--no-sync",
            )
        except BaseException:
            shutil.rmtree(self.root, ignore_errors=True)
            raise
        settings = {
            "listen_addresses": "'127.0.0.1'",
            "port": str(self.port),
            "unix_socket_directories": f"'{self.socket_dir}'",
            "fsync": "off",
            "synchronous_commit": "off",
            "full_page_writes": "off",
            "max_connections": "50",
            "shared_buffers": "16MB",
            "log_min_messages": "fatal",
        }
        with (self.data / "postgresql.conf").open("a", encoding="utf-8") as conf:
            conf.writelines(f"{key} = {value}\n" for key, value in settings.items())
        self.running = False

    def _run(self, tool: str, *args: str) -> None:
        kwargs = {}
        if self._user is not None:
            kwargs = {"user": self._user.pw_uid, "group": self._user.pw_gid, "extra_groups": []}
        result = subprocess.run(
            [str(self.bin_dir / tool), *args],
            capture_output=True,
            text=True,
            timeout=_TIMEOUT,
            check=False,
            cwd=self.root,
            **kwargs,
        )
        if result.returncode != 0:
            raise RuntimeError(f"{tool} {' '.join(args)} failed ({result.returncode}): {result.stderr}")

    def start(self) -> None:
        """Start the server and wait until it accepts connections."""
        self._run(
            "pg_ctl", "start", "-D", str(self.data), "-w", "-t", "30", "-l", str(self.root / "server.log")
        )
        self.running = True

    def stop(self) -> None:
        """Stop the server now: sessions are terminated, new connections refused."""
        self._run("pg_ctl", "stop", "-D", str(self.data), "-w", "-m", "fast")
        self.running = False

    def destroy(self) -> None:
        """Stop the server if it runs and remove the cluster."""
        if self.running:
            with contextlib.suppress(RuntimeError, subprocess.TimeoutExpired):
                self._run("pg_ctl", "stop", "-D", str(self.data), "-w", "-m", "immediate")
            self.running = False
        shutil.rmtree(self.root, ignore_errors=True)
