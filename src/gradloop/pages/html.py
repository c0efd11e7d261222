"""The HTML of gradloop's self-contained pages (``gradloop report``, ``gradloop compare``).

    page(title, body)   the whole document: no scripts, no external references, so
                        the one file works alone (mailed, archived, a CI artefact)
    table, img          a table of escaped cells, an image from a data: URI
    data_uri            a PNG file or PNG bytes as a data: URI

Every value passes through :func:`escape` (``table`` escapes its cells): a run
folder may come from someone else. Nothing here imports TensorFlow.
"""

from __future__ import annotations

import base64
import html
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

STYLE = (
    "body{font-family:sans-serif;max-width:60em;margin:2em auto;color:#222}"
    "table{border-collapse:collapse;margin:1em 0}td,th{border:1px solid #ccc;padding:.2em .6em;text-align:right}"
    "th{background:#f3f3f3}img{display:block;max-width:100%}"
)


def page(title: str, body: Iterable[str], *, head: str = "") -> str:
    """The document around ``body`` (HTML strings, one per line); ``title`` is escaped here,
    ``head`` (extra ``<meta>`` lines) is put in as it is."""
    return (
        '<!DOCTYPE html>\n<html lang="en">\n<head>\n<meta charset="utf-8">\n'
        f"{head}<title>{escape(title)}</title>\n<style>{STYLE}</style>\n</head>\n<body>\n"
        + "\n".join(body)
        + "\n</body>\n</html>\n"
    )


def escape(value: Any) -> str:
    return html.escape(str(value))


def number(value: Any) -> str:
    """A float to 4 decimals, None as ``n/a``, anything else as its text."""
    return f"{value:.4f}" if isinstance(value, float) else ("n/a" if value is None else str(value))


def config_value(value: Any) -> str:
    """A config value as its flag takes it: a list as ``512,256,128``."""
    return ",".join(map(str, value)) if isinstance(value, list) else str(value)


def data_uri(png: Path | bytes) -> str:
    data = png if isinstance(png, bytes) else png.read_bytes()
    return "data:image/png;base64," + base64.b64encode(data).decode("ascii")


def img(uri: str, alt: str) -> str:
    return f'<img src="{uri}" alt="{escape(alt)}">'


def table(table_id: str, header: Sequence[Any] | None, rows: Iterable[Sequence[Any]]) -> str:
    head = "<tr>" + "".join(f"<th>{escape(h)}</th>" for h in header) + "</tr>\n" if header else ""
    lines = "\n".join("<tr>" + "".join(f"<td>{escape(v)}</td>" for v in row) + "</tr>" for row in rows)
    return f'<table id="{table_id}">\n{head}{lines}\n</table>'
