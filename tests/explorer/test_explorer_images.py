"""Image pages and live images (explorer round 3, item 3): every dataset image's most active
latents against the dense codes, an uploaded image encoded exactly as the store encoded it, the
upload form in Chromium, bad uploads refused with a 4xx while the server keeps serving."""

import io
import re
import threading
from pathlib import Path

import numpy as np
import pytest

from saevlm import api
from test_explorer import _request


@pytest.fixture()
def server_of(tmp_path):
    from saevlm.explorer.app import Explorer
    from saevlm.explorer.server import make_server

    started = []

    def start(run):
        srv = make_server(Explorer(run, tmp_path / f"cache{len(started)}"), "127.0.0.1", 0)
        started.append(srv)
        threading.Thread(target=srv.serve_forever, daemon=True).start()
        return f"http://127.0.0.1:{srv.server_address[1]}"

    yield start
    for srv in started:
        srv.shutdown()
        srv.server_close()


def _rows(page: str) -> list[tuple[int, float, str]]:
    """(latent, activation, rank cell) of an image page's table."""
    body = page[page.index('id="imagelatents"'):page.index("</table>", page.index('id="imagelatents"'))]
    out = []
    for tr in body.split("<tr data-latent=")[1:]:
        cells = re.findall(r"<td[^>]*>(.*?)</td>", tr, flags=re.S)
        out.append((int(tr.split('"')[1]), float(cells[3]), re.sub("<[^>]+>", "", cells[4]).strip()))
    return out


def _multipart(data: bytes, filename: str = "upload.png") -> tuple[bytes, str]:
    boundary = "saevlmtestboundary"
    body = (f"--{boundary}\r\nContent-Disposition: form-data; name=\"image\"; filename=\"{filename}\"\r\n"
            f"Content-Type: application/octet-stream\r\n\r\n").encode() + data + f"\r\n--{boundary}--\r\n".encode()
    return body, f"multipart/form-data; boundary={boundary}"


def test_every_image_has_a_page_with_its_latents_ranked(explorer_run, server_of):
    from saevlm.data.codes import CodeStore

    codes = CodeStore(explorer_run / "codes")
    dense = codes.read(0, codes.num_rows)
    base = server_of(explorer_run)
    top = np.load(explorer_run / "codes" / "top_images_16.npy")
    for image in (0, 17, codes.num_rows - 1):
        status, body, _ = _request(base + f"/sae/codes/img/{image}.html")
        assert status == 200
        rows = _rows(body.decode())
        row = dense[image]
        expected = [int(j) for j in np.argsort(-row, kind="stable")[:12] if row[j] > 0]
        assert [j for j, _, _ in rows] == expected
        for j, value, rank in rows:
            assert value == pytest.approx(float(row[j]), abs=1e-3)
            col = dense[:, j]
            assert rank == f"{int((col > row[j]).sum()) + 1} of {int((col != 0).sum())}", (image, j)
    assert _request(base + f"/sae/codes/img/{codes.num_rows}.html")[0] == 404
    # latent pages link their top images' pages, and the image page its picture
    j = int(np.argmax(np.load(explorer_run / "codes" / "top_images_16_values.npy")[:, 0]))
    latent = _request(base + f"/sae/codes/latent/{j}.html")[1].decode()
    assert f'href="../img/{int(top[j, 0])}.html"' in latent
    status, _, headers = _request(base + "/sae/codes/image/5.jpg")
    assert status == 200 and headers["Content-Type"] == "image/jpeg"


def test_an_uploaded_dataset_image_gets_the_stores_codes(explorer_run, server_of):
    """The same picture, uploaded, runs through the store's model, hook, token selection and SAE:
    the latents and activations on the page are the store's row of that image."""
    from saevlm.data.codes import CodeStore
    from saevlm.data.images import open_dataset

    codes = CodeStore(explorer_run / "codes")
    dense = codes.read(0, codes.num_rows)
    prov = codes.provenance
    ds = open_dataset(prov.dataset.name, prov.dataset.root, prov.dataset.split)
    image = 9
    data = ds.read_bytes(image)
    base = server_of(explorer_run)
    body, ctype = _multipart(data)
    import urllib.request
    req = urllib.request.Request(base + "/sae/codes/live", data=body, method="POST", headers={"Content-Type": ctype})
    with urllib.request.urlopen(req, timeout=120) as r:
        assert r.status == 200
        page = r.read().decode()
    rows = _rows(page)
    row = dense[image]
    expected = [int(j) for j in np.argsort(-row, kind="stable")[:12] if row[j] > 0]
    assert [j for j, _, _ in rows] == expected
    for j, value, _ in rows:
        assert value == pytest.approx(float(row[j]), rel=1e-3, abs=1e-3)
    assert 'id="uploaded"' in page and "data:image/jpeg;base64," in page


def _png(size=(40, 40), mode="RGB", **save) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.new(mode, size).save(buf, format=save.pop("format", "PNG"), **save)
    return buf.getvalue()


def test_bad_uploads_get_a_4xx_and_one_line_and_the_server_keeps_serving(explorer_run, server_of):
    import struct
    import urllib.error
    import urllib.request
    import zlib

    from PIL import Image

    base = server_of(explorer_run)

    def post(data: bytes, headers=None):
        body, ctype = _multipart(data)
        req = urllib.request.Request(base + "/sae/codes/live", data=body, method="POST",
                                     headers={"Content-Type": ctype, **(headers or {})})
        try:
            with urllib.request.urlopen(req, timeout=120) as r:
                return r.status, r.read().decode()
        except urllib.error.HTTPError as e:
            return e.code, e.read().decode()

    def problem(page: str) -> str:
        return re.search(r'id="problem"[^>]*>([^<]*)<', page).group(1)

    # a PNG header declaring 60,000 x 60,000 pixels (a decompression bomb), with a tiny body
    ihdr = struct.pack(">IIBBBBB", 60000, 60000, 8, 2, 0, 0, 0)
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    bomb = b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(bytes(1 << 20), 9)) + \
        chunk(b"IEND", b"")
    frames = [Image.new("RGB", (32, 32), c) for c in ((255, 0, 0), (0, 255, 0))]
    gif = io.BytesIO()
    frames[0].save(gif, format="GIF", save_all=True, append_images=frames[1:])
    cases = {"text": (b"this is not an image", 415), "bomb": (bomb, 413), "truncated": (_png((64, 64))[:60], 422),
             "animated": (gif.getvalue(), 415), "empty": (b"", 400)}
    for name, (data, code) in cases.items():
        status, page = post(data)
        assert status == code, (name, status, page[:300])
        assert problem(page) and "\n" not in problem(page), name
    # CMYK and 16-bit images are converted, and the page says so
    status, page = post(_png((48, 48), "CMYK", format="JPEG"))
    assert status == 200 and "a CMYK image, converted to RGB" in page
    sixteen = io.BytesIO()
    Image.fromarray((np.arange(48 * 48).reshape(48, 48) * 20).astype(np.uint16)).save(sixteen, format="PNG")
    status, page = post(sixteen.getvalue())
    assert status == 200 and "16-bit" in page
    # more than the upload limit: refused from its Content-Length, the body never read
    req = urllib.request.Request(base + "/sae/codes/live", data=b"x" * 10, method="POST",
                                 headers={"Content-Type": "image/png", "Content-Length": str(64 * 1024 * 1024)})
    try:
        urllib.request.urlopen(req, timeout=30)
        raise AssertionError("not refused")
    except urllib.error.HTTPError as e:
        assert e.code == 413
    except (ConnectionError, urllib.error.URLError):
        pass  # the server closed the connection before reading: also a refusal
    # another site's form may not make the server work
    status, _ = post(_png(), {"Origin": "http://evil.example", "Sec-Fetch-Site": "cross-site",
                              "Sec-Fetch-Mode": "navigate", "Sec-Fetch-Dest": "document"})
    assert status == 403
    assert _request(base + "/")[0] == 200 and _request(base + "/sae/codes/index.html")[0] == 200


def test_live_box_says_why_when_the_model_cannot_be_loaded(tmp_path, tiny_clip_dir, server_of):
    """A run whose model folder is gone: the upload gets 503 naming the model; pages still work."""
    import shutil

    from helpers import make_small_run

    model = tmp_path / "model"
    shutil.copytree(tiny_clip_dir, model)
    run = make_small_run(tmp_path, model, num_classes=2, per_class=4, top_images=False)
    shutil.rmtree(model)
    base = server_of(run)
    body, ctype = _multipart(_png())
    import urllib.error
    import urllib.request
    req = urllib.request.Request(base + "/sae/codes/live", data=body, method="POST", headers={"Content-Type": ctype})
    try:
        urllib.request.urlopen(req, timeout=60)
        raise AssertionError("served without a model")
    except urllib.error.HTTPError as e:
        page = e.read().decode()
        assert e.code == 503 and "could not be loaded" in page and str(model) in page
    assert _request(base + "/sae/codes/img/3.html")[0] == 200
    assert _request(base + "/sae/codes/index.html")[0] == 200


def test_upload_form_in_chromium_shows_heatmaps_for_a_token_sae(tmp_path, tiny_clip_dir, server_of):
    """A token-level SAE (all tokens): the page's form, filled in Chromium with a dataset image,
    answers with the image's latents and one heatmap per latent, the same latents as the stored
    codes' maximum over that image's patch tokens."""
    from cdp import Browser
    from helpers import make_small_run

    from saevlm.data.codes import CodeStore

    run = make_small_run(tmp_path, tiny_clip_dir, num_classes=2, per_class=3, size=48, all_tokens=True,
                         dict_size=48, k=6, seed=3, top_images=False)
    images = tmp_path / "images"
    codes = CodeStore(run / "codes")
    rows = codes.row_index()
    dense = codes.read(0, codes.num_rows)
    image = 4
    tokens = (rows[:, 0] == image) & (rows[:, 1] > 0)  # the patch tokens (CLS is not a patch)
    expected_max = dense[tokens].max(axis=0)
    picture = sorted(Path(images).rglob("*.png"))[image]  # imagefolder order: classes, then files, sorted
    base = server_of(run)
    with Browser() as b:
        b.open(base + f"/sae/codes/img/{image}.html")
        b.call("DOM.enable", session=True)
        doc = b.call("DOM.getDocument", session=True)["root"]["nodeId"]
        node = b.call("DOM.querySelector", session=True, nodeId=doc, selector="#live input[type=file]")["nodeId"]
        b.call("DOM.setFileInputFiles", session=True, nodeId=node, files=[str(picture)])
        b.js("document.querySelector('#live').submit()")
        b.wait("document.querySelector('#uploaded') !== null && document.readyState === 'complete'", timeout=120)
        latents = b.js("Array.from(document.querySelectorAll('#imagelatents tr[data-latent]')).map(r => +r.dataset.latent)")
        heat = b.js("document.querySelectorAll('#imagelatents img[src^=\"data:image/jpeg\"]').length")
    assert latents and heat == len(latents)
    assert latents[:5] == [int(j) for j in np.argsort(-expected_max, kind="stable")[:5]]


def test_static_export_has_image_pages_whose_links_all_resolve(explorer_run, tmp_path):
    """--static writes the pages of the exported latents' top images (no upload form); every local
    image and link of every page exists in the folder."""
    from html.parser import HTMLParser

    class Refs(HTMLParser):
        def __init__(self):
            super().__init__()
            self.refs = []

        def handle_starttag(self, tag, attrs):
            a = dict(attrs)
            for key in ("src", "href"):
                v = a.get(key)
                if v and not v.startswith(("http", "#", "data:", "mailto")):
                    self.refs.append(v.split("#")[0])

    site = tmp_path / "site"
    assert api.run("explore", run_dir=explorer_run, static=site, latents="top:20", cache_dir=tmp_path / "cache",
                   no_progress=True) == 0
    image_pages = sorted((site / "sae" / "codes" / "img").glob("*.html"))
    top = np.load(explorer_run / "codes" / "top_images_16.npy")
    values = np.load(explorer_run / "codes" / "top_images_16_values.npy")
    exported = [int(p.stem) for p in (site / "sae" / "codes" / "latent").glob("*.html")]
    assert sorted(int(p.stem) for p in image_pages) == sorted({int(i) for j in exported
                                                               for i, v in zip(top[j], values[j]) if v > 0})
    page = image_pages[0].read_text()
    assert 'id="imagelatents"' in page and 'id="live"' not in page and "a static export" in page
    for f in site.rglob("*.html"):
        p = Refs()
        p.feed(f.read_text())
        for ref in p.refs:
            assert (f.parent / ref).resolve().exists(), (f, ref)


def test_latent_columns_give_each_latents_rows_and_values(explorer_run, tmp_path):
    """The cached per-latent columns (the latent page's histogram and quantile images) hold
    exactly the dense codes' non-zero rows and values of each latent."""
    from saevlm.data.codes import CodeStore
    from saevlm.explorer.app import Explorer

    dense = CodeStore(explorer_run / "codes").read(0, 32)
    view = Explorer(explorer_run, tmp_path / "cache").sae("codes")
    assert view.columns is not None
    for j in range(view.num_latents):
        rows, vals = view.column_values(j)
        want = np.flatnonzero(dense[:, j])
        assert rows.tolist() == want.tolist() and np.allclose(vals, dense[want, j]), j


def test_token_store_latent_pages_read_cached_columns_not_the_codes(tmp_path, tiny_clip_dir):
    """A token-level store: a latent's non-zero rows and values come from the cached columns and
    equal the dense codes (no pass over all codes per page); image pages give no rank (rows are
    tokens)."""
    from helpers import make_small_run

    from saevlm.data.codes import CodeStore
    from saevlm.explorer.app import Explorer

    run = make_small_run(tmp_path, tiny_clip_dir, num_classes=2, per_class=3, size=48, all_tokens=True,
                         dict_size=48, k=6, seed=3, top_images=False)
    codes = CodeStore(run / "codes")
    dense = codes.read(0, codes.num_rows)
    ex = Explorer(run, tmp_path / "cache")
    view = ex.sae("codes")
    assert view.columns is not None and not view.one_row_per_image
    view.store.iter_csr = None  # a pass over the codes would now fail
    for j in range(view.num_latents):
        rows, vals = view.column_values(j)
        want = np.flatnonzero(dense[:, j])
        assert rows.tolist() == want.tolist() and np.allclose(vals, dense[want, j]), j
    page = ex.image_page("codes", 2)
    table = page.split('id="imagelatents"')[1].split("</table>")[0]
    assert "rank among" not in table and not re.search(r"<td>\d+ of \d+</td>", table)
