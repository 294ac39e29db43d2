"""`feedgrid catalog`: GB/T 28181 catalogs in and out through a running FeedGrid API."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Annotated, Any

import httpx
import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

catalog_app = typer.Typer(
    help=(
        "GB/T 28181 catalogs: import a platform's MANSCDP catalog files into a department, "
        "export the catalog shared with an upper platform, write a sample catalog."
    ),
    no_args_is_help=True,
)
console = Console(stderr=True)
API_HELP = "FeedGrid API base URL"
TOKEN_HELP = (
    "Bearer token (a department's gateway or admin key, or the city admin token); default: "
    "FEEDGRID_TOKEN, else FEEDGRID_ADMIN_TOKEN, else var/admin-token"
)


def _token(token: str | None) -> str:
    found = token or os.environ.get("FEEDGRID_TOKEN") or os.environ.get("FEEDGRID_ADMIN_TOKEN")
    if not found and Path("var/admin-token").exists():
        found = Path("var/admin-token").read_text().strip()
    if not found:
        console.print("[red]no token: pass --token or set FEEDGRID_TOKEN[/red]")
        raise typer.Exit(2)
    return found


def _client(api: str, token: str | None) -> httpx.Client:
    return httpx.Client(
        base_url=api.rstrip("/"), headers={"Authorization": f"Bearer {_token(token)}"}, timeout=600
    )


def _progress() -> Progress:
    return Progress(
        TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
        console=console,
    )  # fmt: skip


@catalog_app.command("import")
def import_files(
    files: Annotated[
        list[Path],
        typer.Argument(
            exists=True,
            dir_okay=False,
            readable=True,
            help="MANSCDP files (Response or Notify, CmdType Catalog), posted in the order given; "
            "the messages of one SN may be split over several files",
        ),
    ],  # fmt: skip
    department: Annotated[str, typer.Option(help="The department whose platform this is")],
    api: Annotated[str, typer.Option(help=API_HELP)] = "http://127.0.0.1:8000",
    token: Annotated[str | None, typer.Option(help=TOKEN_HELP)] = None,
    sharing: Annotated[
        str, typer.Option(help="Sharing class of new ordinary channels")
    ] = "unconditional",
    secret_sharing: Annotated[
        str, typer.Option(help="Sharing class of new channels marked Secrecy=1")
    ] = "not_shared",
) -> None:
    """Post catalog files to POST /v1/catalog/manscdp as the department's gateway would.

    Each file is one message, in the encoding its declaration names (GB2312, GBK or UTF-8).
    Prints one JSON line per file (what was created, updated, retired, rejected) on stdout.
    """
    params = {"department": department, "sharing": sharing, "secret_sharing": secret_sharing}
    failed = 0
    totals = {"created": 0, "updated": 0, "retired": 0, "rejected": 0}
    with _client(api, token) as client, _progress() as progress:
        task = progress.add_task("importing catalog files", total=len(files))
        for path in files:
            progress.update(task, description=f"importing {path.name}")
            response = client.post(
                "/v1/catalog/manscdp", content=path.read_bytes(), params=params,
                headers={"Content-Type": "Application/MANSCDP+xml"},
            )  # fmt: skip
            progress.advance(task)
            if response.status_code != 200:
                failed += 1
                console.print(f"[red]{path}: {response.status_code} {response.text}[/red]")
                continue
            answer: dict[str, Any] = response.json()
            for name in ("created", "updated", "retired"):
                totals[name] += answer["channels"][name]
            totals["rejected"] += len(answer["rejected"])
            print(json.dumps({"file": str(path), **answer}, ensure_ascii=False), flush=True)
    console.print(
        f"{len(files) - failed} of {len(files)} files taken: {totals['created']} channels "
        f"created, {totals['updated']} updated, {totals['retired']} retired, "
        f"{totals['rejected']} items rejected"
    )
    if failed:
        raise typer.Exit(1)


@catalog_app.command("export")
def export_catalog(
    platform: Annotated[str, typer.Option(help="The upper platform's department code")],
    out: Annotated[Path, typer.Option(help="Directory for the pages")] = Path("shared-catalog"),
    format: Annotated[str, typer.Option(help="manscdp or geojson")] = "manscdp",
    page_size: Annotated[int, typer.Option(help="Items per message (page)")] = 500,
    api: Annotated[str, typer.Option(help=API_HELP)] = "http://127.0.0.1:8000",
    token: Annotated[str | None, typer.Option(help=TOKEN_HELP)] = None,
) -> None:
    """Fetch every page of GET /v1/catalog/shared for an upper platform into files
    (catalog-0001.xml ... or .geojson), ready for `feedgrid catalog import` elsewhere."""
    out.mkdir(parents=True, exist_ok=True)
    suffix = "xml" if format == "manscdp" else "geojson"
    with _client(api, token) as client, _progress() as progress:
        params: dict[str, Any] = {"platform": platform, "format": format, "page_size": page_size}
        task = progress.add_task("exporting the shared catalog", total=None)
        page, pages = 1, 1
        while page <= pages:
            response = client.get("/v1/catalog/shared", params={**params, "page": page})
            if response.status_code != 200:
                console.print(f"[red]{response.status_code} {response.text}[/red]")
                raise typer.Exit(1)
            pages = int(response.headers.get("x-catalog-pages", "1"))
            progress.update(task, total=pages, completed=page)
            (out / f"catalog-{page:04d}.{suffix}").write_bytes(response.content)
            page += 1
    console.print(f"{pages} page(s) in {out}/")


@catalog_app.command("sample")
def write_sample(
    out: Annotated[Path, typer.Argument(help="File to write")],
    channels: Annotated[
        int, typer.Option(help="0: the README's sample platform; N: a synthetic one of N")
    ] = 0,
    encoding: Annotated[str, typer.Option(help="GB2312, GBK or UTF-8")] = "GB2312",
) -> None:
    """Write a MANSCDP catalog Response as a platform would send it."""
    from deploy.catalog_samples import sample_catalog, synthetic_catalog

    body = (
        synthetic_catalog(channels, encoding=encoding)
        if channels
        else sample_catalog(encoding=encoding)
    )
    out.write_bytes(body)
    console.print(f"{out}: {len(body)} bytes ({encoding})")
