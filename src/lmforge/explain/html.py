"""The explanation as one self-contained HTML page: inline CSS and JS, images as data: URIs, nothing fetched.

Tokens are coloured by attribution (green: raised the explained logit, red: lowered it); the attention section shows
one layer's grid of heads as a PNG, or one head as a table drawn from the weights embedded in the page.
"""

from __future__ import annotations

import base64
import html
import json
from pathlib import Path

import torch

from lmforge.atomic import write_text_atomic
from lmforge.explain.explanation import Explanation

MAX_HEAD_TABLE = 128  # longer texts get only the per-layer PNGs: T x T cells per head would swamp the page

STYLE = """
body { font-family: system-ui, sans-serif; margin: 2em auto; max-width: 70em; color: #222; }
.tokens { line-height: 2.2; font-family: ui-monospace, monospace; }
.tok { padding: 0.15em 0.1em; border-radius: 3px; white-space: pre; }
.legend { display: flex; align-items: center; gap: 0.5em; font-size: 0.85em; margin: 1em 0; }
.bar { width: 16em; height: 0.9em; background: linear-gradient(to right, rgb(215,25,28), #fff, rgb(26,150,65)); }
table.probs td { padding: 0.1em 0.6em; }
.p { display: inline-block; height: 0.8em; background: #4a7bd0; }
table.head { border-collapse: collapse; font-size: 0.7em; }
table.head td, table.head th { border: 1px solid #eee; min-width: 1.6em; height: 1.6em; text-align: center; }
table.head th { font-weight: normal; white-space: pre; }
img { max-width: 100%; }
"""

SCRIPT = """
const data = JSON.parse(document.getElementById("attention").textContent);
function show() {
  const layer = +document.getElementById("layer").value, head = document.getElementById("head").value;
  document.querySelectorAll("img.layer").forEach((img, i) => img.hidden = head !== "all" || i !== layer);
  const table = document.getElementById("head-table");
  table.replaceChildren();
  if (head === "all" || !data.weights) return;
  const w = data.weights[layer][+head], tokens = data.tokens;
  const top = table.insertRow();
  top.appendChild(document.createElement("th"));
  tokens.forEach(t => { const th = document.createElement("th"); th.textContent = t; top.appendChild(th); });
  w.forEach((row, q) => {
    const tr = table.insertRow();
    const th = document.createElement("th"); th.textContent = tokens[q]; tr.appendChild(th);
    row.forEach((v, k) => {
      const td = tr.insertCell();
      td.style.background = `rgba(68, 1, 84, ${v / 100})`;
      td.title = `${tokens[q]} -> ${tokens[k]}: ${(v / 100).toFixed(2)}`;
    });
  });
}
document.getElementById("layer").onchange = show;
document.getElementById("head").onchange = show;
show();
"""


def _colour(score: float, scale: float) -> str:
    s = score / scale if scale > 0 else 0.0
    rgb = "26,150,65" if s >= 0 else "215,25,28"
    return f"rgba({rgb},{min(abs(s), 1.0):.3f})"


def _png(path: Path) -> str:
    return "data:image/png;base64," + base64.b64encode(Path(path).read_bytes()).decode("ascii")


def _options(values) -> str:
    return "".join(f'<option value="{v}">{html.escape(str(label))}</option>' for v, label in values)


def write_html(e: Explanation, maps: list[torch.Tensor], baseline: str, steps: int, path: Path) -> Path:
    """Writes the page atomically; token text is escaped everywhere, the embedded JSON cannot close its script."""
    scale = max((abs(a) for a in e.attributions), default=0.0)
    tokens = "".join(
        f'<span class="tok" style="background:{_colour(a, scale)}" title="{a:+.4f}">{html.escape(t)}</span>'
        for t, a in zip(e.tokens, e.attributions, strict=True)
    )
    probs = "".join(
        f"<tr><td>{html.escape(label)}</td><td>{p:.4f}</td>"
        f'<td><span class="p" style="width:{100 * p:.1f}px"></span></td></tr>'
        for label, p in sorted(e.probabilities.items(), key=lambda item: -item[1])
    )
    where = "" if e.position is None else f" at token {e.position} (<b>{html.escape(e.tokens[e.position])}</b>)"
    n_head = maps[0].size(0) if maps else 0
    weights = None
    if len(e.tokens) <= MAX_HEAD_TABLE:  # integer percents keep the page small
        weights = [(w * 100).round().int().tolist() for w in maps]
    data = json.dumps({"tokens": e.tokens, "weights": weights}).replace("<", "\\u003c")
    layers = "".join(f'<img class="layer" src="{_png(p)}" alt="attention, layer {i}">' for i, p in
                     enumerate(e.pngs[1:]))  # fmt: skip
    page = f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>lmforge explain: {html.escape(e.predicted)}</title>
<style>{STYLE}</style></head><body>
<h1>Predicted: {html.escape(e.predicted)} ({e.probabilities[e.predicted]:.4f})</h1>
<table class="probs">{probs}</table>
<h2>Tokens by attribution</h2>
<p>Integrated gradients of the logit of <b>{html.escape(e.target)}</b>{where}: {steps} steps from a {baseline}
baseline; the attributions add up to the logit's change from the baseline, up to a delta of {e.delta:.2e}.</p>
<div class="tokens">{tokens}</div>
<div class="legend"><span>-{scale:.3g} (lowered)</span><div class="bar"></div><span>+{scale:.3g} (raised)</span></div>
<img src="{_png(e.pngs[0])}" alt="attributions per token">
<h2>Attention</h2>
<p>Row: the token attending (query); column: the token attended to (key). Each row sums to 1.</p>
<label>layer <select id="layer">{_options((i, i) for i in range(len(maps)))}</select></label>
<label>head <select id="head">{_options([("all", "all heads")] + ([(h, h) for h in range(n_head)] if weights else []))}
</select></label>
<div>{layers}</div>
<table class="head" id="head-table"></table>
<script type="application/json" id="attention">{data}</script>
<script>{SCRIPT}</script>
</body></html>
"""
    write_text_atomic(path, page)
    return path
