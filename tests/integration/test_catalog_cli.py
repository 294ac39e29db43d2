"""`feedgrid catalog import | export | sample` against a real uvicorn serving the API."""

from __future__ import annotations

import json
from pathlib import Path

import httpx
import pytest
from typer.testing import CliRunner

from deploy.catalog_samples import channel_code as code
from deploy.cli import app as feedgrid
from registry_api.app import create_app
from schemas.settings import Settings
from tests.conftest import ADMIN_TOKEN
from tests.integration.catalog_support import FIXTURES
from tests.integration.server_support import serving

pytestmark = [pytest.mark.kafka, pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)]


def test_the_cli_imports_files_and_exports_the_shared_catalog(
    settings: Settings, tmp_path: Path
) -> None:
    runner = CliRunner()
    sample = tmp_path / "sample.xml"
    written = runner.invoke(feedgrid, ["catalog", "sample", str(sample)])
    assert written.exit_code == 0, written.output
    with serving(create_app(settings)) as base_url:
        admin = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
        for department in ("lz-cmb", "gs-province"):
            created = httpx.post(
                f"{base_url}/v1/departments",
                json={"code": department, "name": department, "kind": "other"},
                headers=admin,
            )
            assert created.status_code == 201, created.text
        common = ["--api", base_url, "--token", ADMIN_TOKEN]
        parts = [str(FIXTURES / "answer_sn42_part1.xml"), str(FIXTURES / "answer_sn42_part2.xml")]
        imported = runner.invoke(
            feedgrid, ["catalog", "import", *parts, str(sample), "--department", "lz-cmb", *common]
        )
        assert imported.exit_code == 0, imported.output
        answers = [
            json.loads(line) for line in imported.stdout.splitlines() if line.startswith("{")
        ]
        assert [answer["state"] for answer in answers] == ["waiting", "applied", "applied"]
        assert answers[1]["channels"]["created"] == 5 and answers[2]["channels"]["unchanged"] == 5

        out = tmp_path / "shared"
        exported = runner.invoke(
            feedgrid,
            ["catalog", "export", "--platform", "gs-province", "--out", str(out),
             "--page-size", "4", *common],
        )  # fmt: skip
        assert exported.exit_code == 0, exported.output
        pages = sorted(out.iterdir())
        assert [page.name for page in pages] == ["catalog-0001.xml", "catalog-0002.xml"]
        body = b"".join(page.read_bytes() for page in pages)
        assert code(1).encode() in body and code(5).encode() not in body  # Secrecy=1 stays home

        refused = runner.invoke(
            feedgrid, ["catalog", "import", str(FIXTURES / "billion_laughs.xml"),
                       "--department", "lz-cmb", *common],
        )  # fmt: skip
        assert refused.exit_code == 1 and "xml_forbidden" in refused.output
