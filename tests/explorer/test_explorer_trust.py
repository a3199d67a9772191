"""The explorer one can trust (issue "Explorer you can trust"): in a real browser (headless Chromium
driven over the DevTools protocol, tests/cdp.py) only activating images, every MS, search by every
name and label, breadcrumbs that keep the table state, enlarged images, the frequency histogram and
truncated names; over HTTP a run that changes while it is served, gzip with validators, and no lock
on cached or static paths."""

import gzip
import json
import shutil
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np
import pytest

from cdp import Browser
from saevlm import api

LONG = "an unusually long latent name that the table truncates with the whole name on hover " * 2


def _get(url: str, headers: dict | None = None) -> tuple[int, bytes, dict]:
    req = urllib.request.Request(url, headers=headers or {})
    try:
        with urllib.request.urlopen(req, timeout=60) as r:
            return r.status, r.read(), dict(r.headers)
    except urllib.error.HTTPError as e:
        return e.code, e.read(), dict(e.headers)


class Served:
    """``saevlm explore``'s server on a free port, in a thread."""

    def __init__(self, run: Path, cache: Path):
        from saevlm.explorer.app import Explorer
        from saevlm.explorer.server import make_server

        self.explorer = Explorer(run, cache)
        self.srv = make_server(self.explorer, "127.0.0.1", 0)
        threading.Thread(target=self.srv.serve_forever, daemon=True).start()
        self.base = f"http://127.0.0.1:{self.srv.server_address[1]}"

    def close(self) -> None:
        self.srv.shutdown()
        self.srv.server_close()


@pytest.fixture(scope="module")
def trust_run(tmp_path_factory, explorer_run):
    """The explorer's run, copied, with a second MS (another embedder's folder), names from
    ``saevlm name`` and three planted details (planted.json says on which latents): a label only one
    latent has, a third name only one latent has, and a long first name."""
    run = tmp_path_factory.mktemp("trust") / "run"
    shutil.copytree(explorer_run, run, ignore=shutil.ignore_patterns(".explorer_cache"))
    codes = run / "codes"
    assert api.run("ms", activations_dir=codes, embeddings_path=run / "emb", device="cpu", output_subdir="ms_second",
                   no_progress=True) == 0
    rng = np.random.default_rng(0)
    words = ["otter", "pencil", "violin", "lighthouse", "harbour"]
    text = rng.standard_normal((len(words), 32)).astype(np.float32)
    np.save(run / "text.npy", text / np.linalg.norm(text, axis=1, keepdims=True))
    (run / "vocab.txt").write_text("\n".join(words))
    assert api.run("name", codes_dir=codes, embeddings_path=run / "emb", text_embeddings=run / "text.npy",
                   vocab=run / "vocab.txt") == 0
    names = json.loads((codes / "names.json").read_text())
    values = np.load(codes / "top_images_16_values.npy")
    alive = [j for j in range(len(values)) if values[j, 0] > 0]
    lat = names["latents"]
    label_j, third_j, long_j = alive[1], alive[2], alive[3]
    lat[label_j]["label"] = "unicorn"
    lat[third_j]["names"][2][0] = "narwhal"
    lat[long_j]["names"][0][0] = LONG
    (codes / "names.json").write_text(json.dumps(names))
    (run / "planted.json").write_text(json.dumps({"label": label_j, "third": third_j, "long": long_j}))
    return run


def _table_rows(b: Browser) -> list[list[str]]:
    return b.js("Array.from(document.querySelectorAll('#latents tbody tr')).map(r => "
                "Array.from(r.cells).map(c => c.textContent))")


def test_the_explorer_in_a_browser(trust_run, tmp_path):
    """Items 1, 2 and 7 as a researcher meets them, in Chromium over the server."""
    codes = trust_run / "codes"
    served = Served(trust_run, tmp_path / "cache")
    table_url = served.base + "/sae/codes/index.html"
    data = json.loads(served.explorer.latents_js("codes").split("=", 1)[1].rstrip().rstrip(";"))
    cols = data["columns"]
    names = json.loads((codes / "names.json").read_text())["latents"]
    values = np.load(codes / "top_images_16_values.npy")
    top = np.load(codes / "top_images_16.npy")
    try:
        with Browser() as b:
            # -- 2. every MS: one column per embedder, numbers in both, sortable by the second
            b.open(table_url + "#sort=ms1&desc=1&min_active=0&per=500")
            b.wait("document.querySelectorAll('#latents tbody tr').length > 0")
            heads = b.js("Array.from(document.querySelectorAll('th a[data-sort]')).map(a => a.dataset.sort + '=' "
                         "+ a.textContent)")
            keys = [h.split("=")[0] for h in heads]
            labels = {h.split("=")[1].rstrip(" ▲▼"): h.split("=")[0] for h in heads}
            assert {"MS (tiny-clip)", "MS (second)"} <= set(labels) and {"ms", "ms1"} <= set(keys)
            scores = np.load(codes / ("ms_second" if labels["MS (second)"] == "ms1" else "ms_tiny-clip") / "scores.npy")
            rows = _table_rows(b)
            shown = [float(r[keys.index("ms1")]) for r in rows if r[keys.index("ms1")] != "–"]
            assert len(shown) == int(np.isfinite(scores).sum()) and shown == sorted(shown, reverse=True)
            np.testing.assert_allclose(shown, np.sort(scores[np.isfinite(scores)])[::-1], atol=6e-4)
            assert all(r[keys.index("ms")] != "–" for r in rows[:20])  # never "-" because there are two

            # -- 7. search by id, by any of the three names, by the majority label
            def search(q: str) -> set[int]:
                b.open(table_url + f"#q={q}&min_active=0&per=500")
                b.wait("document.getElementById('count').textContent.length > 0")
                return {int(r[0]) for r in _table_rows(b)}

            planted = json.loads((trust_run / "planted.json").read_text())
            assert search("unicorn") == {planted["label"]}   # only that latent's label
            assert search("narwhal") == {planted["third"]}   # only that latent's third name
            assert search("17") == {17}
            def having(word: str, first: bool) -> set[int]:
                return {j for j, r in enumerate(names) if any(word in w for w, _ in r["names"][:1 if first else 3])}

            word = next(w for w in ("otter", "pencil", "violin", "lighthouse", "harbour")
                        if having(w, True) != having(w, False))  # a word that is often a second or third name
            assert search(word) == having(word, False)  # any of the three names, not just the first

            # -- 7. long names truncated, the whole name on hover
            b.open(table_url + "#q=unusually&min_active=0")
            b.wait("document.querySelectorAll('#latents tbody tr').length === 1")
            cell = b.js("(() => { const c = document.querySelector('#latents tbody td.name'); return "
                        "{title: c.title, text: c.textContent, cut: c.scrollWidth > c.clientWidth}; })()")
            assert cell["text"] == LONG and cell["cut"] and cell["title"].startswith(LONG)

            # -- 7. the SAE-wide log-frequency histogram
            bars = b.js("document.querySelectorAll('#freqhist svg rect').length")
            alive = sum(1 for v in cols["active"] if v)
            assert bars == 40 and f"the {alive} latents active" in b.js("document.getElementById('freqhist').textContent")

            # -- 7. breadcrumbs keep the table state: table -> latent -> next latent -> back
            state = "sort=ms1&desc=1&page=2&per=25&min_active=0"
            b.open(table_url + "#" + state)
            b.wait("document.getElementById('pageinfo').textContent.startsWith('page 2')")
            first = int(_table_rows(b)[0][0])
            b.follow("#latents tbody a")
            assert b.js("location.pathname").endswith(f"/latent/{first}.html")
            if b.js("!!document.getElementById('nextlatent')"):
                b.follow("#nextlatent")
            b.follow("#back")
            assert b.js("location.hash.slice(1)") == state
            b.wait("document.getElementById('pageinfo').textContent.startsWith('page 2')")
            assert int(_table_rows(b)[0][0]) == first

            # -- 1. only activating images, each with its activation; names and purity say on how many
            padded = [j for j in range(len(values)) if 0 < (values[j] > 0).sum() < 16 and names[j]["names"]]
            assert padded
            j = padded[0]
            n = int((values[j] > 0).sum())
            b.open(served.base + f"/sae/codes/latent/{j}.html")
            acts = b.js("Array.from(document.querySelectorAll('#top figure')).map(f => +f.dataset.activation)")
            assert len(acts) == n and all(a > 0 for a in acts)
            np.testing.assert_allclose(acts, values[j][:n], rtol=1e-5)
            facts = b.js("document.querySelector('table.facts').textContent")
            assert f"from the {n} top images where it is active" in facts
            assert f"over the {n} top images where it is active" in facts
            assert f"active on {cols['active'][j]} of" in b.js("document.getElementById('active').textContent")

            # -- 7. a click on a top image enlarges it; Escape closes it
            b.js("document.querySelector('#top img').click()")
            b.wait("!document.getElementById('lightbox').hidden && document.querySelector('#lightbox img').complete "
                   "&& document.querySelector('#lightbox img').naturalWidth > 0")
            assert b.js("document.querySelector('#lightbox img').naturalWidth") == 448
            assert b.js("document.querySelector('#lightbox img').src").endswith(f"/image/{int(top[j][0])}.jpg")
            b.js("document.dispatchEvent(new KeyboardEvent('keydown', {key: 'Escape'}))")
            assert b.js("document.getElementById('lightbox').hidden") is True
    finally:
        served.close()


def test_static_export_keeps_breadcrumbs_and_enlarging_from_file_urls(trust_run, tmp_path):
    site = tmp_path / "site"
    assert api.run("explore", run_dir=trust_run, static=site, latents="top:30", cache_dir=tmp_path / "cache",
                   no_progress=True) == 0
    table = (site / "sae" / "codes" / "index.html").as_uri()
    with Browser() as b:
        state = "sort=ms&desc=0&min_active=0&per=25"
        b.open(table + "#" + state)
        b.wait("document.querySelectorAll('#latents tbody tr').length > 0")
        b.follow("#latents tbody a")
        b.js("document.querySelector('#top img').click()")
        b.wait("document.querySelector('#lightbox img').complete && document.querySelector('#lightbox img')"
               ".naturalWidth === 448")
        b.follow("#back")
        assert b.js("location.hash.slice(1)") == state


def test_the_run_is_followed_while_served(trust_run, tmp_path, explorer_run):
    """Item 3: a store added while serving appears; a store re-encoded with another SAE shows none
    of the old names, MS, top images or steering as current, and each page says what is stale and
    which command refreshes it."""
    from helpers import save_random_sae

    run = tmp_path / "run"
    shutil.copytree(trust_run, run)
    served = Served(run, tmp_path / "cache")
    try:
        status, body, _ = _get(served.base + "/")
        assert status == 200 and b"sae/codes2/" not in body
        other = save_random_sae(tmp_path / "sae2", dim=64, dict_size=128, k=8, seed=3)
        assert api.run("encode", sae_path=other, activations_dir=run / "acts" / "post_mlp_residual_1",
                       output_dir=run / "codes2", no_progress=True) == 0
        time.sleep(1.1)  # the index is re-scanned at most once a second
        status, body, _ = _get(served.base + "/")
        assert status == 200 and b'href="sae/codes2/index.html"' in body  # no restart
        assert _get(served.base + "/sae/codes2/latent/5.html")[0] == 200

        # a steering result of this SAE, current: shown on its latent's page
        from saevlm.data.atomic import file_checksum
        from saevlm.data.open import open_any_store
        from saevlm.sae.checkpoint import resolve_checkpoint
        sae_path = open_any_store(run / "codes").provenance.sae.path
        weights, _ = resolve_checkpoint(sae_path)
        steer = run / "steer"
        steer.mkdir()
        (steer / "steering_score.json").write_text(json.dumps(
            {"kind": "steering_score", "protocol": "saevlm", "mean": 0.4, "std": 0.1, "neurons": 1, "images": 1,
             "steered": True, "alpha": 100.0, "sae": sae_path, "sae_dict_size": 256,
             "sae_weights": file_checksum(weights)}))
        (steer / "scores.csv").write_text("neuron,score\n3,0.612500\n")
        (steer / "labels.csv").write_text("neuron,image,answer,word,similarity\n3,white,Pencils,pencils,0.6125\n")
        time.sleep(1.1)
        page = _get(served.base + "/sae/codes/latent/3.html")[1].decode()
        assert "Pencils" in page and "stale" not in page
        names_before = json.loads((run / "codes" / "names.json").read_text())["latents"][3]["names"][0][0]
        assert f'<bdi class="name">{names_before}</bdi>' in page

        # the SAE retrained under the same path, and the codes re-encoded with it
        sae_dir = weights.parent
        backup = weights.read_bytes()
        try:
            save_random_sae(sae_dir, dim=64, dict_size=256, k=16, seed=7)
            assert api.run("encode", sae_path=sae_dir, activations_dir=run / "acts" / "post_mlp_residual_1",
                           output_dir=run / "codes", overwrite=True, no_progress=True) == 0
            time.sleep(1.1)
            page = _get(served.base + "/sae/codes/latent/3.html")[1].decode()
            for stale in ("names.json", "top_images_16.json", "ms_tiny-clip/ms.json", "ms_second/ms.json",
                          "steer/steering_score.json"):
                assert f"stale, not shown: <code>{stale}</code>" in page, stale
            assert "saevlm name --codes_dir" in page and "saevlm top-images --activations_dir" in page
            assert "saevlm steering-score" in page and "other SAE weights" in page
            assert "Pencils" not in page and 'class="name"' not in page and 'id="top"' not in page
            data = _get(served.base + "/sae/codes/latents.js")[1].decode()
            cols = json.loads(data.split("=", 1)[1].rstrip().rstrip(";"))["columns"]
            assert cols["ms"] is None and cols["name_ids"] is None and cols["label_id"] is None
            table = _get(served.base + "/sae/codes/index.html")[1].decode()
            assert "stale, not shown: <code>names.json</code>" in table
        finally:
            weights.write_bytes(backup)
    finally:
        served.close()


def test_older_names_computed_over_padding_are_flagged(trust_run, tmp_path):
    """A names.json from before (no n_active: named from padded top-16 lists) is not shown as current."""
    from saevlm.explorer.app import Explorer

    run = tmp_path / "run"
    shutil.copytree(trust_run, run)
    names = json.loads((run / "codes" / "names.json").read_text())
    for r in names["latents"]:
        r.pop("n_active")
    (run / "codes" / "names.json").write_text(json.dumps(names))
    ex = Explorer(run, tmp_path / "cache")
    assert "names.json" in ex.sae("codes").stale and "only activating images" in ex.sae("codes").stale["names.json"]
    assert 'class="name"' not in ex.latent_page("codes", 7)


def test_http_gzip_validators_and_no_global_lock(trust_run, tmp_path):
    """Item 6: the table data gzip-compressed with an ETag (304 on revalidation); while one SAE's
    page is being computed (its lock held), static files, the cached run page, the cached table
    data and cached thumbnails are served at once, and that SAE's page follows when it is free."""
    served = Served(trust_run, tmp_path / "cache")
    try:
        url = served.base + "/sae/codes/latents.js"
        status, plain, h = _get(url)
        assert status == 200 and "Content-Encoding" not in h and h.get("ETag")
        status, packed, hz = _get(url, {"Accept-Encoding": "gzip"})
        assert hz.get("Content-Encoding") == "gzip" and gzip.decompress(packed) == plain
        assert len(packed) < len(plain) / 2 and hz["ETag"] == h["ETag"]
        assert _get(url, {"If-None-Match": h["ETag"]})[0] == 304
        assert _get(url, {"If-None-Match": '"other"'})[0] == 200
        run_page = _get(served.base + "/")
        assert run_page[0] == 200 and _get(served.base + "/", {"If-None-Match": run_page[2]["ETag"]})[0] == 304
        values = np.load(trust_run / "codes" / "top_images_16_values.npy")
        top = np.load(trust_run / "codes" / "top_images_16.npy")
        j = int(np.argmax(values[:, 0]))
        assert _get(served.base + f"/sae/codes/latent/{j}.html")[0] == 200
        thumb = served.base + f"/sae/codes/thumb/{int(top[j][0])}.jpg"
        assert _get(thumb)[0] == 200  # now cached on disk

        view = served.explorer.sae("codes")
        view.lock.acquire()  # a first latent page of this SAE being computed
        try:
            for path in ("/static/style.css", "/static/explorer.js", "/", "/sae/codes/latents.js", thumb[len(served.base):]):
                t = time.perf_counter()
                assert _get(served.base + path)[0] == 200
                assert time.perf_counter() - t < 5, path
            waiting: list = []
            t = threading.Thread(target=lambda: waiting.append(_get(served.base + "/sae/codes/latent/3.html")[0]))
            t.start()
            time.sleep(0.5)
            assert waiting == []  # that SAE's own computing page waits for its lock ...
        finally:
            view.lock.release()
        t.join(30)
        assert waiting == [200]  # ... and follows once it is free
    finally:
        served.close()


def test_decoder_rows_are_read_without_transformers(trust_run, tmp_path):
    """The first latent page (with its nearest latents) imports neither transformers nor
    dictionary_learning, and the rows equal the loaded SAE's decoder."""
    code = (
        "import sys, json\n"
        "from saevlm.explorer.app import Explorer\n"
        f"ex = Explorer({str(trust_run)!r}, {str(tmp_path / 'cache')!r})\n"
        "page = ex.latent_page('codes', 3)\n"
        "print(json.dumps({'nearest': 'Similar decoder directions' in page and 'href=\"' in page.split('Similar decoder directions')[1],\n"
        "                  'transformers': 'transformers' in sys.modules,\n"
        "                  'dictionary_learning': 'dictionary_learning' in sys.modules}))\n")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    seen = json.loads(r.stdout.strip().splitlines()[-1])
    assert seen == {"nearest": True, "transformers": False, "dictionary_learning": False}
    from saevlm.data.open import open_any_store
    from saevlm.sae.checkpoint import decoder_rows, load_sae

    path = open_any_store(trust_run / "codes").provenance.sae.path
    ae = load_sae(path).ae
    np.testing.assert_array_equal(decoder_rows(path), ae.decoder.weight.detach().numpy().T)


@pytest.mark.parametrize("arch", ["matryoshka_batch_top_k", "standard", "top_k"])
def test_decoder_rows_of_every_architecture(arch, tmp_path):
    import torch

    from saevlm.sae.archs import dict_class
    from saevlm.sae.checkpoint import decoder_rows, load_sae

    torch.manual_seed(0)
    cls = dict_class(arch)
    ae = cls(16, 64, 4, [16, 48]) if arch == "matryoshka_batch_top_k" else cls(16, 64, 4) if arch == "top_k" \
        else cls(16, 64)
    torch.save(ae.state_dict(), tmp_path / "ae.pt")
    rows = decoder_rows(tmp_path / "ae.pt")
    loaded = load_sae(str(tmp_path / "ae.pt")).ae
    want = loaded.W_dec if hasattr(loaded, "W_dec") else loaded.decoder.weight.T
    assert rows.shape == (64, 16)
    np.testing.assert_array_equal(rows, want.detach().numpy())


def test_error_pages_in_a_browser(trust_run, tmp_path):
    """Item 4 as a browser shows it: a damaged file gives an HTML page naming the file and what is
    wrong (status >= 400), an absurd id a 404 page, and the rest of the run keeps working."""
    run = tmp_path / "run"
    shutil.copytree(trust_run, run)
    (run / "codes" / "classes.json").write_text("{ damaged")
    served = Served(run, tmp_path / "cache")
    values = np.load(run / "codes" / "top_images_16_values.npy")
    j = int(np.argmax(values[:, 0]))
    try:
        with Browser() as b:
            b.open(served.base + f"/sae/codes/latent/{j}.html")
            assert b.js("document.title").startswith("500")
            assert "classes.json: has 9 bytes, the manifest recorded" in b.js("document.body.textContent")
            b.open(served.base + "/sae/codes/latent/99999999.html")
            assert b.js("document.title").startswith("404")
            b.open(served.base + "/sae/codes/index.html#min_active=0")
            b.wait("document.querySelectorAll('#latents tbody tr').length > 0")  # the table still works
        assert _get(served.base + f"/sae/codes/latent/{j}.html")[0] == 500
    finally:
        served.close()
