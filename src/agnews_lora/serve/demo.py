"""The demo page at ``GET /``: paste a text, see the label and the probabilities.

One HTML page with inline CSS and JS (no CDN) that calls ``/v1/info`` and ``/v1/classify`` on the
same server.  ``/?text=...`` fills the box and classifies it on load (shareable links, and the
headless-browser test).  Results are written with ``textContent``: no model or user text is ever
parsed as HTML.
"""

DEMO_HTML = """<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width,initial-scale=1">
<title>agnews-lora demo</title>
<style>
body{font-family:system-ui,-apple-system,"Segoe UI",Roboto,"DejaVu Sans",sans-serif;margin:0;
  background:#f4f6f8;color:#1d232b}
main{max-width:760px;margin:0 auto;padding:28px 20px}
h1{font-size:1.5em;margin:0 0 4px}#about{color:#5b6775;margin:0 0 18px;font-size:.92em}
textarea{width:100%;box-sizing:border-box;min-height:120px;font:inherit;padding:10px;
  border:1px solid #c9d2dc;border-radius:8px}
button{margin-top:10px;font:inherit;font-weight:600;padding:8px 20px;border:0;border-radius:6px;
  background:#1f5f99;color:#fff;cursor:pointer}button:disabled{background:#8aa6c1}
#result{margin-top:22px;background:#fff;border:1px solid #dde3ea;border-radius:8px;
  padding:16px 20px}
#label{font-size:1.6em;font-weight:700;color:#17406b}#note{color:#8a5a00;font-size:.9em}
.row{display:flex;align-items:center;gap:10px;margin:6px 0}.name{width:90px}
.bar{flex:1;background:#e8edf2;border-radius:4px;height:16px;overflow:hidden}
.fill{height:100%;background:#3b82c4}.pct{width:64px;text-align:right;
  font-variant-numeric:tabular-nums}
#error{color:#a4262c;margin-top:14px}
</style></head>
<body><main>
<h1>News topic classifier</h1>
<p id="about">loading model info…</p>
<form id="form">
<textarea id="text" name="text" placeholder="Paste a headline or a short news text"
  required></textarea>
<button id="go" type="submit">Classify</button>
</form>
<div id="error" role="alert"></div>
<div id="result" hidden>
  <div>Label: <span id="label"></span> <span id="note"></span></div>
  <div id="probs"></div>
</div>
</main>
<script>
"use strict";
const $ = (id) => document.getElementById(id);
function showError(msg) { $("error").textContent = msg; }
function show(r) {
  $("label").textContent = r.label_name;
  $("note").textContent = r.truncated ? "(text truncated to the model's max length)" : "";
  const probs = $("probs");
  probs.replaceChildren();
  const items = Object.entries(r.probabilities).sort((a, b) => b[1] - a[1]);
  for (const [name, p] of items) {
    const row = document.createElement("div"); row.className = "row";
    const n = document.createElement("span"); n.className = "name"; n.textContent = name;
    const bar = document.createElement("div"); bar.className = "bar";
    const fill = document.createElement("div"); fill.className = "fill";
    fill.style.width = (100 * p).toFixed(1) + "%"; bar.appendChild(fill);
    const pct = document.createElement("span"); pct.className = "pct";
    pct.textContent = (100 * p).toFixed(1) + " %";
    row.append(n, bar, pct); probs.appendChild(row);
  }
  $("result").hidden = false;
}
async function classify() {
  const text = $("text").value;
  showError("");
  if (!text.trim()) { showError("Type or paste a text first."); return; }
  $("go").disabled = true;
  try {
    const resp = await fetch("v1/classify", {method: "POST",
      headers: {"Content-Type": "application/json"}, body: JSON.stringify({text})});
    const body = await resp.json();
    if (!resp.ok) { showError(body.error ? body.error.message : "HTTP " + resp.status); return; }
    show(body.results[0]);
  } catch (e) {
    showError("The server did not answer: " + e);
  } finally {
    $("go").disabled = false;
  }
}
$("form").addEventListener("submit", (ev) => { ev.preventDefault(); classify(); });
fetch("v1/info").then((r) => r.json()).then((i) => {
  $("about").textContent = "Run " + i.run + " · base model " + i.base_model + " · labels: " +
    i.labels.join(", ") + " · " + i.backend + " " + i.precision;
}).catch(() => { $("about").textContent = ""; });
const given = new URLSearchParams(location.search).get("text");
if (given) { $("text").value = given; classify(); }
</script>
</body></html>
"""
