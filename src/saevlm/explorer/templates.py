"""The explorer's HTML (Jinja2 templates, autoescaped), its script and its style sheet.

Every link is relative, so the pages work the same from the server and from a folder written
by ``saevlm explore --static``: ``index.html`` (the run), ``sae/<slug>/index.html`` (a latent
table), ``sae/<slug>/latent/<j>.html`` (a latent), ``sae/<slug>/thumb/<image>.jpg``."""

BASE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><meta name="viewport" content="width=device-width, initial-scale=1"><title>{% block title %}saevlm explorer{% endblock %}</title>
<link rel="stylesheet" href="{{ root }}static/style.css"></head>
<body{% block bodyattrs %}{% endblock %}><nav><a href="{{ root }}index.html">saevlm explorer</a> · {{ run_name }}{% block nav %}{% endblock %}</nav>
<main>{% block body %}{% endblock %}</main></body></html>
"""

RUN = """{% extends "base" %}
{% block body %}
<h1>Run {{ run_name }}</h1>
<h2>SAEs</h2>
<table class="saes"><tr><th>SAE</th><th>store</th><th>latents</th><th>MS mean</th><th>names</th><th>best latents by MS</th></tr>
{% for s in saes %}<tr><td><a class="sae" href="sae/{{ s.slug }}/index.html">{{ s.title }}</a></td>
<td><code>{{ s.rel }}</code></td><td>{{ s.num_latents }}</td><td>{{ s.ms_mean }}</td><td>{{ "yes" if s.named else "–" }}</td>
<td>{% if s.rule %}<span class="meta">{{ s.rule }}:</span> {% endif %}{% for j, v in s.best %}<a href="sae/{{ s.slug }}/latent/{{ j }}.html">{{ j }}</a> ({{ "%.2f"|format(v) }}){{ ", " if not loop.last }}{% endfor %}</td></tr>
{% endfor %}</table>
{% if report %}<h2>Report</h2><div class="report">{{ report|safe }}</div>{% endif %}
{% endblock %}
"""

TABLE = """{% extends "base" %}
{% block title %}{{ sae.title }}{% endblock %}
{% block nav %} · {{ sae.title }}{% endblock %}
{% block body %}
<h1>{{ sae.title }}</h1>
<p class="meta"><code>{{ rel }}</code>{% if subset %} · {{ subset }}{% endif %}</p>
{% for f, why in sae.stale.items() %}<p class="stale">stale, not shown: <code>{{ f }}</code>: {{ why }}</p>{% endfor %}
{% if freq_hist %}<div id="freqhist">{{ freq_hist|safe }}<p class="meta">activation frequency of the {{ sae.num_latents - dead }} latents active on at least one of {{ num_images }} images (log10; {{ dead }} never active)</p></div>{% endif %}
{% if density %}<details id="density" open><summary>Latents by activation frequency and mean activation (click a cell to list its latents)</summary>{{ density|safe }}<p class="meta" id="densityfilter"></p></details>{% endif %}
{% if dups is not none %}<p class="meta" id="dups">{% if dups.clusters %}<strong class="dup">{{ dups.clusters }} near-duplicate cluster{{ "s" if dups.clusters != 1 }}</strong> ({{ dups.latents }} latents, largest {{ dups.largest }}): latents whose {% if dups.basis == "active images" %}sets of active images{% else %}{{ dups.basis }}{% endif %} overlap with Jaccard &ge; {{ dups.threshold }}; each latent's page lists its cluster.{% else %}No near-duplicates: no two latents overlap on the {{ "images they are active on" if dups.basis == "active images" else dups.basis }} with Jaccard &ge; {{ dups.threshold }}.{% endif %}</p>{% endif %}
{% macro node(n) %}<li><a href="latent/{{ n.id }}.html">latent {{ n.id }}</a>{% if n.name %} (<bdi>{{ n.name }}</bdi>){% endif %}, group {{ n.group }}, active on {{ n.active }}{% if n.share is not none %}, covers {{ "%.0f"|format(n.share * 100) }} % of its images{% endif %}{% if n.children %}<ul>{% for c in n.children %}{{ node(c) }}{% endfor %}</ul>{% endif %}</li>{% endmacro %}
{% if tree %}<details id="tree" open><summary>Hierarchy: the most active latents of group 0 and their children in finer groups</summary><ul class="tree">{% for n in tree %}{{ node(n) }}{% endfor %}</ul>
<p class="meta">A child is a latent of a finer group ranked by the share of its images its parent is active on (co-activation over {{ dups.basis }}).</p></details>{% endif %}
<form id="controls" onsubmit="return false">
<label>search id, names or label <input id="q" type="search" placeholder="e.g. dog, or 17"></label>
<label>MS &ge; <input id="ms_min" type="number" step="0.05" style="width:5em"></label>
<label>group <select id="group"><option value="">all</option>{% for g in groups %}<option value="{{ g }}">{{ g }}</option>{% endfor %}</select></label>
<label>active on &ge; <input id="min_active" type="number" min="0" step="1" style="width:5em"> images</label>
<label><input id="alive" type="checkbox"> alive only</label>
<label>rows <select id="per"><option>25</option><option selected>50</option><option>100</option><option>500</option></select></label>
</form>
<p id="count"></p>
<table id="latents"><thead><tr>
{% for c, label in columns %}<th aria-sort="none" title="{{ definitions.get(c, '') }}"><a href="#" data-sort="{{ c }}">{{ label }}</a></th>{% endfor %}
</tr></thead><tbody></tbody></table>
<details id="legend"><summary>Column definitions</summary><dl>{% for c, label in columns %}<dt>{{ label }}</dt><dd>{{ definitions.get(c, '') }}</dd>{% endfor %}</dl></details>
<p class="pager"><a href="#" id="prev">&larr; previous</a> <span id="pageinfo"></span> <a href="#" id="next">next &rarr;</a></p>
<script src="latents.js"></script>
<script src="{{ root }}static/explorer.js"></script>
{% endblock %}
"""

LATENT = """{% extends "base" %}
{% block bodyattrs %} data-latent="{{ j }}"{% endblock %}
{% block title %}latent {{ j }} · {{ sae.title }}{% endblock %}
{% block nav %} · <a href="../index.html" class="tablelink">{{ sae.title }}</a> · latent {{ j }}{% endblock %}
{% block body %}
<p class="crumbs"><a href="../index.html" id="back" class="tablelink">&larr; all latents</a>{% if prev_j is not none %} · <a href="{{ prev_j }}.html" id="prevlatent">&lsaquo; latent {{ prev_j }}</a>{% endif %}{% if next_j is not none %} · <a href="{{ next_j }}.html" id="nextlatent">latent {{ next_j }} &rsaquo;</a>{% endif %}</p>
<h1>Latent {{ j }}{% if names %}: <bdi class="name">{{ names[0][0] }}</bdi>{% endif %}</h1>
{% for f, why in sae.stale.items() %}<p class="stale">stale, not shown: <code>{{ f }}</code>: {{ why }}</p>{% endfor %}
<table class="facts">
<tr><th>MS</th><td>{% if ms_all|length > 1 %}{% for lab, v in ms_all %}{{ fmt(v) }} ({{ lab }}){{ "<br>"|safe if not loop.last }}{% endfor %}{% else %}{{ fmt(ms) }}{% endif %}{% if ms_ci %}<br><span class="meta" id="msci">95 % interval over images [{{ "%.3f"|format(ms_ci[0]) }}, {{ "%.3f"|format(ms_ci[1]) }}]{% if ms_ci[1] - ms_ci[0] > 0.2 %} <strong class="dup">wide: few images carry it</strong>{% endif %}</span>{% endif %}{% if ms_pct is not none %}<br><span class="meta" id="mspct">percentile {{ "%.0f"|format(ms_pct) }} of {{ ms_n }} scored latents{% if ms_pct_active is not none %}; {{ "%.0f"|format(ms_pct_active) }} of the {{ ms_n_active }} active on &ge; {{ min_active }} images{% endif %}</span>
{% if ms_base %}<br><span class="meta" id="msbase">random sets of {{ ms_base.size }} images (it is active on {{ ms_base.n }}) score {{ "%.3f"|format(ms_base.q50) }} (median), {{ "%.3f"|format(ms_base.q95) }} (95th percentile) under the same embedder: {% if ms_base.above %}<strong>above chance</strong>{% elif ms_base.chance %}<strong class="dead">no better than chance</strong>{% else %}within the range of chance{% endif %}</span>{% elif ms_base_note %}<br><span class="meta">no baseline: {{ ms_base_note }}</span>{% endif %}{% endif %}</td><th>activation frequency</th><td>{{ fmt(freq, 4) }}</td><th>max activation</th><td>{{ fmt(maxv) }}</td></tr>
<tr><th>group</th><td>{{ group if group is not none else "–" }}</td><th>hierarchy depth</th><td id="depth">{{ fmt(depth) }}{% if depth is not none %} (pairs of its {{ depth_n }} activating top images){% if depth_max %}<br><span class="meta">taxonomy levels two images share, averaged: 0 = none (different at the top level), {{ depth_max }} = the same class</span>{% endif %}{% endif %}</td><th>FMS</th><td>{{ fmt(fms) }}</td></tr>
{% if names %}<tr><th>names ({{ names_source }}){% if weak %}<br><strong class="dup" id="weak">weak: {{ weak|join(", ") }}</strong>{% endif %}</th><td colspan="5" id="names">{% for w, s in names %}<bdi>{{ w }}</bdi> ({{ "%.3f"|format(s) }}){{ ", " if not loop.last }}{% endfor %}{% if margin is not none %}; margin {{ "%.3f"|format(margin) }}{% endif %}{% if names_n is not none %}; from the {{ names_n }} top images where it is active{% endif %}{% if detection is not none %}<br><span id="detection">detection AUROC {{ "%.2f"|format(detection) }} on {{ detection_n[0] }} held-out activating vs {{ detection_n[1] }} random silent images{% if detection_baseline is not none %} (a random other latent's name: {{ "%.2f"|format(detection_baseline) }}){% endif %}</span>{% endif %}</td></tr>{% endif %}
{% if purity is not none %}<tr><th>top-image labels</th><td colspan="5" id="purity"><bdi>{{ label }}</bdi>: purity {{ "%.2f"|format(purity) }}, entropy {{ "%.2f"|format(entropy) }} bits{% if names_n is not none %}, over the {{ names_n }} top images where it is active{% endif %}</td></tr>{% endif %}
</table>
<h2>Top {{ top|length }} images</h2>
<p class="meta" id="active">{% if active is not none %}active on {{ active }} of {{ num_images }} images{% else %}{{ top|length }} of the top {{ k_top }} images active{% endif %}{% if k_top and top|length < k_top %}; only images where it is active (&gt; 0) are shown{% endif %}</p>
{% if top %}{% if missing %}<p class="stale" id="missingimages">{{ missing }} of these images {{ "is" if missing == 1 else "are" }} no longer in the dataset folder (removed since extraction): shown as placeholders.</p>{% endif %}<div class="grid" id="top">{% for rank, img, v, lab, gone in top %}<figure class="top" data-rank="{{ rank }}" data-value="{{ "%.6g"|format(v) }}" data-activation="{{ "%.6g"|format(v) }}">
{% if thumbs and not gone %}<img src="../thumb/{{ img }}.jpg" alt="image {{ img }}{% if lab %}: {{ lab }}{% endif %}" width="112" height="112" data-large="../image/{{ img }}.jpg" title="enlarge (click, or Enter)" tabindex="0" role="button">{% else %}<div class="noimg">image {{ img }}{% if gone %} (missing){% endif %}</div>{% endif %}
<figcaption>{{ "%.3f"|format(v) }}{% if lab %} · <bdi>{{ lab }}</bdi>{% endif %}{% if image_pages %} · <a href="../img/{{ img }}.html" class="imagelink">latents</a>{% endif %}</figcaption></figure>{% endfor %}</div>
{% if not thumbs %}<p class="note">{{ thumb_note }}</p>{% endif %}
{% elif k_top %}<p class="note">Never active on these images: no top images to show.</p>
{% else %}<p class="note">No top images: run <code>saevlm top-images --activations_dir {{ rel }}</code>.</p>{% endif %}
<h2>Non-zero activations</h2>
{% if hist %}{{ hist|safe }}<p class="meta">{{ nonzero }} non-zero of {{ rows }} rows</p>{% else %}<p class="note">{{ hist_note }}</p>{% endif %}
{% if quantiles %}<h2>Where the concept fades</h2>
{% for q, imgs in quantiles %}<div class="quant"><h3>near the {{ (q * 100)|int }}th percentile of its {{ nonzero }} non-zero activations</h3><div class="grid">
{% for img, v in imgs %}<figure class="q">{% if thumbs %}<img src="../thumb/{{ img }}.jpg" alt="image {{ img }}" width="80" height="80">{% else %}<div class="noimg small">image {{ img }}</div>{% endif %}<figcaption>{{ "%.3f"|format(v) }}</figcaption></figure>{% endfor %}
</div></div>{% endfor %}{% endif %}
{% macro lat(e) %}{% if e.linked %}<a href="{{ e.id }}.html">latent {{ e.id }}</a>{% else %}latent {{ e.id }}{% endif %}{% if e.name %} (<bdi>{{ e.name }}</bdi>){% endif %}{% endmacro %}
{% if group_info %}<h2>In the hierarchy</h2>
<p class="meta" id="groupinfo">Group {{ group_info.group }} of {{ group_info.num_groups }} (groups count from 0, the coarsest; groups 0–{{ group_info.group }}, the first {{ group_info.prefix }} latents, are trained to reconstruct the input on their own, so early groups hold broad concepts); this group holds latents {{ group_info.first }}–{{ group_info.last }} ({{ group_info.size }} latents).</p>
<h3>Parents (coarser groups)</h3>
{% if parents %}<ol class="parents" id="parents">{% for e in parents %}<li>{{ lat(e) }}, group {{ e.group }}: active on {{ "%.0f"|format(e.value * 100) }} % of this latent's images</li>{% endfor %}</ol>
{% else %}<p class="note">No latent of a coarser group fires on its images.</p>{% endif %}
<h3>Children (finer groups)</h3>
{% if children %}<ol class="children" id="children">{% for e in children %}<li>{{ lat(e) }}, group {{ e.group }}: this latent is active on {{ "%.0f"|format(e.value * 100) }} % of its images</li>{% endfor %}</ol>
{% else %}<p class="note">No latent of a finer group fires on its images.</p>{% endif %}{% endif %}
<h2>Fires on the same images</h2>
{% if related is none %}<p class="note">Co-activation {{ related_note }}.</p>
{% else %}<p class="meta">Latents ranked by the Jaccard overlap of {% if related_basis == "active images" %}the images they are active on{% else %}their {{ related_basis }} (this store holds top images only){% endif %} (this latent: {{ related_active }}); &ge; {{ dup_jaccard }} is flagged as a near-duplicate.{% if cluster %} <strong class="dup" id="cluster">Near-duplicate cluster with {{ cluster|length }} other latent{{ "s" if cluster|length > 1 }}: {% for k in cluster[:20] %}{{ k }}{{ ", " if not loop.last }}{% endfor %}{% if cluster|length > 20 %} …{% endif %}.</strong>{% endif %}</p>
{% if related %}<ol class="related" id="related">{% for e in related %}<li>{{ lat(e) }}: Jaccard {{ "%.2f"|format(e.value) }}, {{ e.extra }} shared{% if e.value >= dup_jaccard %} <strong class="dup">near-duplicate</strong>{% endif %}</li>{% endfor %}</ol>
{% else %}<p class="note">No other latent is active on any of its images.</p>{% endif %}{% endif %}
<h2>Similar decoder directions (cosine)</h2>
{% if nearest %}<ol class="nearest" id="nearest">{% for k, c, nm, linked, dead in nearest %}<li>{% if linked %}<a href="{{ k }}.html">latent {{ k }}</a>{% else %}latent {{ k }}{% endif %}{% if nm %} (<bdi>{{ nm }}</bdi>){% endif %}: {{ "%.3f"|format(c) }}{% if dead %} <strong class="dead">dead (never active)</strong>{% endif %}</li>{% endfor %}</ol>
<p class="meta">Directions it writes, not images it fires on: a latent can share every image with another at cosine near 0.</p>
{% else %}<p class="note">{{ nearest_note }}</p>{% endif %}
{% if steering %}<h2>Steering an MLLM with this latent</h2>
{% for r in steering %}<p>{{ r.source }}: {{ r.summary.mllm }} answers, score {{ fmt(r.score, 3) }} (alpha {{ r.summary.alpha }}, protocol {{ r.summary.protocol }})</p>
<table><tr><th>image</th><th>answer</th><th>word</th><th>similarity</th></tr>{% for a in r.answers %}<tr><td>{{ a.image }}</td><td>{{ a.answer }}</td><td>{{ a.word }}</td><td>{{ a.similarity }}</td></tr>{% endfor %}</table>{% endfor %}{% endif %}
<h2>Token overlay</h2><p class="note">{{ overlay_note }}</p>
{% if overlay %}<div class="grid" id="overlay">{% for rank, img, v, lab, gone in top %}<figure class="overlay"><img src="../overlay/{{ j }}/{{ img }}.jpg" alt="latent {{ j }} on image {{ img }}" width="112" height="112"><figcaption>{{ "%.3f"|format(v) }}</figcaption></figure>{% endfor %}</div>{% endif %}
<div id="lightbox" hidden role="dialog" aria-label="enlarged image" tabindex="-1"><img alt=""><p></p></div>
<script src="{{ root }}static/explorer.js"></script>
{% endblock %}
"""

IMAGE = """{% extends "base" %}
{% block title %}{% if image_id is not none %}image {{ image_id }}{% else %}your image{% endif %} · {{ sae.title }}{% endblock %}
{% block nav %} · <a href="{{ root }}sae/{{ sae.slug }}/index.html">{{ sae.title }}</a> · {% if image_id is not none %}image {{ image_id }}{% else %}your image{% endif %}{% endblock %}
{% block body %}
<h1>{% if image_id is not none %}Image {{ image_id }}{% else %}Your image{% endif %}{% if label %}: <bdi>{{ label }}</bdi>{% endif %}</h1>
{% if problem %}<p class="stale" id="problem" role="alert">{{ problem }}</p>{% endif %}
{% for n in notes or [] %}<p class="note">{{ n }}</p>{% endfor %}
<div class="imagehead">
{% if uploaded %}<img src="{{ uploaded }}" alt="the uploaded image" width="224" height="224" id="uploaded">
{% elif image_id is not none and thumbs %}<img src="../image/{{ image_id }}.jpg" alt="image {{ image_id }}{% if label %}: {{ label }}{% endif %}" width="224" height="224">
{% elif image_id is not none %}<p class="note">{{ thumb_note or "no images to show" }}</p>{% endif %}
</div>
{% if image_id is not none or uploaded %}<h2>Latents that fire on it</h2>
{% if entries %}<table class="imagelatents" id="imagelatents"><thead><tr><th>latent</th><th>name</th><th>MS</th><th>activation</th><th>{% if one_row %}rank among the images it fires on{% endif %}</th>{% if overlay or heatmaps %}<th>where (patches)</th>{% endif %}<th>its top images</th></tr></thead><tbody>
{% for e in entries %}<tr data-latent="{{ e.id }}"><td>{% if e.linked %}<a href="{{ root }}sae/{{ sae.slug }}/latent/{{ e.id }}.html">latent {{ e.id }}</a>{% else %}latent {{ e.id }}{% endif %}</td><td><bdi>{{ e.name }}</bdi></td><td>{{ fmt(e.ms) }}</td><td>{{ "%.3f"|format(e.value) }}</td>
<td>{% if e.rank %}{{ e.rank[0] }} of {{ e.rank[1] }}{% endif %}</td>
{% if overlay or heatmaps %}<td>{% if heatmaps.get(e.id) %}<img src="{{ heatmaps[e.id] }}" alt="latent {{ e.id }} on the uploaded image" width="112" height="112">{% elif e.overlay and image_id is not none %}<img src="../overlay/{{ e.id }}/{{ image_id }}.jpg" alt="latent {{ e.id }} on image {{ image_id }}" width="112" height="112">{% endif %}</td>{% endif %}
<td class="tops">{% for i, has_page in e.tops %}{% if has_page %}<a href="{{ root }}sae/{{ sae.slug }}/img/{{ i }}.html">{% endif %}{% if thumbs %}<img src="{{ root }}sae/{{ sae.slug }}/thumb/{{ i }}.jpg" alt="image {{ i }}" width="56" height="56">{% else %}{{ i }} {% endif %}{% if has_page %}</a>{% endif %}{% endfor %}</td></tr>{% endfor %}
</tbody></table>
{% else %}<p class="note">No latent of this SAE fires on it.</p>{% endif %}{% endif %}
<h2>Try your own image</h2>
{% if live %}<form id="live" method="post" action="{{ root }}sae/{{ sae.slug }}/live" enctype="multipart/form-data">
<label>an image (JPEG, PNG, WebP, GIF, BMP or TIFF; at most 16 MB and 25 megapixels) <input type="file" name="image" accept="image/*" required></label>
<button type="submit">show its latents</button></form>
<p class="meta">The server runs the run's vision model at this SAE's hook and the SAE on it (one image at a time); nothing is stored.</p>
{% else %}<p class="note" id="livenote">{{ live_note }}</p>{% endif %}
{% endblock %}
"""

SCRIPT = r"""// saevlm explorer: the latent table (sort, filter, search, pages; state in the URL's #hash) and
// the latent pages (links back to the table as it was left, top images enlarged on a click)
(function () {
  const $ = (id) => document.getElementById(id);
  const esc = (t) => String(t).replace(/[&<>"]/g, (m) => ({"&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;"}[m]));
  if (!window.SAEVLM_LATENTS) return latentPage();
  const D = window.SAEVLM_LATENTS;
  const T = table(D);
  function render() {
    const s = T.state(location.hash.slice(1)), rows = T.rows(s), C = T.C, n = T.n;
    const pages = Math.max(1, Math.ceil(rows.length / s.per)), page = Math.min(s.page, pages);
    const shown = rows.slice((page - 1) * s.per, page * s.per);
    const cols = Array.from(document.querySelectorAll("th a[data-sort]")).map((a) => a.dataset.sort);
    const back = "#t=" + encodeURIComponent(location.hash.slice(1));  // the latent page links back to this view
    $("latents").tBodies[0].innerHTML = shown.map((i) => "<tr>" + cols.map((c) => {
      if (c === "id") return `<td><a href="latent/${C.id[i]}.html${back}">${C.id[i]}</a></td>`;
      if (c === "name") return `<td class="name" title="${esc(T.namesOf(i))}"><bdi>${esc(C.name[i])}</bdi></td>`;
      if (c === "label") return `<td class="name"><bdi>${esc(T.labelOf(i))}</bdi></td>`;
      return `<td>${T.fmt(C[c] ? C[c][i] : null, T.digits[c] || (/^ms\d+$/.test(c) ? 3 : 0))}</td>`;
    }).join("") + "</tr>").join("");
    $("count").textContent = `${rows.length} of ${n} latents` + (s.min_active !== "" && +s.min_active > 0 && T.hasActive ?
      ` (active on at least ${s.min_active} images; set 0 to see all)` : "");
    $("pageinfo").textContent = `page ${page} of ${pages}`;
    if ($("densityfilter")) {
      $("densityfilter").innerHTML = s.f_lo !== "" ? `showing the latents of one cell: frequency ${esc(s.f_lo)}–${esc(s.f_hi)}, mean activation ${esc(s.a_lo)}–${esc(s.a_hi)} · <a href="#" id="clearcell">clear</a>` : "";
      if ($("clearcell")) $("clearcell").onclick = (e) => { e.preventDefault(); setState({f_lo: "", f_hi: "", a_lo: "", a_hi: "", page: 1}); };
    }
    for (const a of document.querySelectorAll("th a[data-sort]")) {
      a.classList.toggle("sorted", a.dataset.sort === s.sort);
      a.textContent = a.textContent.replace(/ [▲▼]$/, "") + (a.dataset.sort === s.sort ? (s.desc ? " ▼" : " ▲") : "");
      a.parentElement.setAttribute("aria-sort", a.dataset.sort === s.sort ? (s.desc ? "descending" : "ascending") : "none");
    }
    $("q").value = s.q; $("ms_min").value = s.ms_min; $("group").value = s.group;
    $("alive").checked = s.alive; $("per").value = String(s.per); $("min_active").value = s.min_active;
  }
  for (const a of document.querySelectorAll("th a[data-sort]")) {
    a.addEventListener("click", (e) => {
      e.preventDefault();
      const s = T.state(location.hash.slice(1)), c = a.dataset.sort;
      setState({sort: c, desc: s.sort === c ? !s.desc : c !== "id" && c !== "name", page: 1});
    });
  }
  $("q").addEventListener("input", () => setState({q: $("q").value, page: 1}));
  $("ms_min").addEventListener("change", () => setState({ms_min: $("ms_min").value, page: 1}));
  $("group").addEventListener("change", () => setState({group: $("group").value, page: 1}));
  $("alive").addEventListener("change", () => setState({alive: $("alive").checked, page: 1}));
  $("min_active").addEventListener("change", () => setState({min_active: $("min_active").value, page: 1}));
  $("per").addEventListener("change", () => setState({per: +$("per").value, page: 1}));
  $("prev").addEventListener("click", (e) => { e.preventDefault(); setState({page: Math.max(1, T.state(location.hash.slice(1)).page - 1)}); });
  $("next").addEventListener("click", (e) => { e.preventDefault(); setState({page: T.state(location.hash.slice(1)).page + 1}); });
  function setState(changes) {
    const s = Object.assign(T.state(location.hash.slice(1)), changes);
    location.hash = T.hashOf(s);
  }
  window.addEventListener("hashchange", render);
  render();

  // the table's data, state (validated: a hand-edited #hash never blocks the tab) and order; the
  // latent pages use the same order for previous / next
  function table(D) {
    const C = D.columns, n = C.id.length, W = D.words || [];
    C.name = C.name_ids ? C.name_ids.map((a) => a.length ? W[a[0]] : "") : C.id.map(() => "");
    const namesOf = (i) => C.name_ids ? C.name_ids[i].map((k) => W[k]).join(" · ") : "";
    const labelOf = (i) => C.top_label && C.top_label[i] !== null ? `${D.classes[C.top_label[i]]} (${C.top_purity[i].toFixed(2)})` : "";
    C.label = C.top_purity || null;  // sorting the label column sorts by purity
    const fmt = (v, d) => v === null || v === undefined ? "–" : (typeof v === "number" ? v.toFixed(d) : v);
    const digits = {ms: 3, fms: 3, freq: 4, max: 3, mean: 3, depth: 2, ms_pct: 0};
    const hasActive = D.has && D.has.active, defMin = hasActive ? String(D.default_min_active || 0) : "";
    const defSort = D.has && D.has.ms ? "ms" : "id";
    const PER = [25, 50, 100, 500], groups = new Set((C.group || []).map(String));
    const num = (v) => v !== null && v !== "" && isFinite(+v);
    function state(hash) {
      const p = new URLSearchParams(hash);
      const sort = p.get("sort"), per = +p.get("per"), page = Math.floor(+p.get("page"));
      const minA = p.get("min_active"), msMin = p.get("ms_min"), group = p.get("group");
      return {sort: sort && Object.prototype.hasOwnProperty.call(C, sort) && C[sort] ? sort : defSort,
              desc: p.has("desc") ? p.get("desc") === "1" : (sort || defSort) === "ms",
              page: isFinite(page) && page >= 1 ? page : 1,
              per: PER.includes(per) ? per : 50, q: (p.get("q") || "").slice(0, 200).toLowerCase(),
              ms_min: num(msMin) ? msMin : "",
              min_active: p.has("min_active") ? (minA === "" || (num(minA) && +minA >= 0) ? minA : defMin) : defMin,
              group: group !== null && groups.has(group) ? group : "", alive: p.get("alive") === "1",
              f_lo: num(p.get("f_lo")) ? p.get("f_lo") : "", f_hi: num(p.get("f_hi")) ? p.get("f_hi") : "",
              a_lo: num(p.get("a_lo")) ? p.get("a_lo") : "", a_hi: num(p.get("a_hi")) ? p.get("a_hi") : ""};
    }
    function hashOf(s) {
      const p = new URLSearchParams();
      for (const [k, v] of Object.entries(s)) {
        if (k === "desc") { p.set(k, v ? "1" : "0"); continue; }
        if (k === "min_active") { if (v !== defMin) p.set(k, v); continue; }
        if (v !== "" && v !== false && !(k === "page" && v === 1)) p.set(k, v === true ? "1" : v);
      }
      return p.toString();
    }
    // search: the id, any of the three names, or the top images' majority label
    function matcher(q) {
      if (!q) return null;
      const hit = W.map((w) => w.toLowerCase().includes(q));
      const cls = (D.classes || []).map((w) => String(w).toLowerCase().includes(q));
      return (i) => String(C.id[i]) === q || (C.name_ids !== null && C.name_ids !== undefined &&
        C.name_ids[i].some((k) => hit[k])) || (C.label_id && C.label_id[i] !== null && hit[C.label_id[i]]) ||
        (C.top_label && C.top_label[i] !== null && cls[C.top_label[i]]);
    }
    function rows(s) {
      const match = matcher(s.q.trim()), out = [];
      for (let i = 0; i < n; i++) {
        if (match && !match(i)) continue;
        if (s.ms_min !== "" && !(C.ms && C.ms[i] !== null && C.ms[i] >= +s.ms_min)) continue;
        if (s.group !== "" && C.group[i] !== +s.group) continue;
        if (s.alive && !(C.max[i] !== null && C.max[i] > 0)) continue;
        if (s.min_active !== "" && C.active && C.active[i] !== null && C.active[i] < +s.min_active) continue;
        if (s.f_lo !== "" && !(C.freq && C.freq[i] !== null && C.freq[i] >= +s.f_lo * 0.99999 && C.freq[i] <= +s.f_hi * 1.00001)) continue;
        if (s.a_lo !== "" && !(C.mean && C.mean[i] !== null && C.mean[i] >= +s.a_lo * 0.99999 && C.mean[i] <= +s.a_hi * 1.00001)) continue;
        out.push(i);
      }
      const col = C[s.sort] || C.id, dir = s.desc ? -1 : 1;
      out.sort((a, b) => {
        const x = col[a], y = col[b];
        if (x === y) return C.id[a] - C.id[b];
        if (x === null || x === undefined) return 1;
        if (y === null || y === undefined) return -1;
        return (x < y ? -1 : 1) * dir;
      });
      return out;
    }
    return {C, n, namesOf, labelOf, fmt, digits, hasActive, state, hashOf, rows};
  }

  function latentPage() {
    // breadcrumbs keep the table's state: it arrives as #t=<the table's hash> and is passed on;
    // previous / next follow the table's order under that state (its data is loaded for it)
    const t = new URLSearchParams(location.hash.slice(1)).get("t");
    if (t !== null) {
      for (const a of document.querySelectorAll("a.tablelink")) a.href = a.getAttribute("href").split("#")[0] + "#" + t;
      for (const id of ["prevlatent", "nextlatent"]) {
        const a = $(id);
        if (a) a.href = a.getAttribute("href").split("#")[0] + "#t=" + encodeURIComponent(t);
      }
      const me = +(document.body.dataset.latent || -1), tag = document.createElement("script");
      tag.src = "../latents.js";
      tag.onload = () => {
        if (!window.SAEVLM_LATENTS) return;
        const T = table(window.SAEVLM_LATENTS), order = T.rows(T.state(t)), at = order.indexOf(me);
        if (at < 0) return;  // not in the table's current view: ids order stays
        const crumbs = document.querySelector("p.crumbs");
        for (const [id, k, text] of [["prevlatent", order[at - 1], "‹ latent "], ["nextlatent", order[at + 1], "latent "]]) {
          let a = $(id);
          if (k === undefined) { if (a) a.hidden = true; continue; }  // the first / last of the table's view
          if (!a) { a = document.createElement("a"); a.id = id; crumbs.append(" · ", a); }
          a.href = `${T.C.id[k]}.html#t=${encodeURIComponent(t)}`;
          a.textContent = id === "prevlatent" ? text + T.C.id[k] : text + T.C.id[k] + " ›";
          a.dataset.order = "table";
        }
      };
      document.head.append(tag);
    }
    // a click on a top image shows it enlarged; a click or Escape closes it
    const box = $("lightbox");
    if (!box) return;
    let opener = null;
    const close = () => { if (!box.hidden) { box.hidden = true; if (opener) opener.focus(); } };
    for (const img of document.querySelectorAll("img[data-large]")) {
      const open = () => {
        opener = img;
        box.querySelector("img").src = img.dataset.large;
        box.querySelector("img").alt = img.alt;
        box.querySelector("p").textContent = img.alt + " · " + (img.closest("figure").querySelector("figcaption") || {}).textContent;
        box.hidden = false;
        box.focus();
      };
      img.addEventListener("click", open);
      img.addEventListener("keydown", (e) => { if (e.key === "Enter" || e.key === " ") { e.preventDefault(); e.stopPropagation(); open(); } });
    }
    box.addEventListener("click", close);
    document.addEventListener("keydown", (e) => { if (e.key === "Escape" || (e.key === "Enter" && !box.hidden && document.activeElement === box)) close(); });
  }
})();
"""

STYLE = """body{font-family:system-ui,sans-serif;margin:0;color:#222}
nav{background:#1f2933;color:#ddd;padding:8px 16px;font-size:14px}nav a{color:#fff;text-decoration:none}
main{max-width:1200px;margin:1em auto;padding:0 16px;overflow-wrap:anywhere}bdi{unicode-bidi:isolate}
h1{overflow-wrap:anywhere}figcaption{max-width:112px;overflow-wrap:anywhere}img[tabindex]:focus{outline:3px solid #b45309}
table{border-collapse:collapse;margin:.5em 0 1.2em}td,th{border:1px solid #ddd;padding:3px 8px;font-size:13px}
th{background:#f3f4f6;text-align:left}th a{color:#222;text-decoration:none}th a.sorted{color:#b45309}
#latents td{text-align:right}#latents td.name{text-align:left;max-width:22em;overflow:hidden;text-overflow:ellipsis;white-space:nowrap}
img[data-large]{cursor:zoom-in}
#lightbox{position:fixed;inset:0;background:rgba(0,0,0,.8);display:flex;flex-direction:column;align-items:center;justify-content:center;cursor:zoom-out;z-index:10}
#lightbox[hidden]{display:none}#lightbox img{max-width:90vw;max-height:80vh}#lightbox p{color:#eee}
#controls label{margin-right:1.2em;font-size:14px}
.grid{display:flex;flex-wrap:wrap;gap:6px}figure{margin:0;text-align:center;font-size:12px}
.noimg{width:112px;height:112px;background:#e5e7eb;display:flex;align-items:center;justify-content:center;color:#555}
.noimg.small{width:80px;height:80px}
.note{color:#6b7280;font-size:13px}.stale{color:#b91c1c;font-size:13px}.meta{color:#6b7280;font-size:13px}.name{color:#1d4ed8}.dup{color:#b45309}.dead{color:#b91c1c}
.report table td{text-align:right}.imagelatents td{vertical-align:middle}.tops img{margin-right:2px}
"""

TEMPLATES = {"base": BASE, "run": RUN, "table": TABLE, "latent": LATENT, "image": IMAGE}
