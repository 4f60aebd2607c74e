"""Resumable checkpoints: written atomically, verified on load, rotated.

A checkpoint is a directory ``checkpoints/step-0000123/`` holding ``state.pt`` (trainable
weights, optimizer, scheduler, best-so-far weights, counters) and ``meta.json`` (step and
the SHA-256 of ``state.pt``).  It is assembled under a temporary name and renamed into
place, so a process killed mid-write leaves only a ``.tmp-*`` directory, which is ignored.
A truncated or edited ``state.pt`` fails its checksum and is reported, never loaded.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
from pathlib import Path

import torch

from .errors import UserError

FORMAT = 1
_NAME = re.compile(r"^step-(\d{7,})$")


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def save_checkpoint(root: Path, step: int, state: dict, keep: int, protect_step: int | None = None) -> Path:
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    final = root / f"step-{step:07d}"
    tmp = root / f".tmp-step-{step:07d}-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    torch.save({"format": FORMAT, **state}, tmp / "state.pt")
    meta = {"format": FORMAT, "step": step, "sha256": _sha256(tmp / "state.pt")}
    (tmp / "meta.json").write_text(json.dumps(meta), encoding="utf-8")
    for f in (tmp / "state.pt", tmp / "meta.json"):
        with f.open("rb") as fh:
            os.fsync(fh.fileno())
    if final.exists():
        shutil.rmtree(final)
    os.replace(tmp, final)
    _rotate(root, keep, protect_step)
    return final


def _rotate(root: Path, keep: int, protect_step: int | None) -> None:
    ckpts = list_checkpoints(root)
    for step, path in ckpts[:-keep] if keep > 0 else ckpts:
        if step != protect_step:
            shutil.rmtree(path, ignore_errors=True)
    for junk in root.glob(".tmp-step-*"):
        shutil.rmtree(junk, ignore_errors=True)


def list_checkpoints(root: Path) -> list[tuple[int, Path]]:
    root = Path(root)
    if not root.is_dir():
        return []
    found = []
    for p in root.iterdir():
        m = _NAME.match(p.name)
        if m and p.is_dir():
            found.append((int(m.group(1)), p))
    return sorted(found)


def load_checkpoint(path: Path) -> dict:
    """Load and verify one checkpoint directory; any damage is a UserError naming the file."""
    path = Path(path)
    meta_path, state_path = path / "meta.json", path / "state.pt"
    if not meta_path.is_file() or not state_path.is_file():
        raise UserError(f"checkpoint '{path}' is incomplete (missing meta.json or state.pt); delete it to resume from an earlier one")
    try:
        meta = json.loads(meta_path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise UserError(f"checkpoint '{path}' is corrupt (meta.json unreadable); delete it to resume from an earlier one") from None
    if meta.get("format") != FORMAT:
        raise UserError(f"checkpoint '{path}' has format {meta.get('format')!r}, this version reads {FORMAT}")
    if _sha256(state_path) != meta.get("sha256"):
        raise UserError(f"checkpoint '{path}' is corrupt (state.pt fails its checksum: truncated or modified); delete it to resume from an earlier one")
    try:
        return torch.load(state_path, map_location="cpu", weights_only=False)
    except Exception as e:
        raise UserError(f"checkpoint '{path}' cannot be read ({type(e).__name__}); delete it to resume from an earlier one") from None


def latest_checkpoint(root: Path) -> Path | None:
    ckpts = list_checkpoints(root)
    return ckpts[-1][1] if ckpts else None
