"""A throwaway local PostgreSQL cluster on 127.0.0.1 for tests and the PostgreSQL registry mode.

Used by `feedgrid postgres ...`, `python -m deploy.local_postgres ...` and the test fixtures::

    <var>/postgres/               owned by the postgres OS user; also the unix socket dir
    <var>/postgres/data/          the cluster (initdb once), settings in data/feedgrid.conf
    <var>/postgres/postgres.log   server log

Tuned for test speed, not durability (fsync, synchronous_commit, full_page_writes off).
Role ``feedgrid`` (password ``feedgrid``, superuser) owns database ``feedgrid``.

Run as root (as on the dev machines and CI), the server runs as the ``postgres`` OS user via
``runuser``: initdb and postgres refuse to run as root. The var dir's parent directories get
``o+x`` where the postgres user could not otherwise reach them (never read or write bits).
"""

from __future__ import annotations

import contextlib
import os
import pwd
import re
import shutil
import stat
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any

import typer

from deploy.launcher_common import file_lock, log_tail, var_dir

DEFAULT_PORT = 55432
HOST = "127.0.0.1"
PG_ROOT = Path("/usr/lib/postgresql")
OS_USER = "postgres"
ROLE = "feedgrid"
PASSWORD = "feedgrid"
DATABASE = "feedgrid"

Echo = Callable[[str], None]


class PostgresLauncherError(RuntimeError):
    """The local cluster could not be installed, started or stopped; the message says why."""


def _default_echo(message: str) -> None:
    typer.echo(message, err=True)


def database_url(port: int = DEFAULT_PORT) -> str:
    """SQLAlchemy URL of the ``feedgrid`` database on the local cluster."""
    return f"postgresql+asyncpg://{ROLE}:{PASSWORD}@{HOST}:{port}/{DATABASE}"


@dataclass(frozen=True)
class PostgresPaths:
    root: Path

    @property
    def data(self) -> Path:
        return self.root / "data"

    @property
    def log(self) -> Path:
        return self.root / "postgres.log"

    @property
    def socket_dir(self) -> Path:
        return self.root

    @property
    def settings(self) -> Path:
        return self.data / "feedgrid.conf"


def postgres_paths(base: Path | None = None) -> PostgresPaths:
    """Paths of the local cluster under ``base`` (default: the var dir)."""
    return PostgresPaths((base or var_dir()) / "postgres")


# ---------------------------------------------------------------------------- binaries


def _installed_versions() -> list[str]:
    versions = [p.parent.parent.name for p in PG_ROOT.glob("*/bin/initdb")]
    return sorted(versions, key=lambda v: [int(x) for x in re.findall(r"\d+", v)] or [0])


def bin_dir(paths: PostgresPaths | None = None) -> Path:
    """The bin dir matching the cluster's PG_VERSION, else the newest installed version."""
    paths = paths or postgres_paths()
    versions = _installed_versions()
    if not versions:
        raise PostgresLauncherError(
            f"no PostgreSQL server binaries under {PG_ROOT}: run `feedgrid postgres install`"
        )
    with contextlib.suppress(OSError):
        wanted = (paths.data / "PG_VERSION").read_text().strip()
        if wanted in versions:
            return PG_ROOT / wanted / "bin"
        raise PostgresLauncherError(
            f"the cluster in {paths.data} is PostgreSQL {wanted}, but only {versions} are "
            f"installed: delete {paths.data} or install postgresql-{wanted}"
        )
    return PG_ROOT / versions[-1] / "bin"


def _postgis_installed(version: str) -> bool:
    return any(Path(f"/usr/share/postgresql/{version}/extension").glob("postgis.control"))


def _apt(args: list[str], echo: Echo) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    echo("$ apt-get " + " ".join(args))
    return subprocess.run(["apt-get", *args], capture_output=True, text=True, check=False, env=env)


def install_postgres(postgis: bool = True, echo: Echo | None = None) -> bool:
    """Install the PostgreSQL server (and, best effort, PostGIS) with apt-get when missing.

    Returns True when apt-get ran. A PostGIS install failure is a warning, not an error.
    """
    echo = echo or _default_echo
    need_server = not _installed_versions()
    version = None if need_server else _installed_versions()[-1]
    need_postgis = postgis and (version is None or not _postgis_installed(version))
    if not need_server and not need_postgis:
        return False
    if shutil.which("apt-get") is None:
        raise PostgresLauncherError("apt-get not found: install PostgreSQL server binaries by hand")
    update = _apt(["update"], echo)
    if update.returncode != 0:
        echo("warning: apt-get update failed:\n" + update.stderr.strip()[-2000:])
    if need_server:
        result = _apt(["install", "-y", "--no-install-recommends", "postgresql"], echo)
        if result.returncode != 0 or not _installed_versions():
            raise PostgresLauncherError(
                "apt-get install postgresql failed:\n" + (result.stdout + result.stderr)[-3000:]
            )
        version = _installed_versions()[-1]
        echo(f"Installed PostgreSQL {version}.")
    if postgis and version is not None and not _postgis_installed(version):
        package = f"postgresql-{version}-postgis-3"
        result = _apt(["install", "-y", "--no-install-recommends", package], echo)
        if result.returncode != 0 or not _postgis_installed(version):
            echo(
                f"warning: could not install {package} (PostGIS is only needed for the "
                f"benchmarks):\n" + (result.stdout + result.stderr).strip()[-1500:]
            )
        else:
            echo(f"Installed {package}.")
    return True


# ---------------------------------------------------------------------------- OS user


def _as_root() -> bool:
    return os.geteuid() == 0


def _os_user() -> pwd.struct_passwd:
    try:
        return pwd.getpwnam(OS_USER)
    except KeyError:
        raise PostgresLauncherError(
            f"no `{OS_USER}` OS user (the postgresql package creates it): "
            "run `feedgrid postgres install`"
        ) from None


def _run_as_server_user(
    command: list[str], check: bool = True, **kwargs: Any
) -> subprocess.CompletedProcess[str]:
    prefix = ["runuser", "-u", OS_USER, "--"] if _as_root() else []
    result = subprocess.run(
        prefix + command,
        capture_output=True,
        text=True,
        check=False,
        stdin=subprocess.DEVNULL,
        cwd="/",
        **kwargs,
    )
    if check and result.returncode != 0:
        raise PostgresLauncherError(
            f"{' '.join(command[:2])} failed (exit {result.returncode}):\n"
            + (result.stdout + result.stderr).strip()[-3000:]
        )
    return result


def _can_traverse(path: Path, user: pwd.struct_passwd) -> bool:
    info = path.stat()
    if info.st_uid == user.pw_uid:
        return bool(info.st_mode & stat.S_IXUSR)
    groups = set(os.getgrouplist(user.pw_name, user.pw_gid))
    if info.st_gid in groups:
        return bool(info.st_mode & stat.S_IXGRP)
    return bool(info.st_mode & stat.S_IXOTH)


def _ensure_traversable(path: Path, echo: Echo) -> None:
    """Give the postgres user search (x) permission on every ancestor of ``path`` it lacks."""
    user = _os_user()
    for ancestor in reversed(path.parents):
        if not _can_traverse(ancestor, user):
            mode = stat.S_IMODE(ancestor.stat().st_mode)
            ancestor.chmod(mode | stat.S_IXOTH)
            echo(f"chmod o+x {ancestor} (so the {OS_USER} OS user can reach {path})")


def _prepare_root(paths: PostgresPaths, echo: Echo) -> None:
    paths.root.mkdir(parents=True, exist_ok=True)
    if not _as_root():
        return
    _ensure_traversable(paths.root, echo)
    user = _os_user()
    info = paths.root.stat()
    if info.st_uid != user.pw_uid:
        os.chown(paths.root, user.pw_uid, user.pw_gid)
    paths.root.chmod(0o755)


# ---------------------------------------------------------------------------- cluster


def settings_text(port: int, paths: PostgresPaths) -> str:
    settings = {
        "listen_addresses": f"'{HOST}'",
        "port": str(port),
        "unix_socket_directories": f"'{paths.socket_dir}'",
        "max_connections": "200",
        # a throwaway test cluster: speed over durability
        "fsync": "off",
        "synchronous_commit": "off",
        "full_page_writes": "off",
        "shared_buffers": "128MB",
        "log_min_messages": "warning",
        "log_line_prefix": "'%m [%p] %q%u@%d '",
    }
    lines = ["# generated by deploy/local_postgres.py on every start: edits are overwritten"]
    lines += [f"{key} = {value}" for key, value in settings.items()]
    return "\n".join(lines) + "\n"


def configured_port(paths: PostgresPaths | None = None) -> int | None:
    """The port in <data>/feedgrid.conf, if the cluster was ever started by this module."""
    paths = paths or postgres_paths()
    try:
        text = paths.settings.read_text()
    except OSError:
        return None
    match = re.search(r"^port = (\d+)$", text, re.MULTILINE)
    return int(match.group(1)) if match else None


def _pg_ctl(
    paths: PostgresPaths, *args: str, check: bool = True
) -> subprocess.CompletedProcess[str]:
    return _run_as_server_user(
        [str(bin_dir(paths) / "pg_ctl"), "-D", str(paths.data), *args],
        check=check,
        start_new_session=True,  # the postmaster must outlive this process and its signals
    )


def postgres_running(paths: PostgresPaths | None = None) -> bool:
    """True when the cluster in <var>/postgres/data is running (pg_ctl status)."""
    paths = paths or postgres_paths()
    if not (paths.data / "PG_VERSION").exists():
        return False
    return _pg_ctl(paths, "status", check=False).returncode == 0


def postmaster_pid(paths: PostgresPaths | None = None) -> int | None:
    """Pid of the running postmaster (from postmaster.pid), or None."""
    paths = paths or postgres_paths()
    try:
        return int((paths.data / "postmaster.pid").read_text().split("\n", 1)[0])
    except (OSError, ValueError):
        return None


def _initdb(paths: PostgresPaths, echo: Echo) -> None:
    echo(f"Initialising a PostgreSQL cluster in {paths.data} ...")
    _run_as_server_user(
        [
            str(bin_dir(paths) / "initdb"),
            "-D",
            str(paths.data),
            "-U",
            "postgres",
            "-E",
            "UTF8",
            "--locale=C",
            "--auth-local=trust",
            "--auth-host=scram-sha-256",
            "--no-sync",
        ]
    )


def _write_settings(port: int, paths: PostgresPaths) -> None:
    paths.settings.write_text(settings_text(port, paths))
    main_conf = paths.data / "postgresql.conf"
    include = "include = 'feedgrid.conf'"
    text = main_conf.read_text()
    if include not in text:
        main_conf.write_text(text.rstrip("\n") + f"\n\n{include}\n")
    if _as_root():
        user = _os_user()
        for file in (paths.settings, main_conf):
            os.chown(file, user.pw_uid, user.pw_gid)
            file.chmod(0o600)


def _psql(paths: PostgresPaths, port: int, sql: str, database: str = "postgres") -> str:
    result = _run_as_server_user(
        [
            str(bin_dir(paths) / "psql"),
            "-X",
            "-q",
            "-t",
            "-A",
            "-v",
            "ON_ERROR_STOP=1",
            "-h",
            str(paths.socket_dir),
            "-p",
            str(port),
            "-U",
            "postgres",
            "-d",
            database,
            "-c",
            sql,
        ]
    )
    return result.stdout.strip()


def _ensure_role_and_database(paths: PostgresPaths, port: int) -> None:
    _psql(
        paths,
        port,
        f"DO $$ BEGIN IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = '{ROLE}') THEN "
        f"CREATE ROLE {ROLE} LOGIN SUPERUSER PASSWORD '{PASSWORD}'; END IF; END $$;",
    )
    exists = _psql(paths, port, f"SELECT 1 FROM pg_database WHERE datname = '{DATABASE}'")
    if exists != "1":
        _psql(paths, port, f"CREATE DATABASE {DATABASE} OWNER {ROLE}")


def _wait_accepting(paths: PostgresPaths, port: int, timeout: float) -> None:
    pg_isready = bin_dir(paths) / "pg_isready"
    deadline = time.monotonic() + timeout
    while True:
        result = subprocess.run(
            [str(pg_isready), "-q", "-h", HOST, "-p", str(port), "-t", "2"],
            check=False,
            capture_output=True,
        )
        if result.returncode == 0:
            return
        if time.monotonic() >= deadline:
            raise PostgresLauncherError(
                f"PostgreSQL does not accept connections on {HOST}:{port}. "
                f"Last lines of {paths.log}:\n{log_tail(paths.log)}"
            )
        time.sleep(0.3)


def start_postgres(port: int = DEFAULT_PORT, timeout: float = 60, echo: Echo | None = None) -> str:
    """Start (initialising once) the local cluster; return its SQLAlchemy URL.

    Idempotent: an already running cluster is left alone (role and database are ensured).
    Raises :class:`PostgresLauncherError` with the log's tail when it cannot start.
    """
    echo = echo or _default_echo
    paths = postgres_paths()
    install_postgres(postgis=False, echo=echo)
    _prepare_root(paths, echo)
    with file_lock(paths.root / ".start.lock"):
        if postgres_running(paths):
            running_port = configured_port(paths)
            if running_port not in (None, port):
                raise PostgresLauncherError(
                    f"the cluster in {paths.data} runs on port {running_port}, not {port}: "
                    "stop it first, or use another FEEDGRID_VAR_DIR"
                )
            _wait_accepting(paths, port, timeout)
            _ensure_role_and_database(paths, port)
            echo(f"PostgreSQL already running on {HOST}:{port}")
            return database_url(port)
        if not (paths.data / "PG_VERSION").exists():
            if paths.data.exists() and any(paths.data.iterdir()):
                raise PostgresLauncherError(
                    f"{paths.data} is not empty but holds no cluster: delete it to start afresh"
                )
            _initdb(paths, echo)
        _write_settings(port, paths)
        started = time.monotonic()
        result = _pg_ctl(
            paths, "-l", str(paths.log), "-w", "-t", str(int(timeout)), "start", check=False
        )
        if result.returncode != 0:
            raise PostgresLauncherError(
                f"pg_ctl start failed (exit {result.returncode}): {result.stdout.strip()}\n"
                f"Last lines of {paths.log}:\n{log_tail(paths.log)}"
            )
        _wait_accepting(paths, port, timeout)
        _ensure_role_and_database(paths, port)
        echo(
            f"PostgreSQL (pid {postmaster_pid(paths)}) is up on {HOST}:{port} "
            f"({time.monotonic() - started:.1f}s); log: {paths.log}"
        )
        return database_url(port)


def stop_postgres(echo: Echo | None = None) -> bool:
    """Stop the local cluster (pg_ctl stop -m fast). True if it was running, False if not."""
    echo = echo or _default_echo
    paths = postgres_paths()
    if not postgres_running(paths):
        echo("PostgreSQL is not running.")
        return False
    result = _pg_ctl(paths, "-m", "fast", "-w", "-t", "60", "stop", check=False)
    if result.returncode != 0:
        raise PostgresLauncherError(
            f"pg_ctl stop failed (exit {result.returncode}): {result.stdout}{result.stderr}"
        )
    echo("PostgreSQL stopped.")
    return True


# ---------------------------------------------------------------------------- CLI

postgres_app = typer.Typer(
    help=(
        "A throwaway local PostgreSQL cluster on 127.0.0.1 (port 55432, role/database feedgrid, "
        "fsync off) under $FEEDGRID_VAR_DIR/postgres (default ./var/postgres)."
    ),
    no_args_is_help=True,
    add_completion=False,
)


def _fail(error: Exception) -> typer.Exit:
    typer.secho(str(error), fg=typer.colors.RED, err=True)
    return typer.Exit(1)


@postgres_app.command()
def install(
    postgis: Annotated[
        bool, typer.Option("--postgis/--no-postgis", help="Also try to install PostGIS")
    ] = True,
) -> None:
    """Install the PostgreSQL server (and PostGIS, best effort) with apt-get if missing.

    Does nothing when everything is present already.
    """
    try:
        ran = install_postgres(postgis=postgis, echo=typer.echo)
    except PostgresLauncherError as error:
        raise _fail(error) from None
    if not ran:
        versions = ", ".join(_installed_versions())
        typer.echo(
            f"PostgreSQL {versions} already installed" + (" (with PostGIS)" if postgis else "")
        )


@postgres_app.command()
def start(
    port: Annotated[int, typer.Option(help="TCP port on 127.0.0.1")] = DEFAULT_PORT,
    timeout: Annotated[float, typer.Option(help="Seconds to wait for the server")] = 60,
) -> None:
    """Start the cluster (initdb on first start), create role and database `feedgrid`.

    Prints the SQLAlchemy URL. Exit 0 when it runs (already running is fine).
    """
    try:
        url = start_postgres(port=port, timeout=timeout, echo=typer.echo)
    except PostgresLauncherError as error:
        raise _fail(error) from None
    typer.echo(url)


@postgres_app.command()
def stop() -> None:
    """Stop the cluster (pg_ctl stop -m fast). Not running is fine (exit 0)."""
    try:
        stop_postgres(echo=typer.echo)
    except PostgresLauncherError as error:
        raise _fail(error) from None


@postgres_app.command()
def status() -> None:
    """Print whether the cluster runs. Exit code 0 when running, 1 when not."""
    paths = postgres_paths()
    try:
        running = postgres_running(paths)
    except PostgresLauncherError as error:
        raise _fail(error) from None
    port = configured_port(paths) or DEFAULT_PORT
    if running:
        typer.echo(f"PostgreSQL running on {HOST}:{port} (pid {postmaster_pid(paths)})")
        typer.echo(database_url(port))
        return
    typer.echo(f"PostgreSQL not running (cluster {paths.data})")
    raise typer.Exit(1)


if __name__ == "__main__":
    postgres_app()
