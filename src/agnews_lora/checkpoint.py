"""Resumable checkpoints: written atomically, verified on load, rotated; loading never runs code.

A checkpoint is a directory ``checkpoints/step-0000123/`` holding

- ``tensors.safetensors``: every tensor of the state (trainable weights, best-so-far weights,
  optimizer moments and step counts), keyed by its path in the state (``trainable/<name>``, ...);
- ``state.json``: everything else (counters, scheduler state, optimizer hyperparameters, metrics),
  with ``{"__tensor__": key}`` where a tensor stood;
- ``meta.json``: the format, the step and the SHA-256 of the two files above.

Neither file format can execute code when read (no pickle anywhere), so a checkpoint from someone
else is as safe to resume as a safetensors model.  The checksums are an integrity check (a truncated
or edited file is reported by name, never loaded), not a security one.  A checkpoint is assembled
under a temporary name and renamed into place, so a process killed mid-write leaves only a
``.tmp-*`` directory, which is ignored.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
from pathlib import Path

from .errors import UserError

FORMAT = 2  # 1: a pickled state.pt (refused: unpickling can run code)
TENSORS, STATE, META = "tensors.safetensors", "state.json", "meta.json"
_NAME = re.compile(r"^step-(\d{7,})$")


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


# -- a nested state <-> (JSON-able tree, flat tensor dict) -------------------------------------
def _split(obj, path: str, tensors: dict):
    import torch

    if isinstance(obj, torch.Tensor):
        tensors[path] = obj.detach().cpu().contiguous()
        return {"__tensor__": path}
    if isinstance(obj, dict):
        if all(isinstance(k, str) and not k.startswith("__") for k in obj):
            return {k: _split(v, f"{path}/{k}", tensors) for k, v in obj.items()}
        return {
            "__items__": [
                [_split(k, f"{path}/key{i}", tensors), _split(v, f"{path}/{k}", tensors)]
                for i, (k, v) in enumerate(obj.items())
            ]
        }
    if isinstance(obj, tuple):
        return {"__tuple__": [_split(v, f"{path}/{i}", tensors) for i, v in enumerate(obj)]}
    if isinstance(obj, list):
        return [_split(v, f"{path}/{i}", tensors) for i, v in enumerate(obj)]
    if obj is None or isinstance(obj, (bool, int, float, str)):
        return obj
    if hasattr(obj, "item") and getattr(obj, "shape", None) == ():  # a numpy scalar
        return obj.item()
    raise TypeError(
        f"checkpoint state at '{path}' holds a {type(obj).__name__}: neither JSON nor a tensor"
    )


def _join(obj, tensors: dict):
    if isinstance(obj, list):
        return [_join(v, tensors) for v in obj]
    if not isinstance(obj, dict):
        return obj
    if "__tensor__" in obj:
        return tensors[obj["__tensor__"]]  # KeyError: reported as unreadable
    if "__tuple__" in obj:
        return tuple(_join(v, tensors) for v in obj["__tuple__"])
    if "__items__" in obj:
        return {_join(k, tensors): _join(v, tensors) for k, v in obj["__items__"]}
    return {k: _join(v, tensors) for k, v in obj.items()}


# -- writing -----------------------------------------------------------------------------------
def save_checkpoint(
    root: Path, step: int, state: dict, keep: int, protect_step: int | None = None
) -> Path:
    from safetensors.torch import save_file

    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    final = root / f"step-{step:07d}"
    tmp = root / f".tmp-step-{step:07d}-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    tensors: dict = {}
    tree = _split(state, "", tensors)
    save_file(tensors, str(tmp / TENSORS), metadata={"format": str(FORMAT)})
    (tmp / STATE).write_text(json.dumps({"format": FORMAT, "state": tree}), encoding="utf-8")
    meta = {
        "format": FORMAT,
        "step": step,
        "sha256": {f: _sha256(tmp / f) for f in (TENSORS, STATE)},
    }
    (tmp / META).write_text(json.dumps(meta), encoding="utf-8")
    for f in (TENSORS, STATE, META):
        with (tmp / f).open("rb") as fh:
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


# -- reading -----------------------------------------------------------------------------------
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


def latest_checkpoint(root: Path) -> Path | None:
    ckpts = list_checkpoints(root)
    return ckpts[-1][1] if ckpts else None


def load_checkpoint(path: Path) -> dict:
    """Load and verify one checkpoint directory; any damage is a UserError naming the file.

    Reads only JSON and safetensors: nothing in a checkpoint can run code, whatever its checksums.
    """
    from safetensors.torch import load_file

    path = Path(path)
    earlier = "delete it to resume from an earlier one"
    meta_path = path / META
    if not meta_path.is_file():
        raise UserError(f"checkpoint '{path}' is incomplete (no {META}); {earlier}")
    try:
        meta = json.loads(meta_path.read_text(encoding="utf-8"))
        fmt = meta.get("format")
    except (json.JSONDecodeError, UnicodeDecodeError, AttributeError):
        raise UserError(f"checkpoint '{path}' is corrupt ({META} unreadable); {earlier}") from None
    if fmt != FORMAT:
        run_dir = path.parent.parent
        raise UserError(
            f"checkpoint '{path}' has format {fmt!r} (an older agnews-lora: a pickled state.pt); "
            f"this version reads only format {FORMAT} and cannot resume it: delete the run "
            f"(`rm -r {run_dir}`) and train again"
        )
    sums = meta.get("sha256")
    for f in (TENSORS, STATE):
        if not (path / f).is_file():
            raise UserError(f"checkpoint '{path}' is incomplete (no {f}); {earlier}")
        if not isinstance(sums, dict) or _sha256(path / f) != sums.get(f):
            why = f"{f} fails its checksum: truncated or modified"
            raise UserError(f"checkpoint '{path}' is corrupt ({why}); {earlier}")
    try:
        doc = json.loads((path / STATE).read_text(encoding="utf-8"))
        tensors = load_file(str(path / TENSORS))
        state = _join(doc["state"], tensors)
        if doc.get("format") != FORMAT or not isinstance(state, dict):
            raise ValueError("not a checkpoint state")
    except (
        Exception
    ) as e:  # JSON, safetensors and shape errors alike: the file is not what we wrote
        raise UserError(
            f"checkpoint '{path}' cannot be read ({type(e).__name__}); {earlier}"
        ) from None
    return state
