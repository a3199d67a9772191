"""``saevlm name`` and ``saevlm explore``: names on a planted case, the pages in a real browser
(headless Chromium, Debian's ``chromium``), and the static export opened without a server."""

import json
import re
import shutil
import threading
import urllib.request
from html.parser import HTMLParser

import numpy as np
import pytest

from cdp import dump_dom
from helpers import run_cli
from saevlm import api
from saevlm.data.store import ActivationStore

CLASSES = ["otter", "pencil", "violin", "lighthouse"]
K = 256  # latents: 6 pages of 50 rows


class Cells(HTMLParser):
    """Rows of the latent table's body (cell texts) and the latent page's top-image figures."""

    def __init__(self):
        super().__init__()
        self.rows, self.figures, self.imgs = [], [], []
        self._in_body = self._cell = False

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        if tag == "tbody":
            self._in_body = True
        elif tag == "tr" and self._in_body:
            self.rows.append([])
        elif tag == "td" and self._in_body:
            self._cell = True
            self.rows[-1].append("")
        elif tag == "figure" and "top" in (a.get("class") or ""):
            self.figures.append(float(a["data-value"]))
        elif tag == "img" and a.get("src"):
            self.imgs.append(a.get("src"))

    def handle_endtag(self, tag):
        if tag == "tbody":
            self._in_body = False
        elif tag == "td":
            self._cell = False

    def handle_data(self, data):
        if self._cell and self.rows and self.rows[-1]:
            self.rows[-1][-1] += data


def parse(html: str) -> Cells:
    p = Cells()
    p.feed(html)
    return p


@pytest.fixture(scope="module")
def run_dir(explorer_run):
    return explorer_run


def test_name_latents_finds_the_planted_name():
    from saevlm.metrics.naming import label_purity, name_latents

    rng = np.random.default_rng(0)
    protos = rng.standard_normal((4, 32))                    # text embeddings = class prototypes
    truth = rng.integers(0, 4, size=50)                      # latent j's top images are of class truth[j]
    images = protos[truth][:, None, :] + 0.3 * rng.standard_normal((50, 16, 32))
    images /= np.linalg.norm(images, axis=2, keepdims=True)
    idx, sims = name_latents(images.mean(1), protos, CLASSES)
    assert (idx[:, 0] == truth).all() and (sims[:, 0] > sims[:, 1]).all() and idx.shape == (50, 3)
    label, purity, entropy = label_purity(np.array([[1] * 16, [0] * 8 + [2] * 8]))
    assert label.tolist() == [1, 0] and purity.tolist() == [1.0, 0.5] and np.allclose(entropy, [0.0, 1.0])


def test_name_command_on_planted_embeddings(run_dir, tmp_path):
    """Image embeddings = the prototype of each image's class (plus noise), text embeddings = the
    prototypes: every latent whose top images are one class is named after that class, and every
    name equals a brute-force loop over the vocabulary."""
    from saevlm.data.writer import StoreWriter

    emb = ActivationStore(run_dir / "emb")
    labels = np.load(emb.path / "labels.npy")[emb.image_ids()]
    rng = np.random.default_rng(1)
    protos = np.eye(4, 16, dtype=np.float32) * 3  # orthogonal: the nearest word is the majority class
    planted = protos[labels] + 0.1 * rng.standard_normal((len(labels), 16)).astype(np.float32)
    w = StoreWriter(tmp_path / "planted", kind="embeddings", dim=16, dtype="fp32", images_per_shard=emb.num_rows,
                    num_images=emb.num_rows, provenance=emb.provenance, software={})
    w.write_shard(0, planted, emb.row_index(), 0, emb.num_rows, images_n2=emb.image_hashes())
    w.finalize()
    np.save(tmp_path / "protos.npy", protos / np.linalg.norm(protos, axis=1, keepdims=True))
    folders = sorted(CLASSES)  # label i is the i-th class folder in sorted order
    (tmp_path / "vocab.txt").write_text("\n".join(folders))
    assert api.run("name", codes_dir=run_dir / "codes", embeddings_path=tmp_path / "planted",
                   text_embeddings=tmp_path / "protos.npy", vocab=tmp_path / "vocab.txt") == 0
    names = json.loads((run_dir / "codes" / "names.json").read_text())
    top = np.load(run_dir / "codes" / "top_images_16.npy")
    values = np.load(run_dir / "codes" / "top_images_16_values.npy")
    majority_named = padded = 0
    for j, rec in enumerate(names["latents"]):
        if values[j, 0] <= 0:
            assert rec["names"] == [] and rec["n_active"] == 0
            continue
        # brute force: only the top images where the latent is active (> 0) count
        shown = [int(i) for i, v in zip(top[j], values[j]) if v > 0]
        assert rec["n_active"] == len(shown)
        padded += len(shown) < 16
        m = np.mean([planted[i] / np.linalg.norm(planted[i]) for i in shown], axis=0)
        cos = [float(m @ p) / (np.linalg.norm(m) * np.linalg.norm(p)) for p in protos]
        assert rec["names"][0][0] == folders[int(np.argmax(cos))]
        assert abs(rec["names"][0][1] - max(cos)) < 1e-4
        counts = np.bincount(labels[shown], minlength=4)
        assert rec["purity"] == pytest.approx(counts.max() / len(shown), abs=1e-4)
        p = counts[counts > 0] / len(shown)
        assert rec["entropy_bits"] == pytest.approx(float(-(p * np.log2(p)).sum()), abs=1e-4)
        if (counts == counts.max()).sum() == 1:  # a unique majority: the planted answer is that class
            assert rec["names"][0][0] == rec["label"] == folders[int(counts.argmax())]
            majority_named += 1
    assert majority_named > 20
    assert padded >= 5  # latents whose top-16 list is padded with images at 0: the case that matters
    # the names in the report (its tables) and on the latent pages of the explorer
    assert api.run("report", run_dir=run_dir, no_grids=True, output_dir=tmp_path / "rep") == 0
    report = (tmp_path / "rep" / "report.md").read_text()
    best = max((r for r in names["latents"] if r["names"]), key=lambda r: r["margin"])
    assert "Latent names: codes" in report and f"| {best['id']} | {best['names'][0][0]} |" in report
    from saevlm.explorer.app import Explorer
    page = Explorer(run_dir, tmp_path / "cache").latent_page("codes", best["id"])
    assert f'<bdi class="name">{best["names"][0][0]}</bdi>' in page and "purity" in page


@pytest.fixture(scope="module")
def server(run_dir):
    from saevlm.explorer.app import Explorer
    from saevlm.explorer.server import make_server

    srv = make_server(Explorer(run_dir), "127.0.0.1", 0)
    thread = threading.Thread(target=srv.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{srv.server_address[1]}"
    srv.shutdown()
    srv.server_close()


def test_table_pages_sorts_and_searches_in_the_browser(run_dir, server, tmp_path):
    # planted names: names.json as `saevlm name` writes it, with one latent called "zebra"
    names = {"format": "saevlm-names", "latents": [{"id": j, "names": [["zebra" if j == 77 else CLASSES[j % 4], 0.3]],
                                                    "margin": 0.1, "n_active": 16} for j in range(K)]}
    backup = (run_dir / "codes" / "names.json").read_text() if (run_dir / "codes" / "names.json").is_file() else None
    (run_dir / "codes" / "names.json").write_text(json.dumps(names))
    try:
        from saevlm.explorer.app import Explorer
        from saevlm.explorer.server import make_server

        srv = make_server(Explorer(run_dir, tmp_path / "cache"), "127.0.0.1", 0)
        threading.Thread(target=srv.serve_forever, daemon=True).start()
        base = f"http://127.0.0.1:{srv.server_address[1]}/sae/codes/index.html"
        # the default view: by MS, latents active on at least 16 images (said on the page)
        scores = np.load(next((run_dir / "codes").glob("ms_*/scores.npy")))
        active = json.loads(Explorer(run_dir, tmp_path / "cache2").latents_js("codes").split("=", 1)[1]
                            .rstrip().rstrip(";"))["columns"]["active"]
        default = dump_dom(base)
        rows = parse(default).rows
        eligible = [j for j in range(K) if active[j] >= 16 and np.isfinite(scores[j])]
        assert "active on at least 16 images" in default and rows
        assert [int(r[0]) for r in rows] == sorted(eligible, key=lambda j: (-round(float(scores[j]), 5), j))[:50]
        assert all(int(r[4]) >= 16 for r in rows)  # columns: id, name, top-image label, MS, active
        assert all(r[2].split(' (')[0] in CLASSES for r in rows)  # the label column, without names
        page1 = dump_dom(base + "#sort=id&desc=0&min_active=0")
        assert len(parse(page1).rows) == 50 and "page 1 of 6" in page1 and f"{K} of {K} latents" in page1
        by_ms = parse(dump_dom(base + "#sort=ms&desc=1&per=100&min_active=0"))
        shown = [float(r[3]) for r in by_ms.rows]
        assert len(shown) == 100 and shown == sorted(shown, reverse=True)
        best = np.sort(scores[np.isfinite(scores)])[::-1][:100]
        assert np.allclose(shown, best, atol=6e-4)
        assert [int(r[0]) for r in by_ms.rows][0] == int(np.nanargmax(scores))
        found = parse(dump_dom(base + "#q=zebra&min_active=0"))
        assert [r[0] for r in found.rows] == ["77"] and found.rows[0][1] == "zebra"
        srv.shutdown()
        srv.server_close()
    finally:
        if backup is not None:
            (run_dir / "codes" / "names.json").write_text(backup)
        else:
            (run_dir / "codes" / "names.json").unlink()


def test_latent_page_shows_16_images_in_descending_activation(run_dir, server):
    values = np.load(run_dir / "codes" / "top_images_16_values.npy")
    j = int(np.argmax(((values > 0).sum(1) == 16) * values[:, 0]))  # the strongest latent with 16 active
    page = parse(dump_dom(f"{server}/sae/codes/latent/{j}.html"))
    assert len(page.figures) == 16 and page.figures == sorted(page.figures, reverse=True)
    assert page.figures[0] > 0
    thumbs = [s for s in page.imgs if "/thumb/" in s]
    assert len(thumbs) >= 16
    from PIL import Image
    import io
    from urllib.parse import urljoin
    with urllib.request.urlopen(urljoin(f"{server}/sae/codes/latent/{j}.html", thumbs[0])) as r:
        assert Image.open(io.BytesIO(r.read())).size == (112, 112)
    html = urllib.request.urlopen(f"{server}/sae/codes/latent/{j}.html").read().decode()
    assert "Similar decoder directions" in html and re.search(r'href="\d+\.html">latent \d+</a>', html)  # SAE found
    assert "<svg class=\"hist\"" in html  # the histogram of its non-zero activations
    run_page = dump_dom(f"{server}/index.html")
    assert 'href="sae/codes/index.html"' in run_page and "Monosemanticity Score" in run_page


def test_static_export_opens_without_a_server(run_dir, tmp_path):
    assert api.run("explore", run_dir=run_dir, static=tmp_path / "site", latents="top:20",
                   cache_dir=tmp_path / "cache", no_progress=True) == 0
    site = tmp_path / "site"
    assert len(list((site / "sae" / "codes" / "latent").glob("*.html"))) == 20
    table = parse(dump_dom((site / "sae" / "codes" / "index.html").as_uri() + "#sort=ms&desc=1&min_active=0"))
    assert len(table.rows) == 20
    shown = [float(r[3]) for r in table.rows]
    assert shown == sorted(shown, reverse=True)
    j = int(table.rows[0][0])
    page = parse(dump_dom((site / "sae" / "codes" / "latent" / f"{j}.html").as_uri()))
    values = np.load(run_dir / "codes" / "top_images_16_values.npy")[j]
    assert len(page.figures) == int((values > 0).sum()) and all(v > 0 for v in page.figures)
    for src in (s for s in page.imgs if "thumb" in s):
        assert (site / "sae" / "codes" / "latent" / src).resolve().is_file()
    assert "sae/codes/index.html" in dump_dom((site / "index.html").as_uri())


def test_explore_errors(tmp_path):
    assert run_cli("explore", "--run_dir", tmp_path / "nope") == 2
    (tmp_path / "empty").mkdir()
    assert run_cli("explore", "--run_dir", tmp_path / "empty") == 2


@pytest.fixture(scope="module")
def token_run(tmp_path_factory, tiny_clip_dir):
    """An SAE on all tokens of block 1 (the steering SAE's kind), codes per token, top images per
    image by max over tokens."""
    from helpers import make_image_folder, save_random_sae

    root = tmp_path_factory.mktemp("explore_tokens")
    images = make_image_folder(root / "images", num_classes=4, per_class=5, class_names=CLASSES, size=48)
    model = root / "clip"
    shutil.copytree(tiny_clip_dir, model)
    run = root / "run"
    assert api.run("extract", model_name=model, layer=[1], output_dir=run / "acts", dataset_name="imagefolder",
                   data_path=images, batch_size=5, num_workers=0, device="cpu", no_progress=True) == 0
    sae = save_random_sae(root / "sae", dim=64, dict_size=64, k=8, seed=3)
    assert api.run("encode", sae_path=sae, activations_dir=run / "acts" / "post_mlp_residual_1",
                   output_dir=run / "codes", no_progress=True) == 0
    assert api.run("top-images", activations_dir=run / "codes", k=16, pool="max", no_progress=True) == 0
    return run, model, sae


def test_token_overlay_marks_the_most_active_patch(token_run, tmp_path):
    import io

    import torch
    from PIL import Image

    from saevlm.data.images import open_dataset
    from saevlm.explorer.app import Explorer
    from saevlm.models import load_encoder
    from saevlm.sae.checkpoint import load_sae
    from saevlm.sae.inference import encode_batch

    run, model, sae_dir = token_run
    ex = Explorer(run, tmp_path / "cache")
    values = np.load(run / "codes" / "top_images_16_values.npy")
    j = int(np.argmax(values[:, 0]))
    page = ex.latent_page("codes", j)
    assert page.count('class="overlay"') == 16 and "activation on each patch token" in page
    img = int(np.load(run / "codes" / "top_images_16.npy")[j, 0])
    over = np.asarray(Image.open(io.BytesIO(ex.overlay("codes", j, img))).convert("RGB"), dtype=np.float64)
    base = np.asarray(Image.open(io.BytesIO(ex.thumbnail("codes", img))).convert("RGB"), dtype=np.float64)
    # brute force: the latent on every patch token, from the model and the SAE directly
    enc = load_encoder(str(model), warn=lambda m: None)
    images = open_dataset("imagefolder", run.parent / "images", None)
    with Image.open(images.path(img)) as im:
        px = enc.preprocess(im.convert("RGB"))
    with torch.no_grad():
        acts = enc.capture(px[None], [enc.resolve("post_mlp_residual", 1)])
        a = encode_batch(load_sae(str(sae_dir)), next(iter(acts.values()))[0].float())[1:, j].numpy()
    g = int(np.sqrt(len(a)))
    redness = (over[..., 0] - base[..., 0]) - (over[..., 1:] - base[..., 1:]).mean(-1)
    cell = over.shape[0] // g
    per_patch = redness[:g * cell, :g * cell].reshape(g, cell, g, cell).mean((1, 3))
    assert np.unravel_index(per_patch.argmax(), per_patch.shape) == np.unravel_index(a.argmax(), (g, g))


def test_token_overlay_is_skipped_cleanly_without_the_model(token_run, tmp_path):
    from saevlm.explorer.app import Explorer

    run, model, _ = token_run
    model.rename(model.with_name("clip_moved"))
    try:
        ex = Explorer(run, tmp_path / "cache")
        page = ex.latent_page("codes", 0)
        assert "No overlay: this SAE reads" in page and "could not be loaded" in page and 'class="overlay"' not in page
        assert page.count('class="top"') == 16  # everything else is there
        assert api.run("explore", run_dir=run, static=tmp_path / "site", latents="top:3",
                       cache_dir=tmp_path / "cache2", no_progress=True) == 0
        assert not (tmp_path / "site" / "sae" / "codes" / "overlay").exists()
    finally:
        model.with_name("clip_moved").rename(model)


def test_latent_page_shows_its_steering_answers(run_dir, tmp_path):
    """steering-score results of the same SAE: the latent's score and LLaVA's answers on its page."""
    from saevlm.data.open import open_any_store
    from saevlm.explorer.app import Explorer

    sae_path = open_any_store(run_dir / "codes").provenance.sae.path
    steer = run_dir / "steering_test"
    steer.mkdir()
    (steer / "steering_score.json").write_text(json.dumps(
        {"kind": "steering_score", "protocol": "saevlm", "mean": 0.4, "std": 0.1, "neurons": 2, "images": 1,
         "steered": True, "alpha": 100.0, "sae": sae_path}))
    (steer / "scores.csv").write_text("neuron,score\n3,0.612500\n9,0.200000\n")
    (steer / "labels.csv").write_text("neuron,image,answer,word,similarity\n3,white,Pencils,pencils,0.612500\n"
                                      "9,white,Sky,sky,0.200000\n")
    try:
        ex = Explorer(run_dir, tmp_path / "cache")
        page = ex.latent_page("codes", 3)
        assert "Steering an MLLM with this latent" in page and "score 0.613" in page and "Pencils" in page
        assert "LLaVA-1.5 answers" in page  # a result without mllm_family: from before other families
        assert "Sky" not in page  # latent 9's answer belongs on latent 9's page
        assert "Steering an MLLM" not in ex.latent_page("codes", 4)
        # a result of another family names it
        summary = json.loads((steer / "steering_score.json").read_text())
        (steer / "steering_score.json").write_text(json.dumps({**summary, "mllm_family": "Qwen2.5-VL"}))
        assert "Qwen2.5-VL answers" in Explorer(run_dir, tmp_path / "cache2").latent_page("codes", 3)
    finally:
        shutil.rmtree(steer)


def test_a_top_images_store_is_explored_too(token_run, tmp_path):
    """extract --sae_path --mean_pool --top_k keeps only top images per latent: the table and the
    latent pages still work, saying what needs codes."""
    from saevlm.explorer.app import Explorer

    run, model, sae = token_run
    out = tmp_path / "run"
    assert api.run("extract", model_name=model, layer=[1], mean_pool=True, sae_path=sae, top_k=16,
                   output_dir=out / "top", dataset_name="imagefolder", data_path=run.parent / "images", batch_size=5,
                   num_workers=0, device="cpu", no_progress=True) == 0
    ex = Explorer(out, tmp_path / "cache")
    (slug,) = ex.index.saes
    table = json.loads(ex.latents_js(slug).split("=", 1)[1].rstrip(";\n"))
    assert table["num_latents"] == 64 and table["columns"]["freq"] == [None] * 64
    page = ex.latent_page(slug, 0)
    assert page.count('class="top"') == 16 and "the histogram needs codes" in page


def test_name_with_a_clip_model_for_the_text_side(tmp_path):
    """The default text side: the embeddings' own CLIP model, prompts "a photo of a {}"."""
    from helpers import make_clip_named_run
    from saevlm.models.clip import ClipEncoder

    clip = make_clip_named_run(tmp_path, class_names=CLASSES)
    assert api.run("name", codes_dir=tmp_path / "codes", embeddings_path=tmp_path / "emb", device="cpu") == 0
    names = json.loads((tmp_path / "codes" / "names.json").read_text())
    words = sorted(CLASSES)  # classes.json: the class folders, sorted
    text = ClipEncoder(str(clip), "cpu").text([f"a photo of a {w}" for w in words])
    emb = ActivationStore(tmp_path / "emb").read(0, 24)
    emb = emb / np.linalg.norm(emb, axis=1, keepdims=True)
    top = np.load(tmp_path / "codes" / "top_images_16.npy")
    values = np.load(tmp_path / "codes" / "top_images_16_values.npy")
    checked = 0
    for rec in names["latents"]:
        if not rec["names"]:
            continue
        j = rec["id"]
        m = emb[top[j][values[j] > 0]].mean(0)  # the top images where the latent is active
        sims = text @ (m / np.linalg.norm(m))
        assert [w for w, _ in rec["names"]] == [words[i] for i in np.argsort(-sims)[:3]]
        checked += 1
    assert checked > 10 and names["text_embeddings"] == str(clip) and names["template"] == "a photo of a {}"


def test_latent_pages_show_only_activating_images(run_dir, tmp_path):
    """Images where the latent is 0 are never shown as top images: every shown one carries its
    activation (> 0), the page says on how many images the latent is active, and a latent active
    on fewer than 16 shows only those."""
    import re

    from saevlm.explorer.app import Explorer

    values = np.load(run_dir / "codes" / "top_images_16_values.npy")
    n_active = (values > 0).sum(1)
    padded = [j for j in range(K) if 0 < n_active[j] < 16]
    assert padded, "the fixture has latents active on fewer than 16 images"
    ex = Explorer(run_dir, tmp_path / "cache")
    for j in padded[:5]:
        page = ex.latent_page("codes", j)
        acts = [float(v) for v in re.findall(r'data-activation="([^"]+)"', page)]
        assert len(acts) == n_active[j] and all(a > 0 for a in acts)
        np.testing.assert_allclose(acts, values[j][: n_active[j]], rtol=1e-5)
        total = ActivationStore(run_dir / "world" / "val").num_rows if (run_dir / "world" / "val").is_dir() else None
        m = re.search(r"active on (\d+) of (\d+) images", page)
        assert m and int(m.group(1)) >= n_active[j] and (total is None or int(m.group(2)) == total)
        assert "only images where it is active" in page


def _request(url: str, method: str = "GET", headers: dict | None = None) -> tuple[int, bytes, dict]:
    import urllib.error

    req = urllib.request.Request(url, method=method, headers=headers or {})
    try:
        with urllib.request.urlopen(req, timeout=60) as r:
            return r.status, r.read(), dict(r.headers)
    except urllib.error.HTTPError as e:
        return e.code, e.read(), dict(e.headers)


def test_server_is_safe_by_default_and_answers_with_error_pages(run_dir, tmp_path, capsys):
    """Other Host headers and cross-site reads are refused; HEAD works; IPv6 loopback serves;
    a damaged file gives an HTML error page naming it (the rest keeps working); absurd ids and
    unlinked images are 404; a non-loopback --host warns."""
    import socket

    from saevlm.explorer.app import Explorer
    from saevlm.explorer.server import make_server, serve

    ex = Explorer(run_dir, tmp_path / "cache")
    srv = make_server(ex, "127.0.0.1", 0)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    base = f"http://127.0.0.1:{srv.server_address[1]}"
    try:
        assert _request(base + "/")[0] == 200
        status, body, _ = _request(base + "/", headers={"Host": "evil.example:80"})
        assert status == 421 and b"evil.example" in body
        js = base + "/sae/codes/latents.js"
        assert _request(js, headers={"Sec-Fetch-Site": "cross-site", "Sec-Fetch-Mode": "no-cors",
                                     "Sec-Fetch-Dest": "script"})[0] == 403
        assert _request(js, headers={"Sec-Fetch-Site": "same-origin"})[0] == 200
        assert _request(base + "/", headers={"Sec-Fetch-Site": "cross-site", "Sec-Fetch-Mode": "navigate",
                                             "Sec-Fetch-Dest": "document"})[0] == 200  # a link to the run
        status, body, headers = _request(base + "/", method="HEAD")
        assert status == 200 and body == b"" and int(headers["Content-Length"]) > 0
        status, body, _ = _request(base + "/sae/codes/latent/99999999.html")
        assert status == 404 and b"<html" in body
        values = np.load(run_dir / "codes" / "top_images_16_values.npy")
        top = np.load(run_dir / "codes" / "top_images_16.npy")
        linked = set(top[values > 0].tolist())
        unlinked = next(i for i in range(10 ** 6) if i not in linked)
        assert _request(base + f"/sae/codes/thumb/{unlinked}.jpg")[0] == 404
        # a damaged classes.json: that page says so, with a status >= 400; the table still works
        classes = run_dir / "codes" / "classes.json"
        backup = classes.read_bytes()
        classes.write_text("{ damaged")
        try:
            fresh = make_server(Explorer(run_dir, tmp_path / "cache2"), "127.0.0.1", 0)
            threading.Thread(target=fresh.serve_forever, daemon=True).start()
            b2 = f"http://127.0.0.1:{fresh.server_address[1]}"
            j = int(np.argmax(values[:, 0]))
            status, body, _ = _request(b2 + f"/sae/codes/latent/{j}.html")
            # the manifest's checksum of classes.json catches the damage before it is parsed
            assert status >= 400 and b"<html" in body and b"classes.json: has 9 bytes, the manifest recorded" in body
            assert _request(b2 + "/sae/codes/index.html")[0] == 200
            fresh.shutdown()
            fresh.server_close()
        finally:
            classes.write_bytes(backup)
    finally:
        srv.shutdown()
        srv.server_close()
    if socket.has_ipv6:
        v6 = make_server(ex, "::1", 0)
        threading.Thread(target=v6.serve_forever, daemon=True).start()
        try:
            assert _request(f"http://[::1]:{v6.server_address[1]}/")[0] == 200
        finally:
            v6.shutdown()
            v6.server_close()

    class Stop:
        server_address = ("0.0.0.0", 1)

        def serve_forever(self):
            raise KeyboardInterrupt

        def server_close(self):
            pass

    import saevlm.explorer.server as server_mod
    real = server_mod.make_server
    server_mod.make_server = lambda *a: Stop()
    try:
        messages = []
        serve(ex, "0.0.0.0", 0, log=messages.append)
    finally:
        server_mod.make_server = real
    assert any("readable by anyone who can reach this machine" in m for m in messages)


def test_static_export_replaces_an_earlier_one_whole_and_refuses_other_folders(run_dir, tmp_path, capsys):
    site = tmp_path / "site"
    common = ["--cache_dir", tmp_path / "cache", "--no_progress"]
    assert run_cli("explore", "--run_dir", run_dir, "--static", site, "--latents", "top:20", *common) == 0
    assert len(list((site / "sae" / "codes" / "latent").glob("*.html"))) == 20
    assert run_cli("explore", "--run_dir", run_dir, "--static", site, "--latents", "3", *common) == 0
    assert [p.name for p in (site / "sae" / "codes" / "latent").glob("*.html")] == ["3.html"]  # no stale pages
    assert not [p for p in tmp_path.iterdir() if ".tmp-" in p.name or ".old-" in p.name]
    capsys.readouterr()
    assert run_cli("explore", "--run_dir", run_dir, "--static", run_dir, *common) == 2
    assert "is (or holds) the run folder" in capsys.readouterr().err
    other = tmp_path / "mine"
    other.mkdir()
    (other / "notes.txt").write_text("keep me")
    assert run_cli("explore", "--run_dir", run_dir, "--static", other, *common) == 2
    assert "not an earlier explorer export" in capsys.readouterr().err
    assert (other / "notes.txt").read_text() == "keep me"


def test_conveniences_prev_next_search_by_id_and_read_only_runs(run_dir, tmp_path, capsys, monkeypatch):
    import os

    from saevlm.explorer.app import Explorer
    from saevlm.explorer.catalog import default_cache_dir

    ex = Explorer(run_dir, tmp_path / "cache")
    # previous / next in id order skip dead latents (the fixture's random SAE has many)
    alive = np.asarray(ex.sae("codes").stats["active"]) > 0
    j = next(k for k in range(1, K - 1) if alive[k] and alive[:k].any() and alive[k + 1:].any()
             and (not alive[k - 1] or not alive[k + 1]))
    prev_alive = max(k for k in range(j) if alive[k])
    next_alive = min(k for k in range(j + 1, K) if alive[k])
    page = ex.latent_page("codes", j)
    assert f'href="{prev_alive}.html" id="prevlatent"' in page and f'href="{next_alive}.html" id="nextlatent"' in page
    assert 'id="prevlatent"' not in ex.latent_page("codes", 0)
    # in a static export the neighbours are the neighbouring EXPORTED (live) latents
    a, b, c = [k for k in range(K) if alive[k]][:3]
    page = ex.latent_page("codes", b, linked=lambda k: k in (a, b, c))
    assert f'href="{a}.html" id="prevlatent"' in page and f'href="{c}.html" id="nextlatent"' in page
    server_url = None
    from saevlm.explorer.server import make_server
    srv = make_server(ex, "127.0.0.1", 0)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    try:
        server_url = f"http://127.0.0.1:{srv.server_address[1]}/sae/codes/index.html"
        found = parse(dump_dom(server_url + "#q=77&min_active=0"))
        assert [r[0] for r in found.rows] == ["77"]
        # from the table sorted by MS, a latent page's previous / next are its neighbours in that order
        import urllib.parse
        scores = np.load(next((run_dir / "codes").glob("ms_*/scores.npy")))
        order = sorted((k for k in range(K) if np.isfinite(scores[k])), key=lambda k: (-round(float(scores[k]), 5), k))
        mid = order[10]
        t = urllib.parse.quote("sort=ms&desc=1&min_active=0")
        dom = dump_dom(server_url.replace("index.html", f"latent/{mid}.html#t={t}"))
        assert f'href="{order[9]}.html#t=' in dom.split('id="prevlatent"')[0].rsplit("<a", 1)[1]
        assert f'href="{order[11]}.html#t=' in dom.split('id="nextlatent"')[0].rsplit("<a", 1)[1]
        # a hand-edited hash is validated: the table still renders (50 rows, page 1)
        bad = parse(dump_dom(server_url + "#per=-5&page=-3&sort=__proto__&ms_min=abc&min_active=-1"))
        assert len(bad.rows) == 50
    finally:
        srv.shutdown()
        srv.server_close()
    # a read-only run folder: a per-user cache, said once
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    monkeypatch.setattr(os, "access", lambda p, mode: False)
    d = default_cache_dir(run_dir)
    assert str(d).startswith(str(tmp_path / "xdg")) and "read-only" in capsys.readouterr().err
