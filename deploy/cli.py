"""The `feedgrid` command: run, migrate, seed and operate a FeedGrid installation."""

from __future__ import annotations

import asyncio
import contextlib
import secrets
import signal
import sys
from collections.abc import Awaitable, Callable
from typing import Annotated

import typer

from schemas.settings import Settings, SettingsError, load_settings

app = typer.Typer(
    name="feedgrid",
    help=(
        "FeedGrid: one registry of a city's cameras and sensors, with sharing policy, signed "
        "retrieval and usage analytics.\n\nSettings come from FEEDGRID_* environment variables "
        "(see README). `feedgrid up` runs everything on one machine."
    ),
    no_args_is_help=True,
    add_completion=False,
    rich_markup_mode="markdown",  # paragraphs reflow to the terminal's width
)


def _settings(**overrides: object) -> Settings:
    try:
        return load_settings(**overrides)
    except SettingsError as error:
        typer.secho(str(error), fg=typer.colors.RED, err=True)
        raise typer.Exit(2) from None


def _admin_token(settings: Settings) -> str:
    """The city-admin token: FEEDGRID_ADMIN_TOKEN, else one generated once under var/."""
    if settings.admin_token:
        return settings.admin_token
    path = settings.var_dir / "admin-token"
    if path.exists():
        return path.read_text().strip()
    path.parent.mkdir(parents=True, exist_ok=True)
    token = "fga_" + secrets.token_urlsafe(24)
    path.write_text(token + "\n")
    path.chmod(0o600)
    return token


@app.command()
def migrate() -> None:
    """Bring the registry database and the ClickHouse tables to the newest schema (idempotent).

    A new ClickHouse rollup on a store that holds events is backfilled from them a month at a
    time; run it before the stream workers start (each worker also migrates at its start,
    before consuming), as events inserted meanwhile would be summed twice.
    """
    settings = _settings()
    _migrate(settings)
    typer.echo("migrations applied")


def _migrate(settings: Settings) -> None:
    from registry_api.migrate import upgrade_registry

    upgrade_registry(settings.database_url)
    try:
        from infra.clickhouse_migrations import apply_migrations
    except ModuleNotFoundError:
        return
    apply_migrations(settings.clickhouse_url)


@app.command()
def api(
    host: Annotated[
        str, typer.Option(help="Interface to bind (loopback by default)")
    ] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="TCP port")] = 8000,
    workers_inside: Annotated[
        bool,
        typer.Option(
            "--with-worker/--without-worker", help="Also run the Faust agents in this process"
        ),
    ] = False,
) -> None:
    """Run the HTTP API (with the outbox relay, webhook delivery and the deadline keeper).
    Scale mode: run several behind a load balancer."""
    settings = _settings(embedded_worker=workers_inside)
    _serve(settings, host, port)


@app.command()
def worker() -> None:
    """Run the Faust agents and the ClickHouse sink as one worker of the group (scale mode)."""
    settings = _settings()
    from streams.worker import run_worker

    run_worker(settings)


@app.command()
def up(
    host: Annotated[str, typer.Option(help="Interface to bind")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="TCP port")] = 8000,
    kafka: Annotated[
        bool, typer.Option(help="Start the local Kafka broker if none answers")
    ] = True,
    demo: Annotated[
        bool,
        typer.Option(
            help="The demo city: loaded and its traffic replayed on first start, its gateways "
            "reporting liveness on every start"
        ),
    ] = True,
    mqtt: Annotated[
        bool,
        typer.Option(
            help="Start the local MQTT broker (Mosquitto, `feedgrid mqtt`) for sensor grants "
            "when it is installed and FEEDGRID_MQTT_ADMIN_URL is unset (./deploy/up does)"
        ),
    ] = False,
) -> None:
    """Run every role in one process: API + outbox relay + Faust agents + ClickHouse sink.

    Uses the embedded defaults (SQLite registry, chdb analytics) unless FEEDGRID_* says
    otherwise, starts the local Kafka broker when needed and migrates. With the demo (the
    default): loads the demo city, replays its 2,000 access requests through the API and its
    recorded week into the access-events topic (once per database), and runs its gateways,
    which report the feeds' liveness through POST /v1/heartbeats while FeedGrid runs. The
    demo's clients run in a process of their own, which ends with FeedGrid.
    """
    settings = _settings(embedded_worker=True)
    token = _admin_token(settings)
    settings = _settings(embedded_worker=True, admin_token=token)
    if mqtt and settings.mqtt_admin_url is None:
        settings = _with_local_broker(settings, embedded_worker=True, admin_token=token)
    if kafka:
        from deploy.local_kafka import start_kafka

        bootstrap_port = int(settings.kafka_bootstrap.split(",")[0].rsplit(":", 1)[1])
        start_kafka(port=bootstrap_port)
    _migrate(settings)
    base_url = f"http://{host}:{port}"
    _print_welcome(base_url, token)
    if not demo:
        _serve(settings, host, port)
        return
    from deploy.demo import DemoClients

    clients = DemoClients(settings, base_url, token)
    _serve(settings, host, port, after_start=clients.start, on_stop=clients.stop)


def _with_local_broker(settings: Settings, **overrides: object) -> Settings:
    """The settings with the local MQTT broker as FeedGrid's broker (started when needed)."""
    from deploy.local_mosquitto import ADMIN, MosquittoLauncherError, start_mosquitto

    try:
        broker = start_mosquitto(port=settings.media_gateway_mqtt_port)
    except MosquittoLauncherError as error:
        typer.echo(f"no MQTT broker, sensor grants get no broker credentials: {error}", err=True)
        return settings
    return _settings(
        **overrides,
        mqtt_admin_url=broker.url,
        mqtt_admin_username=ADMIN,
        mqtt_admin_password=broker.admin_password,
    )


def _print_welcome(base_url: str, token: str) -> None:
    typer.secho("\nFeedGrid is starting", fg=typer.colors.GREEN, bold=True)
    typer.echo(f"  API docs      {base_url}/docs")
    typer.echo(f"  dashboard     {base_url}/dashboard")
    typer.echo(f"  readiness     {base_url}/readyz")
    typer.echo(f"  metrics       {base_url}/metrics")
    typer.echo(f"  admin token   {token}")
    typer.echo(
        f"  try           curl -H 'Authorization: Bearer {token}' "
        f"'{base_url}/v1/feeds?near=103.83,36.06,500&limit=5'\n"
    )


def _serve(
    settings: Settings,
    host: str,
    port: int,
    after_start: Callable[[], Awaitable[None]] | None = None,
    on_stop: Callable[[], None] | None = None,
) -> None:
    import uvicorn

    from deploy.composition import build_app
    from deploy.http_server import server_config
    from infra.event_loop import run as run_loop
    from infra.structured_logging import configure_logging
    from registry_api.feeds.bulk_validation import stop_helper

    configure_logging(settings.log_format, settings.log_level)
    application = build_app(settings)
    config = server_config(application, host=host, port=port, log_config=None)
    server = uvicorn.Server(config)

    async def main() -> None:
        serving = asyncio.create_task(server.serve())
        if after_start is not None:
            while not server.started and not serving.done():
                await asyncio.sleep(0.1)
            if server.started:
                # what comes after the start ends with the server, if not before
                starting = asyncio.ensure_future(after_start())
                await asyncio.wait({serving, starting}, return_when=asyncio.FIRST_COMPLETED)
                if not starting.done():
                    starting.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await starting
        await serving

    # uvicorn stops on SIGTERM/SIGINT and then raises the signal again with the handler it
    # found, so that the exit status says why the process ended. Found here: the stop is
    # noted, the loop and the bulk-validation helper end in order (the default action would
    # kill the process with no exit handler run), and only then does the signal end it.
    stopped_by: list[int] = []

    def note_stop(signum: int, _frame: object) -> None:
        stopped_by.append(signum)
        server.should_exit = True  # a stop before uvicorn listens for one

    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, note_stop)
    try:
        run_loop(main(), settings.event_loop)
    finally:
        if on_stop is not None:
            on_stop()
    stop_helper()
    if stopped_by:
        sys.stdout.flush()
        sys.stderr.flush()
        signal.signal(stopped_by[0], signal.SIG_DFL)
        signal.raise_signal(stopped_by[0])


def _mount_subcommands() -> None:
    from deploy.catalog_cli import catalog_app
    from deploy.local_kafka import kafka_app
    from deploy.local_mosquitto import mqtt_app
    from deploy.local_postgres import postgres_app
    from deploy.seed.cli import seed_command

    app.add_typer(
        kafka_app, name="kafka", help="The local Apache Kafka broker (KRaft), and a 3-node cluster."
    )
    app.add_typer(
        postgres_app, name="postgres", help="A throwaway local PostgreSQL cluster for tests."
    )
    app.add_typer(
        mqtt_app,
        name="mqtt",
        help="The local MQTT broker for sensor grants (Mosquitto 2, dynamic security).",
    )
    app.command(name="seed")(seed_command)
    app.add_typer(catalog_app, name="catalog", help=catalog_app.info.help)


_mount_subcommands()


def main() -> None:
    app()


if __name__ == "__main__":
    main()
