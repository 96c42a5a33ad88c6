"""Prefect artifacts that render anywhere: images inline, links to servers, never a local path.

A Prefect artifact is shown by a browser that may run on another machine than the flow, so a
file path (``report/0_trajectories.png``, ``file:///...``) is a broken picture or a dead link.
``embed_images`` turns each local image into a ``data:`` URI; ``mlflow_run_url`` is the MLflow
run page when a tracking server is set (``http(s)://``), else None; ``local_targets`` finds what
is left (the tests fail on any).
"""

from __future__ import annotations

import base64
import mimetypes
import re
from pathlib import Path

IMAGE = re.compile(r"!\[(?P<alt>[^\]]*)\]\((?P<target>[^)\s]+)(?P<title>\s+\"[^\"]*\")?\)")
REMOTE = ("http://", "https://", "data:", "mailto:", "#")
MAX_INLINE_BYTES = 2_000_000  # a picture above this is linked (MLflow) or named, not inlined


def is_local(target: str) -> bool:
    """A link or image target that only this machine can open (a path, ``file:``)."""
    return not target.strip().lower().startswith(REMOTE)


def embed_images(markdown: str, base_dir: str | Path, fallback_url: str | None = None) -> str:
    """Each image whose target is a file under ``base_dir`` (relative or absolute) as a data URI.

    A missing file or one above ``MAX_INLINE_BYTES`` links to ``fallback_url/<name>`` when given
    (e.g. the MLflow artifact), else becomes its alt text and name in plain text."""
    base = Path(base_dir)

    def inline(m: re.Match) -> str:
        target = m["target"]
        if not is_local(target):
            return m[0]
        path = Path(target.removeprefix("file://"))
        path = path if path.is_absolute() else base / path
        if path.is_file() and path.stat().st_size <= MAX_INLINE_BYTES:
            mime = mimetypes.guess_type(path.name)[0] or "application/octet-stream"
            data = base64.b64encode(path.read_bytes()).decode("ascii")
            return f"![{m['alt']}](data:{mime};base64,{data})"
        if fallback_url:
            return f"[{m['alt']} ({path.name})]({fallback_url.rstrip('/')}/{path.name})"
        return f"*{m['alt']}: {path.name} (not inlined)*"

    return IMAGE.sub(inline, markdown)


def local_targets(markdown: str) -> list[str]:
    """The image and link targets of ``markdown`` that are local paths, as a Markdown renderer
    (markdown-it, CommonMark) sees them: inline links, images, reference links and raw HTML."""
    from markdown_it import MarkdownIt

    found: list[str] = []
    md = MarkdownIt("commonmark")
    md.validateLink = lambda url: True  # keep file: links (markdown-it drops them; other renderers do not)

    def walk(tokens):
        for tok in tokens:
            for attr in ("href", "src"):
                value = tok.attrGet(attr) if tok.attrs else None
                if value is not None and is_local(str(value)):
                    found.append(str(value))
            if tok.type in ("html_inline", "html_block"):
                found.extend(t for t in re.findall(r"""(?:src|href)\s*=\s*["']([^"']+)""", tok.content) if is_local(t))
            if tok.children:
                walk(tok.children)

    walk(md.parse(markdown))
    return found


def mlflow_run_url(run_id: str | None, data_root: str | None = None) -> str | None:
    """The MLflow UI page of ``run_id`` when the tracking URI is a server (http/https), else None."""
    if not run_id:
        return None
    from trajfm.registry.tracking import tracking_uri

    uri = tracking_uri(data_root)
    if not uri.startswith(("http://", "https://")):
        return None
    try:
        import mlflow

        experiment = mlflow.MlflowClient(tracking_uri=uri).get_run(run_id).info.experiment_id
    except Exception:  # the server went away: no link rather than a failed task
        return None
    return f"{uri.rstrip('/')}/#/experiments/{experiment}/runs/{run_id}"
