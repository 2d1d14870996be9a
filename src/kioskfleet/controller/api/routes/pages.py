"""The operators' dashboard (a static page that reads the API)."""

from pathlib import Path

from fastapi import APIRouter
from fastapi.responses import HTMLResponse

router = APIRouter(tags=["pages"], include_in_schema=False)

_STATIC = Path(__file__).resolve().parents[2] / "static"


@router.get("/", response_class=HTMLResponse)
def dashboard() -> HTMLResponse:
    """Fleet by district, refreshing itself."""
    return HTMLResponse((_STATIC / "index.html").read_text(encoding="utf-8"))
