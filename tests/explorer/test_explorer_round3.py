"""Explorer round 3 defects, each against the server or the browser: ids as one ASCII URL per
latent, the Host check on 0.0.0.0, reads from another port refused, a listen backlog for a burst,
damaged result files named, and markup in names, labels and class folders shown as text."""

import json
import socket
import threading

import numpy as np
import pytest

from cdp import dump_dom
from test_explorer import _request, parse


@pytest.fixture()
def served(run_dir_copy, tmp_path):
    from saevlm.explorer.app import Explorer
    from saevlm.explorer.server import make_server

    servers = []

    def start(host="127.0.0.1", allowed=(), serve=True):
        srv = make_server(Explorer(run_dir_copy, tmp_path / f"cache{len(servers)}"), host, 0, allowed)
        servers.append(srv)
        if serve:
            threading.Thread(target=srv.serve_forever, daemon=True).start()
        return srv, f"http://127.0.0.1:{srv.server_address[1]}"

    yield start
    for srv in servers:
        srv.shutdown()
        srv.server_close()


@pytest.fixture()
def run_dir_copy(explorer_run, tmp_path):
    import shutil

    out = tmp_path / "run"
    shutil.copytree(explorer_run, out, ignore=shutil.ignore_patterns(".explorer_cache"))
    return out


def test_ids_are_ascii_decimal_one_url_per_latent(served):
    _, base = served()
    assert _request(base + "/sae/codes/latent/7.html")[0] == 200
    for bad in ("07", "%D9%A7", "%EF%BC%97", "7" * 5000, "+7", "7.0"):  # leading zero, Arabic-Indic and fullwidth 7
        status, body, _ = _request(base + f"/sae/codes/latent/{bad}.html")
        assert status == 404 and b"<html" in body, bad
    assert _request(base + "/sae/codes/latent/1000000000000.html")[0] == 404  # 13 digits


def test_host_check_holds_on_every_address_and_other_ports_cannot_read(served):
    _, base = served(host="0.0.0.0", allowed=("explorer.lab",))
    port = base.rsplit(":", 1)[1]
    assert _request(base + "/")[0] == 200  # Host 127.0.0.1:<port>
    assert _request(base + "/", headers={"Host": f"localhost:{port}"})[0] == 200
    assert _request(base + "/", headers={"Host": f"explorer.lab:{port}"})[0] == 200
    status, body, _ = _request(base + "/", headers={"Host": "rebound.example"})
    assert status == 421 and b"--allowed_hosts" in body
    # a page served on another port of localhost (same-site, not same-origin) may not read the table
    js = base + "/sae/codes/latents.js"
    assert _request(js, headers={"Sec-Fetch-Site": "same-site", "Sec-Fetch-Mode": "no-cors",
                                 "Sec-Fetch-Dest": "script"})[0] == 403
    assert _request(js, headers={"Sec-Fetch-Site": "same-origin", "Sec-Fetch-Mode": "no-cors",
                                 "Sec-Fetch-Dest": "script"})[0] == 200


def test_a_burst_of_64_connections_waits_in_the_backlog(served):
    """64 clients connect before the server accepts any (socketserver's default backlog of 5
    left the rest hanging in SYN retries); all are answered once it serves."""
    srv, base = served(serve=False)
    port = srv.server_address[1]
    socks = []
    try:
        for _ in range(64):
            s = socket.create_connection(("127.0.0.1", port), timeout=0.5)
            socks.append(s)
        for s in socks:
            s.sendall(f"GET /static/style.css HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nConnection: close\r\n\r\n".encode())
        threading.Thread(target=srv.serve_forever, daemon=True).start()
        answers = []
        for s in socks:
            s.settimeout(30)
            answers.append(s.recv(64))
        assert all(a.startswith(b"HTTP/1.1 200") for a in answers), answers[:3]
    finally:
        for s in socks:
            s.close()


def test_damaged_result_files_are_named_not_500(run_dir_copy, served):
    ms_dir = next((run_dir_copy / "codes").glob("ms_*/"))
    (ms_dir / "scores.npy").write_bytes(b"\x93NUMPY garbage" + bytes(range(200)))
    _, base = served()
    for url in ("/sae/codes/index.html", "/sae/codes/latent/3.html"):
        status, body, _ = _request(base + url)
        assert status == 200, (url, body[:400])
        assert f"{ms_dir.name}/scores.npy" in body.decode() or f"{ms_dir.name}/ms.json" in body.decode(), url


def test_markup_in_names_labels_and_class_folders_is_text(tmp_path, tiny_clip_dir):
    """Names, labels and class folders holding markup (and right-to-left text) are shown as text on
    every page and in the browser's table: no element is made from them."""
    from helpers import make_small_run

    evil = ['<img src=x onerror="document.title=\'pwned\'">', "a</bdi><script>document.title='pwned'</script>",
            "\u202eeman lavil", "x" * 200]
    run = make_small_run(tmp_path, tiny_clip_dir, class_names=evil)
    names = {"format": "saevlm-names", "from_activating_images": True,
             "latents": [{"id": j, "names": [[evil[j % 4], 0.3]], "margin": 0.1, "n_active": 4, "label": evil[j % 4],
                          "purity": 0.5, "entropy_bits": 1.0} for j in range(32)]}
    (run / "codes" / "names.json").write_text(json.dumps(names))
    from saevlm.explorer.app import Explorer
    from saevlm.explorer.server import make_server

    ex = Explorer(run, tmp_path / "cache")
    values = np.load(run / "codes" / "top_images_16_values.npy")
    j = int(np.argmax(values[:, 0]))
    for html in (ex.latent_page("codes", j), ex.table_page("codes"), ex.run_page()):
        assert "<script>document" not in html and "<img src=x" not in html
    page = ex.latent_page("codes", j)
    assert "&lt;img src=x" in page or "&lt;script&gt;" in page  # shown, as text
    srv = make_server(ex, "127.0.0.1", 0)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    try:
        base = f"http://127.0.0.1:{srv.server_address[1]}/sae/codes/"
        for url in (base + "index.html#min_active=0", base + f"latent/{j}.html"):
            dom = dump_dom(url)
            assert "pwned" not in dom.split("</title>")[0], url  # no script ran
            assert "<script>document" not in dom and "<img src=\"x\"" not in dom and "<img src=x" not in dom, url
        table = parse(dump_dom(base + "index.html#min_active=0&sort=id&desc=0"))
        assert any(evil[0] in cell for row in table.rows for cell in row)  # the name, as text in a cell
    finally:
        srv.shutdown()
        srv.server_close()


def test_keyboard_long_names_aria_and_images_removed_while_serving(tmp_path, tiny_clip_dir):
    """In Chromium: lang and viewport set, the sorted header carries aria-sort, a 5,000-character
    name does not widen the page, a thumbnail opens and closes from the keyboard; an image file
    removed while serving shows as a placeholder with a note."""
    from cdp import Browser
    from helpers import make_small_run
    from saevlm.explorer.app import Explorer
    from saevlm.explorer.server import make_server

    run = make_small_run(tmp_path, tiny_clip_dir, class_names=["a", "b", "c", "d" * 200])
    images = tmp_path / "images"
    names = {"format": "saevlm-names", "from_activating_images": True,
             "latents": [{"id": j, "names": [["w" * 5000 if j % 2 else "short", 0.3]], "margin": 0.1,
                          "n_active": 4} for j in range(32)]}
    (run / "codes" / "names.json").write_text(json.dumps(names))
    values = np.load(run / "codes" / "top_images_16_values.npy")
    top = np.load(run / "codes" / "top_images_16.npy")
    j = int(next(k for k in np.argsort(-values[:, 0]) if k % 2 and (values[k] > 0).sum() >= 3))
    srv = make_server(Explorer(run, tmp_path / "cache"), "127.0.0.1", 0)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    base = f"http://127.0.0.1:{srv.server_address[1]}/sae/codes/"
    try:
        with Browser(width=1000, height=800) as b:
            b.open(base + "index.html#min_active=0&sort=id&desc=0")
            b.wait("document.querySelectorAll('#latents tbody tr').length > 0")
            assert b.js("document.documentElement.lang") == "en"
            assert b.js("!!document.querySelector('meta[name=viewport]')")
            assert b.js("document.querySelector('th a[data-sort=id]').parentElement.getAttribute('aria-sort')") \
                == "ascending"
            assert b.js("document.querySelector('th a[data-sort=ms]').parentElement.getAttribute('aria-sort')") == "none"
            assert b.js("document.documentElement.scrollWidth") <= 1000 + 1
            b.open(base + f"latent/{j}.html")
            assert b.js("document.documentElement.scrollWidth") <= 1000 + 1  # the long name wraps
            b.js("document.querySelector('img[data-large]').focus()")
            b.call("Input.dispatchKeyEvent", session=True, type="keyDown", key="Enter", code="Enter",
                   windowsVirtualKeyCode=13)
            b.wait("!document.getElementById('lightbox').hidden", timeout=10)
            b.call("Input.dispatchKeyEvent", session=True, type="keyDown", key="Escape", code="Escape",
                   windowsVirtualKeyCode=27)
            b.wait("document.getElementById('lightbox').hidden", timeout=10)
            assert b.js("document.activeElement.matches('img[data-large]')")  # focus back on the thumbnail
        # a top image file removed while serving (its thumbnail never made): a placeholder and a note
        from saevlm.data.images import open_dataset

        ds = open_dataset("imagefolder", str(images), None)
        shown = [int(i) for i, v in zip(top[j], values[j]) if v > 0]
        gone = shown[-1]
        for f in (tmp_path / "cache").rglob(f"thumbs/*/{gone}.jpg"):
            f.unlink()
        ds.path(gone).unlink()
        status, body, _ = _request(base + f"latent/{j}.html")
        page = body.decode()
        assert status == 200 and 'id="missingimages"' in page and f"image {gone} (missing)" in page
    finally:
        srv.shutdown()
        srv.server_close()


def test_run_page_and_static_top_rank_latents_active_on_16_images_first(explorer_run, tmp_path):
    """The run page's best latents and --static --latents top:N follow the table's default rule:
    by MS among latents active on at least 16 images, the others after them."""
    import re

    from saevlm.data.codes import CodeStore
    from saevlm.explorer.app import Explorer, choose_latents

    dense = CodeStore(explorer_run / "codes").read(0, 32)
    active = (dense > 0).sum(0)
    ms = np.load(next((explorer_run / "codes").glob("ms_*/scores.npy")))
    ok = np.isfinite(ms) & (active >= 16)
    expected = sorted(np.flatnonzero(ok), key=lambda j: (-ms[j], j))
    assert (np.isfinite(ms) & (active < 16)).any() and len(expected) >= 10  # the rule matters here
    ex = Explorer(explorer_run, tmp_path / "cache")
    page = ex.run_page()
    best = [int(x) for x in re.findall(r'href="sae/codes/latent/(\d+)\.html"', page)]
    assert best == expected[:10]
    chosen = choose_latents(ex.sae("codes"), f"top:{len(expected) + 3}")
    assert set(expected) <= set(chosen.tolist()) and len(chosen) == len(expected) + 3
    # alt text of a top image names its label
    lat = ex.latent_page("codes", expected[0])
    assert re.search(r'alt="image \d+: (otter|pencil|violin|lighthouse)"', lat)


def test_a_connection_closed_by_the_browser_prints_no_traceback(run_dir_copy, tmp_path, capsys):
    """A client gone mid-response (ConnectionResetError, BrokenPipeError) is not reported; any
    other error in a handler still is, with its traceback."""
    from saevlm.explorer.app import Explorer
    from saevlm.explorer.server import make_server

    srv = make_server(Explorer(run_dir_copy, tmp_path / "cache"), "127.0.0.1", 0)
    srv.server_close()  # never served: only its error handler is called
    for err in (ConnectionResetError(104, "Connection reset by peer"), BrokenPipeError(32, "Broken pipe"),
                ValueError("a real bug")):
        try:
            raise err
        except Exception:
            srv.handle_error(None, ("127.0.0.1", 1))
        printed = capsys.readouterr().err
        assert ("Traceback" in printed and "a real bug" in printed) if isinstance(err, ValueError) else printed == ""
