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


LOOPBACK = ("127.0.0.1", "localhost", "::1")
STATIC_KINDS = ("script", "style")


def allowed_hosts(host: str, port: int) -> set[str] | None:
    """Host header values this server answers (None: any, when it listens on every address). A
    request naming another host is refused: that is how a DNS-rebinding page would reach it."""
    if host in ("0.0.0.0", "::", ""):
        return None
    names = {host, f"[{host}]" if ":" in host else host}
    if host in LOOPBACK:
        names |= {"127.0.0.1", "localhost", "[::1]"}
    return {n for name in names for n in (name, f"{name}:{port}")}


def error_page(status: int, title: str, detail: str) -> bytes:
    """A small HTML page saying what went wrong (never a dropped connection)."""
    import html

    return (f"<!doctype html><html><head><meta charset='utf-8'><title>{status} {html.escape(title)}</title></head>"
            f"<body><h1>{status} {html.escape(title)}</h1><p>{html.escape(detail)}</p>"
            f"<p><a href='/'>the run</a></p></body></html>").encode()


def make_server(explorer, host: str, port: int) -> ThreadingHTTPServer:
    """A server for ``explorer`` (not started); ``server.server_address`` has the real port."""
    import socket

    lock = threading.Lock()  # dynamic pages share lazily loaded state: one computation at a time
    cached: dict[str, bytes] = {}
    hosts: dict[str, set[str] | None] = {}

    class Handler(BaseHTTPRequestHandler):
        def log_message(self, fmt, *args):  # quiet: one line per error only
            pass

        def do_HEAD(self):  # noqa: N802 - the http.server API
            self._handle(head=True)

        def do_GET(self):  # noqa: N802 - the http.server API
            self._handle(head=False)

        def _refused(self) -> tuple[int, str] | None:
            allowed = hosts.get("allowed")
            name = (self.headers.get("Host") or "").strip().lower()
            if allowed is not None and name not in allowed:
                return HTTPStatus.MISDIRECTED_REQUEST, f"this server answers {sorted(allowed)[0]}, not {name!r}"
            site = (self.headers.get("Sec-Fetch-Site") or "").lower()
            navigate = (self.headers.get("Sec-Fetch-Mode") or "").lower() == "navigate" and \
                (self.headers.get("Sec-Fetch-Dest") or "document").lower() == "document"
            if site == "cross-site" and not navigate:
                return HTTPStatus.FORBIDDEN, "another site may not read this run (cross-site request refused)"
            return None

        def _handle(self, head: bool) -> None:
            refused = self._refused()
            if refused is not None:
                status, why = refused
                return self._send(status, error_page(status, "refused", why), "text/html", head)
            path = unquote(urlsplit(self.path).path)
            for pattern, kind in ROUTES:
                m = pattern.match(path)
                if m:
                    break
            else:
                return self._send(HTTPStatus.NOT_FOUND, error_page(404, "not found", path), "text/html", head)
            try:
                if kind in STATIC_KINDS or (kind == "latents" and m.group(1) in cached):
                    body = self._page(kind, m, cached)  # no lock: fixed or already computed
                else:
                    with lock:
                        body = self._page(kind, m, cached)
            except KeyError:
                return self._send(HTTPStatus.NOT_FOUND, error_page(404, "not found", f"{path}: no such latent, "
                                                                   f"image or SAE in this run"), "text/html", head)
            except UserError as err:
                return self._send(HTTPStatus.INTERNAL_SERVER_ERROR, error_page(500, "cannot build this page",
                                                                               str(err)), "text/html", head)
            except Exception as err:  # noqa: BLE001 - any failure: an error page, the rest keeps working
                detail = f"{type(err).__name__}: {str(err).splitlines()[0][:300] if str(err) else ''}"
                return self._send(HTTPStatus.INTERNAL_SERVER_ERROR, error_page(500, "cannot build this page",
                                                                               detail), "text/html", head)
            self._send(HTTPStatus.OK, body, TYPES[kind], head)

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
                j, img = int(m.group(2)), int(m.group(3))
                if not explorer.links_image(slug, img, j):  # only pairs the pages link: bounded work
                    raise KeyError(img)
                return explorer.overlay(slug, j, img)
            img = int(m.group(2))
            if not explorer.links_image(slug, img):
                raise KeyError(img)
            return explorer.thumbnail(slug, img)

        def _send(self, status, body: bytes, ctype: str, head: bool = False) -> None:
            self.send_response(status)
            self.send_header("Content-Type", f"{ctype}; charset=utf-8" if ctype.startswith("text") else ctype)
            self.send_header("Content-Length", str(len(body)))
            self.send_header("Cache-Control", "no-cache")
            self.send_header("X-Content-Type-Options", "nosniff")
            self.end_headers()
            if not head:
                self.wfile.write(body)

    class Server(ThreadingHTTPServer):
        address_family = socket.AF_INET6 if ":" in host else socket.AF_INET
        daemon_threads = True

    try:
        server = Server((host, port), Handler)
    except OSError as err:
        raise UserError(f"--port {port}: cannot serve on {host}:{port} ({err.strerror}); pick another "
                        f"--port (0 = any free one)") from None
    hosts["allowed"] = allowed_hosts(host, server.server_address[1])
    return server


def serve(explorer, host: str, port: int, log: Callable = print) -> None:
    if host not in LOOPBACK:
        log(f"warning: --host {host}: the run becomes readable by anyone who can reach this machine on the "
            f"network (the default, 127.0.0.1, keeps it to this machine)")
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
