"""Static HTML contact sheets (no server): thumbnails are embedded as data URIs, so the page works from S3 too.
Reviewers filter the cards by status and error reason and sort them worst score first (inline JS, no requests)."""
from __future__ import annotations

import base64
import hashlib
import html
import io
import logging
import math
import re
from collections import Counter
from dataclasses import dataclass, field
from typing import Callable, Sequence

from pipelines.core import storage

log = logging.getLogger(__name__)

THUMB_HEIGHT = 160


@dataclass
class GalleryItem:
    caption: str
    status: str  # "ok" | "error" | free text shown as a badge
    images: Sequence[tuple[str, str | None]]  # (label, uri or None)
    note: str = ""
    # numeric values (e.g. {"ssim": 0.91, "lpips": 0.12}) become data-<key> attributes and "worst <key> first" sorts
    extra: dict = field(default_factory=dict)


def _thumbnail(uri: str | None, height: int = THUMB_HEIGHT) -> str | None:
    """A base64 JPEG data URI of the image at ``uri`` scaled to ``height``; None when it cannot be read."""
    if not uri:
        return None
    from PIL import Image

    from pfafn import imageio

    try:
        img = imageio.decode_image(storage.read_bytes(uri, max_bytes=64 * 1024 * 1024))
    except Exception as exc:  # the gallery shows a placeholder; the reason is in the results rows
        log.debug("gallery: cannot read %s: %s", uri, exc)
        return None
    pil = Image.fromarray(img)
    scale = height / pil.height
    pil = pil.resize((max(1, round(pil.width * scale)), height), Image.Resampling.LANCZOS)
    buf = io.BytesIO()
    pil.save(buf, format="JPEG", quality=85)
    return "data:image/jpeg;base64," + base64.b64encode(buf.getvalue()).decode()


# Scores where a lower value is the better one (LPIPS is a distance, Zhang et al. 2018, "The Unreasonable
# Effectiveness of Deep Features as a Perceptual Metric"; so is FID). Every other numeric ``extra`` (SSIM, PSNR) is
# better when higher. "Worst first" sorts by this.
LOWER_IS_BETTER = frozenset({"lpips", "fid", "loss"})

_CSS = """
body{font-family:system-ui,sans-serif;margin:16px;background:#fafafa;color:#222}
h1{font-size:20px} .meta{color:#555;font-size:13px;margin-bottom:12px}
.controls{display:flex;flex-wrap:wrap;gap:12px;align-items:center;font-size:13px;margin-bottom:12px}
.grid{display:flex;flex-wrap:wrap;gap:12px}
.card{background:#fff;border:1px solid #ddd;border-radius:6px;padding:8px;font-size:12px}
.card.error{border-color:#d33}
.row{display:flex;gap:4px} figure{margin:0;text-align:center} figcaption{color:#666}
.ph{width:120px;height:160px;background:#eee;display:flex;align-items:center;justify-content:center;color:#999}
.badge{display:inline-block;padding:1px 6px;border-radius:8px;background:#2a7;color:#fff}
.badge.error{background:#d33} .err{color:#b00;max-width:380px;word-break:break-word}
table.listed{border-collapse:collapse;margin-top:16px;font-size:12px;background:#fff}
table.listed td,table.listed th{border:1px solid #ddd;padding:3px 6px;text-align:left}
[hidden]{display:none !important}
"""

# The filters and "worst first" sorting: plain inline JS over the elements that carry ``data-status`` (cards and
# table rows), no external request, so the page works as a static file from S3 or file://. Sorting reorders each
# container's children; "page order" restores ``data-index``; elements without the score keep page order, last.
_JS = """
(function(){
  var items=Array.prototype.slice.call(document.querySelectorAll('[data-status]'));
  var st=document.getElementById('f-status'), rs=document.getElementById('f-reason');
  var so=document.getElementById('f-sort'), count=document.getElementById('f-count');
  function num(el,k){var v=el.getAttribute('data-'+k);return v===null||v===''?NaN:parseFloat(v);}
  function apply(){
    var s=st.value, r=rs?rs.value:'', shown=0;
    items.forEach(function(el){
      var on=(!s||el.getAttribute('data-status')===s)&&(!r||el.getAttribute('data-reason')===r);
      el.hidden=!on; if(on){shown++;}
    });
    var parts=(so&&so.value?so.value:'index:asc').split(':'), k=parts[0], sign=parts[1]==='desc'?-1:1;
    var parents=[];
    items.forEach(function(el){if(parents.indexOf(el.parentNode)<0){parents.push(el.parentNode);}});
    parents.forEach(function(p){
      var kids=items.filter(function(el){return el.parentNode===p;});
      kids.sort(function(a,b){
        var x=num(a,k), y=num(b,k);
        if(isNaN(x)!==isNaN(y)){return isNaN(x)?1:-1;}
        if(!isNaN(x)&&x!==y){return sign*(x-y);}
        return num(a,'index')-num(b,'index');
      });
      kids.forEach(function(el){p.appendChild(el);});
    });
    count.textContent=shown+' of '+items.length+' shown';
  }
  [st,rs,so].forEach(function(c){if(c){c.addEventListener('change',apply);}});
  apply();
})();
"""


def error_reason(status: str, note: str) -> str:
    """What the reason filter groups by: an error's prefix up to ':' (the input or step that failed, e.g. ``garment
    image`` — docs/data-contracts.md, error rows); "" for rows that are not errors."""
    if status != "error":
        return ""
    return (note.split(":", 1)[0].strip() or "(no reason)")[:80] if note else "(no reason)"


def _scores(item: GalleryItem) -> dict[str, float]:
    """The numeric, finite ``extra`` values (the sortable scores), keyed by safe attribute names."""
    out = {}
    for key, value in item.extra.items():
        name = re.sub(r"[^a-z0-9_-]", "", str(key).lower())
        if name and isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value):
            out[name] = float(value)
    return out


def _data_attrs(item: GalleryItem, index: int) -> str:
    """``data-status``, ``data-reason``, ``data-index`` and one ``data-<key>`` per score: what the filters read."""
    attrs = {"status": item.status, "reason": error_reason(item.status, item.note), "index": str(index)}
    attrs.update({k: repr(v) for k, v in _scores(item).items() if k not in attrs})
    return " ".join(f'data-{k}="{html.escape(v)}"' for k, v in attrs.items() if v != "")


def _select(ident: str, label: str, options: Sequence[tuple[str, str]]) -> str:
    opts = "".join(f'<option value="{html.escape(v)}">{html.escape(t)}</option>' for v, t in options)
    return f'<label>{html.escape(label)} <select id="{ident}">{opts}</select></label>'


def _controls(items: Sequence[GalleryItem]) -> str:
    """Status and error-reason selects built from the values present (with counts), and "worst <score> first" for
    each score some item has."""
    statuses = Counter(i.status for i in items)
    reasons = Counter(r for r in (error_reason(i.status, i.note) for i in items) if r)
    keys = sorted({k for i in items for k in _scores(i)})
    parts = [_select("f-status", "status", [("", f"all ({len(items)})")]
                     + [(s, f"{s} ({n})") for s, n in sorted(statuses.items())])]
    if reasons:
        parts.append(_select("f-reason", "error reason", [("", "all reasons")]
                             + [(r, f"{r} ({n})") for r, n in sorted(reasons.items())]))
    if keys:
        parts.append(_select("f-sort", "sort", [("index:asc", "page order")]
                             + [(f"{k}:{'desc' if k in LOWER_IS_BETTER else 'asc'}", f"worst {k.upper()} first")
                                for k in keys]))
    return f'<div class="controls">{"".join(parts)}<span id="f-count"></span></div>'


def _card(item: GalleryItem, index: int) -> str:
    figs = []
    for label, uri in item.images:
        data = _thumbnail(uri)
        body = f'<img src="{data}" height="{THUMB_HEIGHT}" alt="{html.escape(label)}">' if data else '<div class="ph">n/a</div>'
        figs.append(f"<figure>{body}<figcaption>{html.escape(label)}</figcaption></figure>")
    status_cls = "error" if item.status == "error" else ""
    note = f'<div class="err">{html.escape(item.note)}</div>' if item.note else ""
    badge = f'<span class="badge {status_cls}">{html.escape(item.status)}</span>'
    return (f'<div class="card {status_cls}" {_data_attrs(item, index)}><div class="row">{"".join(figs)}</div>'
            f'<div><span class="caption">{html.escape(item.caption)}</span> {badge}</div>{note}</div>')


def _listed_table(items: Sequence[GalleryItem], start: int) -> str:
    """Items without pictures (e.g. a report's error list) as table rows, filtered by the same controls."""
    if not items:
        return ""
    rows = "".join(f'<tr {_data_attrs(item, start + k)}><td class="caption">{html.escape(item.caption)}</td>'
                   f'<td>{html.escape(item.status)}</td><td class="err">{html.escape(item.note)}</td></tr>'
                   for k, item in enumerate(items))
    head = "<thead><tr><th>pair</th><th>status</th><th>reason</th></tr></thead>"
    return f'<table class="listed">{head}<tbody>{rows}</tbody></table>'


def render_html(title: str, items: Sequence[GalleryItem], meta: str = "", listed: Sequence[GalleryItem] = ()) -> str:
    """The page: filter/sort controls, one card per item, then ``listed`` items as table rows (no pictures)."""
    cards = [_card(item, k) for k, item in enumerate(items)]
    return (
        f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>"
        # an empty icon: browsers would otherwise request /favicon.ico (a 404 in the console when served from S3)
        f"<link rel='icon' href='data:,'><style>{_CSS}</style></head>"
        f"<body><h1>{html.escape(title)}</h1><div class='meta'>{html.escape(meta)}</div>"
        f"{_controls([*items, *listed])}<div class='grid'>{''.join(cards)}</div>{_listed_table(listed, len(items))}"
        f"<script>{_JS}</script></body></html>"
    )


def stable_sample(keys: Sequence[str], k: int, salt: str = "") -> list[int]:
    """Indices of a deterministic pseudo-random sample of ``k`` keys (same inputs → same sample)."""
    order = sorted(range(len(keys)), key=lambda i: hashlib.sha1(f"{salt}:{keys[i]}".encode()).hexdigest())
    return sorted(order[:k])


def write_html(uri: str, page: str) -> str:
    storage.write_bytes(uri, page.encode("utf-8"))
    return uri


@dataclass
class Sheet:
    """What a stage puts in its QA gallery and how to draw one row as a card. The rows are either ``sample(size,
    salt)`` — the stage picks them itself, for result sets too large to hold (:mod:`pipelines.core.parts`) — or
    ``rows`` (with a ``status``) and ``key``, sampled here by :func:`sample_errors_first`."""

    title: str
    meta: str
    card: Callable[[dict], GalleryItem]
    rows: Sequence[dict] = ()
    key: Callable[[dict], str] = str
    sample: Callable[[int, str], list[dict]] | None = None


def sample_errors_first(rows: Sequence[dict], key: Callable[[dict], str], size: int, salt: str = "") -> list[dict]:
    """Up to ``size`` rows: error rows first (a stable sample, at most a quarter of the sheet but at least one), then
    a stable sample of the ok rows — so a QA reader always sees failures without them crowding out the results."""
    errors = [r for r in rows if r["status"] != "ok"]
    oks = [r for r in rows if r["status"] == "ok"]
    n_err = min(len(errors), max(1, size // 4)) if errors else 0
    chosen = [errors[i] for i in stable_sample([key(r) for r in errors], n_err, salt)]
    return chosen + [oks[i] for i in stable_sample([key(r) for r in oks], size - len(chosen), salt)]


def write_gallery(output: str, run_id: str, sheet: Sheet, size: int, salt: str = "") -> str:
    """Render ``size`` cards of ``sheet`` to ``{output}/gallery/{run_id}.html`` and ``gallery/index.html`` (the
    latest run); returns the index's URI."""
    rows = sheet.sample(size, salt) if sheet.sample else sample_errors_first(sheet.rows, sheet.key, size, salt)
    items = [sheet.card(r) for r in rows]
    page = render_html(sheet.title, items, sheet.meta)
    write_html(storage.join_uri(output, "gallery", f"{run_id}.html"), page)
    return write_html(storage.join_uri(output, "gallery", "index.html"), page)
