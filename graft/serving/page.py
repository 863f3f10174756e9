"""The web page at ``GET /``: drop or pick images, see each with its top-k as bars.

Self-contained (no CDN, works offline): it reads ``/v1/models`` for the labels, backbone and
held-out accuracy, and posts each image to ``/v1/models/{name}/predict`` as a multipart form.
"""

__all__ = ["PAGE"]

PAGE = """<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><meta name="viewport" content="width=device-width">
<title>graft serve</title>
<style>
body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:0;background:#f6f7f9;
color:#1d2330}
main{max-width:1000px;margin:0 auto;padding:20px 28px 48px}
h1{font-size:24px;margin:6px 0}.sub{color:#5b6473;margin:0 0 14px}
.info{background:#fff;border:1px solid #d9dde3;border-radius:8px;padding:10px 14px;margin:10px 0;
font-size:14px}
.info b{font-weight:600}.labels{color:#5b6473;font-size:12px;margin-top:6px;max-height:4.5em;
overflow:auto}
#drop{border:2px dashed #9aa4b2;border-radius:10px;padding:28px;text-align:center;background:#fff;
cursor:pointer;margin:14px 0}#drop.over{background:#eaf2ff;border-color:#3b7ddd}
.results{display:flex;flex-wrap:wrap;gap:14px}
.card{background:#fff;border:1px solid #d9dde3;border-radius:8px;padding:10px;width:300px}
.card img{width:100%;height:200px;object-fit:contain;background:#eef1f5;border-radius:4px}
.name{font-size:12px;color:#5b6473;margin:6px 0;overflow:hidden;text-overflow:ellipsis;
white-space:nowrap}
.top{font-size:18px;font-weight:600;margin:4px 0 8px}
.row{display:flex;align-items:center;gap:6px;font-size:13px;margin:3px 0}
.row .l{width:90px;overflow:hidden;text-overflow:ellipsis;white-space:nowrap}
.bar{flex:1;background:#eef1f5;border-radius:3px;height:12px}
.bar div{background:#3b7ddd;height:12px;border-radius:3px}
.row .s{width:48px;text-align:right;font-variant-numeric:tabular-nums}
.error{color:#b3261e;font-size:13px}
select,input{font:inherit}
</style></head>
<body><main>
<h1>graft serve</h1>
<p class="sub">Drop images to classify them with a served model. Nothing leaves this server.</p>
<label>Model <select id="model"></select></label>
<label style="margin-left:14px">Top <input id="topk" type="number" min="1" value="5"
 style="width:4em"></label>
<div class="info" id="info">Loading models&hellip;</div>
<div id="drop">Drop images here, or <u>pick files</u>
<input id="file" type="file" accept="image/*" multiple hidden></div>
<div class="results" id="results"></div>
</main>
<script>
const $ = (id) => document.getElementById(id);
let models = {};
function el(tag, cls, text) {
  const e = document.createElement(tag);
  if (cls) e.className = cls;
  if (text !== undefined) e.textContent = text;
  return e;
}
function showInfo() {
  const m = models[$("model").value];
  const info = $("info");
  info.textContent = "";
  if (!m) { info.textContent = "No model."; return; }
  const line = el("div");
  const acc = (m.accuracy === null || m.accuracy === undefined) ? "unknown"
    : (100 * m.accuracy).toFixed(1) + " % on " + m.n_test + " held-out images";
  line.append(el("b", "", m.name), " \\u2014 backbone " + (m.backbone || "?") + ", head " +
    (m.head || "?") + ", held-out accuracy " + acc + (m.ready ? "" : " (loading)"));
  info.append(line);
  if (m.labels) info.append(el("div", "labels", m.labels.length + " classes: " +
    m.labels.join(", ")));
}
async function loadModels() {
  try {
    const r = await fetch("/v1/models");
    const data = await r.json();
    $("model").textContent = "";
    for (const m of data.models) {
      models[m.name] = m;
      const o = el("option", "", m.name); o.value = m.name; $("model").append(o);
    }
    showInfo();
  } catch (e) { $("info").textContent = "Cannot list the models: " + e; }
}
async function classify(file) {
  const card = el("div", "card");
  const img = el("img"); img.src = URL.createObjectURL(file); img.alt = file.name;
  const status = el("div", "top", "\\u2026");
  card.append(img, el("div", "name", file.name), status);
  $("results").prepend(card);
  const form = new FormData(); form.append("file", file, file.name);
  const k = Math.max(1, parseInt($("topk").value || "5", 10));
  const name = encodeURIComponent($("model").value);
  try {
    const r = await fetch("/v1/models/" + name + "/predict?top_k=" + k,
                          {method: "POST", body: form});
    const data = await r.json();
    if (!r.ok) { status.textContent = ""; card.append(el("div", "error", data.error)); return; }
    const ranked = data.predictions[0];
    status.textContent = ranked[0].label;
    status.dataset.label = ranked[0].label;
    for (const p of ranked) {
      const row = el("div", "row");
      const bar = el("div", "bar"); const fill = el("div");
      fill.style.width = (100 * p.score).toFixed(1) + "%"; bar.append(fill);
      row.append(el("span", "l", p.label), bar, el("span", "s", (100 * p.score).toFixed(1) + "%"));
      card.append(row);
    }
    card.dataset.done = "1";
  } catch (e) { status.textContent = ""; card.append(el("div", "error", String(e))); }
}
function handle(files) { for (const f of files) classify(f); }
$("model").addEventListener("change", showInfo);
$("drop").addEventListener("click", () => $("file").click());
$("file").addEventListener("change", (e) => { handle(e.target.files); e.target.value = ""; });
$("drop").addEventListener("dragover", (e) => { e.preventDefault(); $("drop").classList.add("over"); });
$("drop").addEventListener("dragleave", () => $("drop").classList.remove("over"));
$("drop").addEventListener("drop", (e) => {
  e.preventDefault(); $("drop").classList.remove("over"); handle(e.dataTransfer.files);
});
loadModels();
</script></body></html>
"""
