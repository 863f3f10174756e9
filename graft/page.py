"""The HTML pieces graft's pages share (the training report, the data check): a stylesheet and
a table, with no plotting library behind them. A base module, so data and evaluation both reach it."""

from __future__ import annotations

import html
from collections.abc import Sequence
from typing import Any

__all__ = ["CSS", "table"]

CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:0;background:#f6f7f9;
color:#1d2330}
main{max-width:1100px;margin:0 auto;padding:24px 32px 48px}
h1{font-size:26px;margin:8px 0 4px}h2{font-size:19px;margin:32px 0 10px;border-bottom:1px solid
#d9dde3;padding-bottom:4px}
.sub{color:#5b6473;margin:0 0 16px}
.cards{display:flex;flex-wrap:wrap;gap:12px;margin:16px 0}
.card{background:#fff;border:1px solid #d9dde3;border-radius:8px;padding:10px 16px;min-width:120px}
.card .v{font-size:24px;font-weight:600}.card .k{color:#5b6473;font-size:12px}
table{border-collapse:collapse;background:#fff;font-size:13px;margin:6px 0}
th,td{border:1px solid #d9dde3;padding:4px 10px;text-align:right}
th{background:#eef1f5}td.l,th.l{text-align:left}
tr.low td{background:#fdecea}
figure{margin:10px 0;background:#fff;border:1px solid #d9dde3;border-radius:8px;padding:8px}
figure img{max-width:100%;height:auto;display:block;margin:0 auto}
figcaption{color:#5b6473;font-size:12px;margin-top:4px}
.row{display:flex;flex-wrap:wrap;gap:12px}.row figure{flex:1 1 420px}
code{background:#eef1f5;padding:1px 4px;border-radius:3px}
.thumbs{display:flex;flex-wrap:wrap;gap:6px;margin:4px 0 14px}
.thumbs figure{margin:0;padding:4px;flex:0 0 auto}.thumbs img{height:96px}
"""


def table(header: Sequence[str], rows: Sequence[Sequence[Any]], left: int = 1,
          classes: Sequence[str] | None = None) -> str:
    """An HTML table: the first ``left`` columns left-aligned, floats to 3 places, and a CSS
    class per row (``classes``) where given."""
    head = "".join(f'<th class="{"l" if i < left else ""}">{html.escape(str(h))}</th>'
                   for i, h in enumerate(header))
    body = []
    for r, row in enumerate(rows):
        cells = "".join(
            f'<td class="{"l" if i < left else ""}">'
            f'{html.escape(f"{v:.3f}" if isinstance(v, float) else str(v))}</td>'
            for i, v in enumerate(row))
        css = f' class="{classes[r]}"' if classes and classes[r] else ""
        body.append(f"<tr{css}>{cells}</tr>")
    return f"<table><tr>{head}</tr>{''.join(body)}</table>"
