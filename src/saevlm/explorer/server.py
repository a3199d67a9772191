"""Serving the explorer: the standard library's ``ThreadingHTTPServer``, one route per page
kind, the same URL layout as a ``--static`` folder.

Concurrency: static files, the cached run page, the cached table data and thumbnails already on
disk are served without any lock; a page that computes (a latent page, the first table data, a
new thumbnail) holds only its own SAE's lock, so one slow first page never holds up another SAE or
a style sheet. Responses carry an ETag (a 304 answers a matching If-None-Match) and text is sent
gzip-compressed to clients that accept it."""

from __future__ import annotations

import re
import sys
import threading
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Callable
from urllib.parse import unquote, urlsplit

from saevlm.errors import UserError
from saevlm.explorer.templates import SCRIPT, STYLE

# an id is ASCII decimal without leading zeros and at most 12 digits: one URL per latent or image
# (\d would take other scripts' digits, "007" would alias "7", and 5,000 digits would reach int())
ID = r"0|[1-9][0-9]{0,11}"
LIVE = re.compile(r"^/sae/([^/]+)/live$")  # GET: the upload form; POST: an uploaded image
ROUTES = [
    (re.compile(r"^/(index\.html)?$"), "run"),
    (re.compile(r"^/static/explorer\.js$"), "script"),
    (re.compile(r"^/static/style\.css$"), "style"),
    (re.compile(r"^/sae/([^/]+)/(index\.html)?$"), "table"),
    (re.compile(r"^/sae/([^/]+)/latents\.js$"), "latents"),
    (re.compile(rf"^/sae/([^/]+)/latent/({ID})\.html$"), "latent"),
    (re.compile(rf"^/sae/([^/]+)/thumb/({ID})\.jpg$"), "thumb"),
    (re.compile(rf"^/sae/([^/]+)/image/({ID})\.jpg$"), "image"),
    (re.compile(rf"^/sae/([^/]+)/overlay/({ID})/({ID})\.jpg$"), "overlay"),
    (re.compile(rf"^/sae/([^/]+)/img/({ID})\.html$"), "img"),
    (LIVE, "live"),
]
TYPES = {"run": "text/html", "table": "text/html", "latent": "text/html", "img": "text/html", "live": "text/html",
         "script": "text/javascript",
         "latents": "text/javascript", "style": "text/css", "thumb": "image/jpeg",
         "image": "image/jpeg", "overlay": "image/jpeg"}


LOOPBACK = ("127.0.0.1", "localhost", "::1")


def _machine_names() -> set[str]:
    """This machine's host name and fully qualified name, lower case."""
    import socket

    return {name.lower() for name in (socket.gethostname(), socket.getfqdn()) if name}


def allowed_hosts(host: str, port: int, extra: tuple[str, ...] = ()) -> set[str]:
    """Host header values this server answers. A request naming another host is refused: that is
    how a DNS-rebinding page would reach it. Listening on every address (0.0.0.0) keeps the check:
    the loopback names, this machine's host name, and ``--allowed_hosts`` are answered."""
    every = host in ("0.0.0.0", "::", "")
    names = {host, f"[{host}]" if ":" in host else host, *(h.strip().lower() for h in extra if h.strip())}
    if host in LOOPBACK or every:
        names |= {"127.0.0.1", "localhost", "[::1]"}
    if every:
        names -= {host, f"[{host}]"}
        names |= _machine_names()
    return {n for name in names for n in (name, f"{name}:{port}")}


def error_page(status: int, title: str, detail: str) -> bytes:
    """A small HTML page saying what went wrong (never a dropped connection)."""
    import html

    return (f"<!doctype html><html><head><meta charset='utf-8'><title>{status} {html.escape(title)}</title></head>"
            f"<body><h1>{status} {html.escape(title)}</h1><p>{html.escape(detail)}</p>"
            f"<p><a href='/'>the run</a></p></body></html>").encode()


UPLOAD_TIMEOUT_S = 30  # an upload slower than this is cut off
LIVE_QUEUE = 4  # uploads being processed or waiting for the model at once; more get 503


def upload_bytes(content_type: str, body: bytes) -> tuple[bytes, str]:
    """(the image's bytes, its file name) from a POST body: a multipart form (the page's form) or
    the raw image."""
    if not content_type.lower().startswith("multipart/form-data"):
        return body, ""
    from email.parser import BytesParser
    from email.policy import HTTP

    msg = BytesParser(policy=HTTP).parsebytes(f"Content-Type: {content_type}\r\n\r\n".encode() + body)
    for part in msg.iter_parts() if msg.is_multipart() else ():
        if part.get_param("name", header="content-disposition") == "image":
            return part.get_payload(decode=True) or b"", part.get_filename() or ""
    return b"", ""


def make_server(explorer, host: str, port: int, allowed: tuple[str, ...] = ()) -> ThreadingHTTPServer:
    """A server for ``explorer`` (not started); ``server.server_address`` has the real port."""
    import hashlib
    import socket

    from saevlm.explorer.app import gzip_bytes

    explorer.serving = True
    static = {"script": (SCRIPT.encode(), gzip_bytes(SCRIPT.encode())),
              "style": (STYLE.encode(), gzip_bytes(STYLE.encode()))}
    hosts: dict[str, set[str]] = {}
    live_slots = threading.BoundedSemaphore(LIVE_QUEUE)

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"  # keep-alive: a page's requests reuse one connection

        def log_message(self, fmt, *args):  # quiet: one line per error only
            pass

        def do_HEAD(self):  # noqa: N802 - the http.server API
            self._handle(head=True)

        def do_GET(self):  # noqa: N802 - the http.server API
            self._handle(head=False)

        def do_POST(self):  # noqa: N802 - the http.server API: an uploaded image (explorer/live.py)
            from saevlm.explorer.live import MAX_UPLOAD_BYTES

            refused = self._refused(post=True)
            if refused is not None:
                self.close_connection = True
                status, why = refused
                return self._send(status, error_page(status, "refused", why), "text/html")
            path = unquote(urlsplit(self.path).path)
            m = LIVE.match(path)
            if not m or explorer.sae_or_none(m.group(1)) is None:
                self.close_connection = True
                return self._send(HTTPStatus.NOT_FOUND, error_page(404, "not found", path), "text/html")
            try:
                length = int(self.headers.get("Content-Length") or "")
            except ValueError:
                self.close_connection = True
                return self._send(HTTPStatus.LENGTH_REQUIRED, error_page(411, "length required",
                                                                        "send the image with a Content-Length"),
                                  "text/html")
            if length > MAX_UPLOAD_BYTES + 64 * 1024 or length < 0:
                self.close_connection = True  # the body is not read
                return self._send(HTTPStatus.REQUEST_ENTITY_TOO_LARGE, error_page(
                    413, "too large", f"{length:,} bytes; at most {MAX_UPLOAD_BYTES:,} are accepted"), "text/html")
            self.connection.settimeout(UPLOAD_TIMEOUT_S)
            try:
                body = self.rfile.read(length)
            except (TimeoutError, OSError):
                self.close_connection = True
                return self._send(HTTPStatus.REQUEST_TIMEOUT, error_page(408, "timeout", "the upload was too slow"),
                                  "text/html")
            data, filename = upload_bytes(self.headers.get("Content-Type") or "", body)
            if not live_slots.acquire(blocking=False):
                return self._send(HTTPStatus.SERVICE_UNAVAILABLE, error_page(
                    503, "busy", f"{LIVE_QUEUE} images are being processed; try again in a moment"), "text/html")
            try:
                status, page = explorer.live_page(m.group(1), data, filename)
            except Exception as err:  # noqa: BLE001 - the server keeps serving
                status, page = 500, error_page(500, "cannot read this image", f"{type(err).__name__}: {err}").decode()
            finally:
                live_slots.release()
            self._send(status, page.encode(), "text/html")

        def _refused(self, post: bool = False) -> tuple[int, str] | None:
            allowed = hosts.get("allowed")
            name = (self.headers.get("Host") or "").strip().lower()
            if allowed is not None and name not in allowed:
                return HTTPStatus.MISDIRECTED_REQUEST, (f"this server answers {', '.join(sorted(allowed)[:4])}, not "
                                                        f"{name!r} (explore --allowed_hosts adds names)")
            site = (self.headers.get("Sec-Fetch-Site") or "").lower()
            navigate = (self.headers.get("Sec-Fetch-Mode") or "").lower() == "navigate" and \
                (self.headers.get("Sec-Fetch-Dest") or "document").lower() == "document"
            # "same-site" is another port (or subdomain) of the same host: a page served there may
            # not read this run either; only this server's own pages (same-origin), a typed URL
            # (none) and clients that send no such header (curl, older browsers) are answered
            if site in ("cross-site", "same-site") and (post or not navigate):
                return HTTPStatus.FORBIDDEN, (f"another site or port may not {'send images to' if post else 'read'} "
                                              f"this run ({site} request refused)")
            if post:  # a form on another page may not make the server work (its Origin says where it is)
                origin = (self.headers.get("Origin") or "").lower()
                if origin and origin != "null" and urlsplit(origin).netloc not in (allowed or ()):
                    return HTTPStatus.FORBIDDEN, f"an upload from {origin} is refused (not this server's page)"
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
                if kind not in static:
                    explorer.index.refresh()  # stores added or re-written while serving (at most once a second)
                body, gz = self._page(kind, m)
            except KeyError:
                return self._send(HTTPStatus.NOT_FOUND, error_page(404, "not found", f"{path}: no such latent, "
                                                                   f"image or SAE in this run"), "text/html", head)
            except UserError as err:
                return self._send(HTTPStatus.INTERNAL_SERVER_ERROR, error_page(500, "cannot build this page",
                                                                               f"{path}: {err}"), "text/html", head)
            except Exception as err:  # noqa: BLE001 - any failure: an error page, the rest keeps working
                where = getattr(err, "filename", None)
                detail = (f"{path}: {type(err).__name__}{f' reading {where}' if where else ''}: "
                          f"{str(err).splitlines()[0][:300] if str(err) else ''}")
                return self._send(HTTPStatus.INTERNAL_SERVER_ERROR, error_page(500, "cannot build this page",
                                                                               detail), "text/html", head)
            self._send(HTTPStatus.OK, body, TYPES[kind], head, gz=gz, validate=True)

        def _page(self, kind: str, m) -> tuple[bytes, bytes | None]:
            """(body, its gzip form or None); locks only what computes."""
            if kind in static:
                return static[kind]
            if kind == "run":
                return explorer.run_page_cached().encode(), None
            slug = m.group(1)
            view = explorer.sae(slug)  # KeyError: 404
            if kind == "latents":
                if "latents" in view.page_cache:
                    return view.page_cache["latents"]
                with view.lock:
                    return explorer.latents_js_gz(slug)
            if kind in ("thumb", "image"):
                img = int(m.group(2))
                cached = explorer.cached_image(slug, img, "thumbs" if kind == "thumb" else "large")
                if cached is not None:
                    return cached, None
                with view.lock:
                    if not explorer.links_image(slug, img):  # only images the pages link: bounded work
                        raise KeyError(img)
                    return (explorer.thumbnail(slug, img) if kind == "thumb" else
                            explorer.large_image(slug, img)), None
            if kind == "live":
                return explorer.live_form_page(slug).encode(), None
            if kind == "img":
                with view.lock:
                    return explorer.image_page(slug, int(m.group(2))).encode(), None
            with view.lock:
                if kind == "table":
                    return explorer.table_page(slug).encode(), None
                if kind == "latent":
                    return explorer.latent_page(slug, int(m.group(2))).encode(), None
                j, img = int(m.group(2)), int(m.group(3))  # overlay
                if not explorer.links_image(slug, img, j):  # only pairs the pages link: bounded work
                    raise KeyError(img)
                return explorer.overlay(slug, j, img), None

        def _send(self, status, body: bytes, ctype: str, head: bool = False, gz: bytes | None = None,
                  validate: bool = False) -> None:
            etag = f'"{hashlib.blake2b(body, digest_size=12).hexdigest()}"' if validate else None
            if etag is not None and etag in [t.strip() for t in (self.headers.get("If-None-Match") or "").split(",")]:
                self.send_response(HTTPStatus.NOT_MODIFIED)
                self.send_header("ETag", etag)
                self.send_header("Cache-Control", "no-cache")
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
            text = ctype.startswith("text")
            accepts = "gzip" in (self.headers.get("Accept-Encoding") or "").lower()
            if text and accepts and len(body) > 1024:
                body = gz if gz is not None else gzip_bytes(body)
                encoded = True
            else:
                encoded = False
            self.send_response(status)
            self.send_header("Content-Type", f"{ctype}; charset=utf-8" if text else ctype)
            self.send_header("Content-Length", str(len(body)))
            if encoded:
                self.send_header("Content-Encoding", "gzip")
            if text:
                self.send_header("Vary", "Accept-Encoding")
            if etag is not None:
                self.send_header("ETag", etag)
            self.send_header("Cache-Control", "no-cache")  # revalidate (ETag): a re-written run is never shown stale
            self.send_header("X-Content-Type-Options", "nosniff")
            self.end_headers()
            if not head:
                self.wfile.write(body)

    class Server(ThreadingHTTPServer):
        address_family = socket.AF_INET6 if ":" in host else socket.AF_INET
        daemon_threads = True
        request_queue_size = 128  # the listen backlog (socketserver's default of 5 dropped a burst of 64)

        def handle_error(self, request, client_address):
            # a browser that closes the connection while a page or image is sent (a link followed,
            # a tab closed) is not a server error: no traceback on the console for it
            if isinstance(sys.exc_info()[1], (ConnectionResetError, BrokenPipeError)):
                return
            super().handle_error(request, client_address)

    try:
        server = Server((host, port), Handler)
    except OSError as err:
        raise UserError(f"--port {port}: cannot serve on {host}:{port} ({err.strerror}); pick another "
                        f"--port (0 = any free one)") from None
    hosts["allowed"] = allowed_hosts(host, server.server_address[1], allowed)
    return server


def serve(explorer, host: str, port: int, log: Callable = print, allowed: tuple[str, ...] = ()) -> None:
    if host not in LOOPBACK:
        log(f"warning: --host {host}: the run becomes readable by anyone who can reach this machine on the "
            f"network (the default, 127.0.0.1, keeps it to this machine)")
    server = make_server(explorer, host, port, allowed)
    h, p = server.server_address[:2]
    log(f"saevlm explore: {len(explorer.index.saes)} SAE(s) of {explorer.index.run_dir} at http://{h}:{p}/ "
        f"(Ctrl-C to stop)")
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        log("stopped")
    finally:
        server.server_close()
