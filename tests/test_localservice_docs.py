"""The local service's API description in docs/ is what the app serves."""

from __future__ import annotations

import difflib
import importlib.util
import json
from pathlib import Path
from types import ModuleType

ROOT = Path(__file__).resolve().parents[1]


def _script() -> ModuleType:
    spec = importlib.util.spec_from_file_location(
        "local_service_docs", ROOT / "scripts" / "local_service_docs.py"
    )
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_committed_api_description_is_what_the_app_generates() -> None:
    for path, expected in _script().rendered().items():
        committed = path.read_text(encoding="utf-8") if path.exists() else ""
        diff = "".join(
            list(
                difflib.unified_diff(
                    committed.splitlines(keepends=True),
                    expected.splitlines(keepends=True),
                    str(path.relative_to(ROOT)),
                    "generated",
                )
            )[:40]
        )
        assert committed == expected, (
            f"{path.relative_to(ROOT)} is stale: run "
            f"`PYTHONPATH=src .venv/bin/python scripts/local_service_docs.py`\n{diff}"
        )


def test_the_description_names_the_token_and_every_endpoint() -> None:
    schema = json.loads((ROOT / "docs" / "local-service-openapi.json").read_text("utf-8"))
    assert schema["security"] == [{"localServiceToken": []}]
    assert schema["components"]["securitySchemes"]["localServiceToken"]["scheme"] == "bearer"
    assert set(schema["paths"]) == {
        "/v1/status",
        "/v1/catalogue",
        "/v1/receipts",
        "/v1/id-card/read",
        "/v1/cash-in",
        "/v1/cash-in/{session_id}",
        "/v1/cash-in/{session_id}/escrow",
        "/v1/cash-in/{session_id}/end",
        "/v1/bank-card",
        "/v1/bank-card/accept",
        "/v1/bank-card/eject",
        "/v1/bank-card/retain",
    }
    # every refusal is described with the one error shape, not FastAPI's default 422 body
    for operations in schema["paths"].values():
        for operation in operations.values():
            for status, answer in operation["responses"].items():
                if status.startswith(("4", "5")):
                    ref = answer["content"]["application/json"]["schema"]["$ref"]
                    assert ref.endswith("/ErrorResponse"), status
    assert "HTTPValidationError" not in schema["components"]["schemas"]
