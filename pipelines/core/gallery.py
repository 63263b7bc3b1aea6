"""Static HTML contact sheets (no server): thumbnails are embedded as data URIs, so the page works from S3 too."""
from __future__ import annotations

import base64
import hashlib
import html
import io
import logging
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


_CSS = """
body{font-family:system-ui,sans-serif;margin:16px;background:#fafafa;color:#222}
h1{font-size:20px} .meta{color:#555;font-size:13px;margin-bottom:12px}
.grid{display:flex;flex-wrap:wrap;gap:12px}
.card{background:#fff;border:1px solid #ddd;border-radius:6px;padding:8px;font-size:12px}
.card.error{border-color:#d33}
.row{display:flex;gap:4px} figure{margin:0;text-align:center} figcaption{color:#666}
.ph{width:120px;height:160px;background:#eee;display:flex;align-items:center;justify-content:center;color:#999}
.badge{display:inline-block;padding:1px 6px;border-radius:8px;background:#2a7;color:#fff}
.badge.error{background:#d33} .err{color:#b00;max-width:380px;word-break:break-word}
"""


def render_html(title: str, items: Sequence[GalleryItem], meta: str = "") -> str:
    cards = []
    for item in items:
        figs = []
        for label, uri in item.images:
            data = _thumbnail(uri)
            body = f'<img src="{data}" height="{THUMB_HEIGHT}" alt="{html.escape(label)}">' if data else '<div class="ph">n/a</div>'
            figs.append(f"<figure>{body}<figcaption>{html.escape(label)}</figcaption></figure>")
        status_cls = "error" if item.status == "error" else ""
        note = f'<div class="err">{html.escape(item.note)}</div>' if item.note else ""
        cards.append(
            f'<div class="card {status_cls}"><div class="row">{"".join(figs)}</div>'
            f'<div>{html.escape(item.caption)} <span class="badge {status_cls}">{html.escape(item.status)}</span></div>{note}</div>'
        )
    return (
        f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title><style>{_CSS}</style></head>"
        f"<body><h1>{html.escape(title)}</h1><div class='meta'>{html.escape(meta)}</div>"
        f"<div class='grid'>{''.join(cards)}</div></body></html>"
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
