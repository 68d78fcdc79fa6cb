"""The admin console: static files under /ui, served without a key (every API call the page makes needs one).

The page is plain HTML, CSS and JavaScript modules from ui/ in this package: nothing is built and nothing is
fetched from elsewhere at run time. The index lives at /ui (not /ui/) and names its assets as ui/<file>, so
relative URLs resolve the same behind a Function URL, an HTTP API or a custom domain with a base path.
"""

from __future__ import annotations

from functools import cache
from pathlib import Path

from fastapi import APIRouter
from starlette.responses import RedirectResponse, Response

from .errors import GatewayError

ASSETS = Path(__file__).with_name("ui")
_TYPES = {
    ".html": "text/html; charset=utf-8",
    ".css": "text/css; charset=utf-8",
    ".js": "text/javascript; charset=utf-8",
    ".svg": "image/svg+xml",
}
# The page loads only its own files; inline script (and so an event handler smuggled in as text) never runs.
HEADERS = {
    "content-security-policy": "default-src 'self'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'",
    "x-content-type-options": "nosniff",
    "referrer-policy": "no-referrer",
    "cache-control": "no-cache",  # a redeployed console shows at once
}

router = APIRouter(prefix="/ui", include_in_schema=False)


# The files there, by plain name: a request names one of these or gets a 404 (never a path, never a lookup).
_FILES = frozenset(path.name for path in ASSETS.iterdir() if path.suffix in _TYPES)


@cache
def _read(name: str) -> bytes:
    return (ASSETS / name).read_bytes()  # once per process: a few small files


def _serve(name: str) -> Response:
    if name not in _FILES:
        raise GatewayError(404, "Not found.")
    return Response(_read(name), media_type=_TYPES[Path(name).suffix], headers=HEADERS)


@router.get("")
async def console_page() -> Response:
    return _serve("index.html")


@router.get("/{name:path}")
async def console_asset(name: str) -> Response:
    if name == "":
        return RedirectResponse("../ui", status_code=308)  # relative: keeps any base path in front
    return _serve(name)
