"""``/ui``: the web observer, static files packaged with the daemon (no CDN, no build step, works offline).

Served with a strict Content-Security-Policy: scripts, styles and connections from the admin port itself only, no
inline script or style, no frames, no forms. The page keeps the operator's token in ``sessionStorage`` and sends
it as ``Authorization: Bearer``, never as a cookie, so a request forged by another site carries no credential.
"""

from __future__ import annotations

from importlib import resources

from aiohttp import web

CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; img-src 'self' data:; "
    "base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
)
HEADERS = {
    "Content-Security-Policy": CSP,
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "X-Frame-Options": "DENY",
    "Cache-Control": "no-cache",
}
TYPES = {".html": "text/html", ".js": "text/javascript", ".css": "text/css", ".svg": "image/svg+xml"}


class UI:
    """The packaged files, read once."""

    def __init__(self) -> None:
        root = resources.files("mcp_supervisor.admin") / "ui"
        self.files: dict[str, tuple[bytes, str]] = {}
        for entry in root.iterdir():
            suffix = "." + entry.name.rpartition(".")[2]
            if entry.is_file() and suffix in TYPES:
                self.files[entry.name] = (entry.read_bytes(), TYPES[suffix])

    async def index(self, _: web.Request) -> web.Response:
        return self._file("index.html")

    async def asset(self, request: web.Request) -> web.Response:
        return self._file(request.match_info["name"])

    async def redirect(self, _: web.Request) -> web.Response:
        raise web.HTTPFound("/ui/")

    def _file(self, name: str) -> web.Response:
        found = self.files.get(name)
        if found is None:
            raise web.HTTPNotFound()
        body, ctype = found
        return web.Response(body=body, content_type=ctype, charset="utf-8", headers=HEADERS)

    @classmethod
    def add_routes(cls, app: web.Application) -> None:
        ui = cls()
        app.router.add_get("/ui", ui.redirect)
        app.router.add_get("/ui/", ui.index)
        app.router.add_get("/ui/{name}", ui.asset)
