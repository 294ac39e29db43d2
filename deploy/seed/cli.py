"""Command line of the demo-city generator: ``feedgrid seed`` and ``python -m deploy.seed``."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.table import Table

BULK_CONTENT_TYPE = "application/x-ndjson"


class LoadError(RuntimeError):
    """The running FeedGrid refused part of the demo city."""


def load_into_api(
    out_dir: Path, api_url: str, token: str, timeout_s: float = 900.0
) -> dict[str, Any]:
    """Create the departments, then bulk-import ``feeds.ndjson`` into a running FeedGrid.

    ``POST {api_url}/v1/departments`` per department (201 created, 409 already there: both
    fine), then one ``POST {api_url}/v1/feeds/bulk`` with the NDJSON bytes. Returns a summary
    with the API's JSON answer to the bulk import; raises :class:`LoadError` on a refusal and
    ``httpx.HTTPError`` when the API cannot be reached.
    """
    import httpx
    import orjson

    departments = orjson.loads((out_dir / "departments.json").read_bytes())
    body = (out_dir / "feeds.ndjson").read_bytes()
    created: list[str] = []
    existing: list[str] = []
    with httpx.Client(
        base_url=api_url.rstrip("/"),
        headers={"Authorization": f"Bearer {token}", "Accept": "application/json"},
        timeout=httpx.Timeout(timeout_s, connect=10.0),
    ) as client:
        for department in departments:
            answer = client.post("/v1/departments", json=department)
            if answer.status_code in (200, 201):
                created.append(department["code"])
            elif answer.status_code == 409:
                existing.append(department["code"])
            else:
                raise LoadError(
                    f"POST /v1/departments ({department['code']}): HTTP {answer.status_code}: "
                    f"{answer.text[:500]}"
                )
        answer = client.post(
            "/v1/feeds/bulk", content=body, headers={"Content-Type": BULK_CONTENT_TYPE}
        )
        if answer.status_code >= 300:
            raise LoadError(f"POST /v1/feeds/bulk: HTTP {answer.status_code}: {answer.text[:2000]}")
        try:
            bulk: Any = answer.json()
        except ValueError:
            bulk = {"text": answer.text[:2000]}
    return {
        "departments_created": created,
        "departments_existing": existing,
        "bulk_status": answer.status_code,
        "bulk_bytes": len(body),
        "bulk": bulk,
    }


def _shorten(value: Any, items: int = 10) -> Any:
    """The answer with long lists cut, for printing."""
    if isinstance(value, dict):
        return {k: _shorten(v, items) for k, v in value.items()}
    if isinstance(value, list):
        head = [_shorten(v, items) for v in value[:items]]
        if len(value) > items:
            head.append(f"... {len(value) - items} more")
        return head
    return value


def _print_summary(console: Console, manifest: dict[str, Any], out: Path, seconds: float) -> None:
    counts = manifest["counts"]
    console.print(f"[b]Demo city[/b] in {out}: {seconds:.1f} s, seed {manifest['seed']}")
    table = Table()
    table.add_column("owner")
    table.add_column("cameras", justify="right")
    table.add_column("sensors", justify="right")
    for owner, c in counts["by_owner"].items():
        table.add_row(owner, str(c.get("camera", 0)), str(c.get("sensor", 0)))
    table.add_row(
        "[b]total[/b]", str(counts["by_kind"]["camera"]), str(counts["by_kind"]["sensor"])
    )
    console.print(table)
    for kind in ("camera", "sensor"):
        sharing = counts["by_sharing"][kind]
        total = max(1, sum(sharing.values()))
        text = ", ".join(f"{cls} {n} ({100 * n / total:.1f}%)" for cls, n in sharing.items())
        console.print(f"{kind}s: {text}")
    dups = counts["planted_duplicates"]
    detail = ", ".join(f"{kind} {n}" for kind, n in dups.items())
    console.print(f"planted duplicates: {sum(dups.values())} ({detail or 'none'})")
    console.print(f"access requests: {counts['access_requests']}")


def seed_command(
    out: Annotated[
        Path, typer.Option(help="Directory to write the demo city into (created if missing).")
    ] = Path("var/demo"),
    cameras: Annotated[int, typer.Option(min=0, help="Number of camera channels.")] = 57_000,
    sensors: Annotated[int, typer.Option(min=0, help="Number of IoT sensors.")] = 3_000,
    seed: Annotated[int, typer.Option(help="Random seed: same seed and counts, same bytes.")] = (
        28181
    ),
    requests: Annotated[
        int, typer.Option(min=0, help="Number of synthetic access requests to generate.")
    ] = 2_000,
    load: Annotated[
        bool,
        typer.Option(help="also load the city into a running FeedGrid through its bulk import API"),
    ] = False,
    api_url: Annotated[
        str, typer.Option(help="Base URL of the running FeedGrid API (with --load).")
    ] = "http://127.0.0.1:8000",
    token: Annotated[
        str | None,
        typer.Option(
            envvar="FEEDGRID_ADMIN_TOKEN",
            help="City-admin bearer token for --load (default: $FEEDGRID_ADMIN_TOKEN).",
            show_default=False,
        ),
    ] = None,
    progress: Annotated[bool, typer.Option(help="Show a progress bar.")] = True,
) -> None:
    """Generate the deterministic demo city (modelled on Lanzhou); optionally load it.

    Writes to --out: departments.json (24 departments); feeds.ndjson and
    feeds.geojson (camera channels of public security, urban management,
    transport and environment with GB/T 28181 codes, plus IoT sensors, as
    GeoJSON Features in the bulk-import format); access-requests.ndjson
    (a seeded stream of access requests); manifest.json (counts, planted
    cross-department duplicates, sha256 of every file).

    The same --seed and counts always give byte-identical files.

    With --load, the departments are created (POST /v1/departments) and the
    feeds sent to POST /v1/feeds/bulk of the FeedGrid at --api-url.
    """
    from deploy.seed.writer import write_demo_city

    console = Console()
    if load and not token:
        typer.secho(
            "--load needs a city-admin token: --token or FEEDGRID_ADMIN_TOKEN", fg="red", err=True
        )
        raise typer.Exit(2)
    began = time.perf_counter()
    manifest = write_demo_city(
        out, cameras=cameras, sensors=sensors, seed=seed, requests=requests, progress=progress
    )
    _print_summary(console, manifest, out, time.perf_counter() - began)
    if not load:
        return
    assert token is not None
    import httpx

    console.print(f"Loading into {api_url} ...")
    began = time.perf_counter()
    try:
        summary = load_into_api(out, api_url, token)
    except (LoadError, httpx.HTTPError) as error:
        typer.secho(f"load failed: {error}", fg="red", err=True)
        raise typer.Exit(1) from None
    console.print(
        f"departments: {len(summary['departments_created'])} created, "
        f"{len(summary['departments_existing'])} already there; bulk import: HTTP "
        f"{summary['bulk_status']}, {summary['bulk_bytes']} bytes sent, "
        f"{time.perf_counter() - began:.1f} s"
    )
    console.print_json(data=_shorten(summary["bulk"]))


seed_app = typer.Typer(
    name="seed",
    help="Generate the deterministic demo city (and optionally load it into FeedGrid).",
    add_completion=False,
)
seed_app.command(name="seed")(seed_command)


def main() -> None:
    seed_app(prog_name="python -m deploy.seed")
