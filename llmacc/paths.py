"""Output paths checked before any work starts: a command that would run for minutes (or
hours) refuses at once, with one line, a place it could not write its result."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path


def check_output_file(path: str | Path, kind: str = "") -> Path:
    """Refuse an output file that cannot be written: a directory there, or a parent that
    does not exist or is not writable. ``kind`` names the file's type in the message."""
    out = Path(path)
    if out.is_dir():
        raise ValueError(f"{out}: output path is a directory; give a file name{kind}")
    parent = out.parent
    if not parent.is_dir():
        raise ValueError(f"{out}: output directory {parent} does not exist")
    if not os.access(parent, os.W_OK | os.X_OK) or (out.exists() and not os.access(out, os.W_OK)):
        raise ValueError(f"{out}: cannot write there (not writable)")
    return out


def check_output_dir(path: str | Path) -> Path:
    """Refuse an output directory that cannot be made or written: a file there, a file on
    the way to it, or a place where no directory can be created."""
    out = Path(path)
    if out.exists() and not out.is_dir():
        raise ValueError(f"{out}: output path exists and is a file")
    parent = out.parent.resolve()
    ancestor = next(p for p in (out.resolve(), parent, *parent.parents) if p.exists())
    if not ancestor.is_dir():
        raise ValueError(f"{out}: cannot create the output directory: {ancestor} is a file")
    try:  # the one test that holds everywhere (permissions, read-only mounts, /proc)
        os.rmdir(tempfile.mkdtemp(dir=ancestor, prefix=".llmacc-probe-"))
    except OSError as exc:
        raise ValueError(f"{out}: cannot create the output directory under {ancestor} "
                         f"({exc.strerror})") from None
    return out


def publish_table(markdown: str, path: str | Path | None) -> None:
    """Print a benchmark's table and, given ``path``, write it there too (folders made)."""
    if path:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        Path(path).write_text(markdown)
    print(markdown, end="")
