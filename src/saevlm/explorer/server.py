"""Serving the explorer: the standard library's ``ThreadingHTTPServer``, one route per page
kind, the same URL layout as a ``--static`` folder."""

from __future__ import annotations

import re
import threading
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Callable
from urllib.parse import unquote, urlsplit

from saevlm.errors import UserError
from saevlm.explorer.templates import SCRIPT, STYLE

ROUTES = [
    (re.compile(r"^/(index\.html)?$"), "run"),
    (re.compile(r"^/static/explorer\.js$"), "script"),
    (re.compile(r"^/static/style\.css$"), "style"),
    (re.compile(r"^/sae/([^/]+)/(index\.html)?$"), "table"),
    (re.compile(r"^/sae/([^/]+)/latents\.js$"), "latents"),
    (re.compile(r"^/sae/([^/]+)/latent/(\d+)\.html$"), "latent"),
    (re.compile(r"^/sae/([^/]+)/thumb/(\d+)\.jpg$"), "thumb"),
    (re.compile(r"^/sae/([^/]+)/overlay/(\d+)/(\d+)\.jpg$"), "overlay"),
]
TYPES = {"run": "text/html", "table": "text/html", "latent": "text/html", "script": "text/javascript",
         "latents": "text/javascript", "style": "text/css", "thumb": "image/jpeg",
         "overlay": "image/jpeg"}


def make_server(explorer, host: str, port: int) -> ThreadingHTTPServer:
    """A server for ``explorer`` (not started); ``server.server_address`` has the real port."""
    lock = threading.Lock()  # pages share lazily loaded state: one computation at a time
    cached: dict[str, bytes] = {}

    class Handler(BaseHTTPRequestHandler):
        def log_message(self, fmt, *args):  # quiet: one line per error only
            pass

        def do_GET(self):  # noqa: N802 - the http.server API
            path = unquote(urlsplit(self.path).path)
            for pattern, kind in ROUTES:
                m = pattern.match(path)
                if m:
                    break
            else:
                return self._send(HTTPStatus.NOT_FOUND, b"not found", "text/plain")
            try:
                with lock:
                    body = self._page(kind, m, cached)
            except KeyError:
                return self._send(HTTPStatus.NOT_FOUND, b"not found", "text/plain")
            except UserError as err:
                return self._send(HTTPStatus.INTERNAL_SERVER_ERROR, str(err).encode(), "text/plain")
            self._send(HTTPStatus.OK, body, TYPES[kind])

        def _page(self, kind: str, m, cached: dict) -> bytes:
            if kind == "script":
                return SCRIPT.encode()
            if kind == "style":
                return STYLE.encode()
            if kind == "run":
                return explorer.run_page().encode()
            slug = m.group(1)
            if kind == "table":
                return explorer.table_page(slug).encode()
            if kind == "latents":
                if slug not in cached:
                    cached[slug] = explorer.latents_js(slug).encode()
                return cached[slug]
            if kind == "latent":
                return explorer.latent_page(slug, int(m.group(2))).encode()
            if kind == "overlay":
                return explorer.overlay(slug, int(m.group(2)), int(m.group(3)))
            return explorer.thumbnail(slug, int(m.group(2)))

        def _send(self, status, body: bytes, ctype: str) -> None:
            self.send_response(status)
            self.send_header("Content-Type", f"{ctype}; charset=utf-8" if ctype.startswith("text") else ctype)
            self.send_header("Content-Length", str(len(body)))
            self.send_header("Cache-Control", "no-cache")
            self.end_headers()
            self.wfile.write(body)

    try:
        return ThreadingHTTPServer((host, port), Handler)
    except OSError as err:
        raise UserError(f"--port {port}: cannot serve on {host}:{port} ({err.strerror}); pick another "
                        f"--port (0 = any free one)") from None


def serve(explorer, host: str, port: int, log: Callable = print) -> None:
    server = make_server(explorer, host, port)
    h, p = server.server_address[:2]
    log(f"saevlm explore: {len(explorer.index.saes)} SAE(s) of {explorer.index.run_dir} at http://{h}:{p}/ "
        f"(Ctrl-C to stop)")
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        log("stopped")
    finally:
        server.server_close()
