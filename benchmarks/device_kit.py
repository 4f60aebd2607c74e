"""Carry a model and the AG News rows to a lent GPU machine in pieces, and run the open recipes there.

The device tool carries at most 64 MiB per call (the working tree included) and keeps ignored
folders between calls while the machine is warm (about 30 s), so a base-size model (all-mpnet-base-v2:
438 MB in fp32) travels in pieces over several calls.

``pack`` (here) writes the weights in fp16 (219 MB for MPNet; ``agnews-lora`` always loads fp32
master weights, so the model differs from the original only by fp16 rounding of its frozen
weights), cuts them into pieces and groups them, with the model's small files, the AG News rows
and the wheels the device lacks (``datasets``, ``dill``, ``multiprocess``), into carry folders
``.kit/c1`` … ``.kit/cN`` of at most ``--carry-mib`` each, plus a manifest of sha256 sums. It prints
the device calls to make, back to back so the machine stays warm.

``run`` (there) verifies and joins the pieces into a model folder, installs the wheels, trains the
named recipes as parallel processes (a step on a GPU is bound by its host core, so one GPU serves
several), scores each on its held-out rows, and writes ``results.json`` and ``logs.tar.gz`` (summaries,
metrics, logs; no weights) to ``--out``. Runs still going at ``--deadline`` seconds are stopped and
reported as such, so a 10-minute device call always returns what finished.

    python benchmarks/device_kit.py pack                  # offline:all-mpnet-base-v2, ../shared rows
    python3 benchmarks/device_kit.py run --out $OUT       # on the device, after the last carry
    python benchmarks/device_kit.py run --list            # the recipes it knows
"""

from __future__ import annotations

import argparse
import hashlib
import json
import shutil
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from importlib import metadata
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))
sys.path.insert(0, str(ROOT / "benchmarks"))

from recipes import BASES  # noqa: E402

from agnews_lora.errors import UserError  # noqa: E402

MIB = 1 << 20
WEIGHTS = "model.safetensors"
DEVICE_WHEELS = ("datasets", "dill", "multiprocess")  # not in the device image (KINDS.md)
TREE_MARGIN = 4 * MIB  # the working tree travels with every carry
MANIFEST_ROOM = 16 * 1024  # c1's manifest is written last
TOP, OUTPROJ = BASES["mpnet"]["ours-top"][1], BASES["mpnet"]["ours-outproj"][1]
FULL = ["train.max_steps=3369"]  # the 3.67-epoch schedule of the 0.9355 rows (docs/accuracy.md)
# name -> (config, overrides); the order is the priority when --runs is not given
RUNS = {
    "seed-script-s42": ("offline-mpnet-seed-script.yaml", ["train.seed=42"]),  # its own 3 epochs
    "ours-outproj-full-s42": ("offline-mpnet.yaml", OUTPROJ + FULL + ["train.seed=42"]),
    "ours-top-full-s42": ("offline-mpnet.yaml", TOP + FULL + ["train.seed=42"]),
    "seed-script-s7": ("offline-mpnet-seed-script.yaml", ["train.seed=7"]),
    "ours-outproj-full-s7": ("offline-mpnet.yaml", OUTPROJ + FULL + ["train.seed=7"]),
    "ours-top-full-s7": ("offline-mpnet.yaml", TOP + FULL + ["train.seed=7"]),
    "ours-full-s42": ("offline-mpnet.yaml", FULL + ["train.seed=42"]),  # vs the CPU's 0.9368
}


class KitError(Exception):
    """One line for the user; exit 2."""


def sha256(path: Path) -> str:
    h = hashlib.sha256()  # hashlib.file_digest needs Python 3.11; the project supports 3.10
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(MIB), b""):
            h.update(block)
    return h.hexdigest()


@contextmanager
def _replacing(dest: Path) -> Iterator[Path]:
    """Build in ``dest``.tmp; on success it replaces ``dest``, on any failure it is removed."""
    tmp = dest.with_name(dest.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        yield tmp
        shutil.rmtree(dest, ignore_errors=True)
        tmp.rename(dest)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


# ---------------------------------------------------------------- pack (here)


def _weights_file(model_dir: Path, dtype: str, dest: Path) -> None:
    import torch
    from safetensors.torch import load_file, save_file

    src = model_dir / WEIGHTS
    if not src.is_file():
        raise KitError(f"{model_dir} has no single {WEIGHTS} (sharded weights are not supported)")
    tensors = load_file(src)
    target = {"fp16": torch.float16, "bf16": torch.bfloat16, "fp32": torch.float32}[dtype]
    out = {}
    for name, t in tensors.items():
        if t.is_floating_point():
            if dtype == "fp16" and t.abs().max().item() > torch.finfo(torch.float16).max:
                raise KitError(f"{name} exceeds the fp16 range; pack with --dtype bf16")
            t = t.to(target)
        out[name] = t.contiguous()
    save_file(out, dest, metadata={"format": "pt"})


def _wheels(dest: Path, names: list[str]) -> None:
    pins = [f"{n}=={metadata.version(n)}" for n in names]
    cmd = [sys.executable, "-m", "pip", "download", "-q", "--no-deps", "--only-binary=:all:"]
    cmd += ["--python-version", "3.12", "--implementation", "cp", "-d", str(dest)]
    for p in ("manylinux_2_28_x86_64", "manylinux_2_17_x86_64", "manylinux2014_x86_64", "any"):
        cmd += ["--platform", p]
    if subprocess.run(cmd + pins).returncode != 0:
        raise KitError(
            f"pip download of {' '.join(pins)} failed; rerun with --no-wheels and carry them yourself"
        )


def pack(
    model: str,
    data: Path,
    kit: Path,
    carry_bytes: int,
    dtype: str,
    wheels: list[str],
    tree_bytes: int = TREE_MARGIN,
) -> dict:
    from agnews_lora.modeling import resolve_model_path

    model_dir = Path(resolve_model_path(model))
    if not model_dir.is_dir():
        raise KitError(f"model '{model}' is not a local folder here (resolved to {model_dir})")
    if not data.is_file():
        raise KitError(f"AG News rows not found at {data}; pass --data")
    with _replacing(kit) as tmp:
        c1 = tmp / "c1"
        (c1 / "model").mkdir(parents=True)
        for f in model_dir.iterdir():  # config, tokenizer, vocab: everything but the weights
            if (
                f.is_file()
                and f.name != WEIGHTS
                and not f.name.startswith(".")
                and f.stat().st_size < 8 * MIB
            ):
                shutil.copy2(f, c1 / "model" / f.name)
        shutil.copy2(data, c1 / "train.csv")
        if wheels:
            _wheels(c1 / "wheels", wheels)
        weights = tmp / WEIGHTS
        _weights_file(model_dir, dtype, weights)
        budget = carry_bytes - tree_bytes
        used = sum(f.stat().st_size for f in c1.rglob("*") if f.is_file()) + MANIFEST_ROOM
        if used >= budget:
            raise KitError(f"the small files alone take {used / MIB:.1f} MiB; raise --carry-mib")
        pieces, offset, total, k = [], 0, weights.stat().st_size, 1
        with open(weights, "rb") as fh:
            while offset < total:
                room = budget - (used if k == 1 else 0)
                part = tmp / f"c{k}" / f"weights.{k:03d}"
                part.parent.mkdir(exist_ok=True)
                part.write_bytes(fh.read(room))
                size = part.stat().st_size
                pieces.append({"path": f"c{k}/{part.name}", "bytes": size, "sha256": sha256(part)})
                offset, k = offset + size, k + 1
        manifest = {
            "source": model,
            "dtype": dtype,
            "weights_sha256": sha256(weights),
            "weights_bytes": total,
            "pieces": pieces,
            "data_sha256": sha256(c1 / "train.csv"),
            "carries": [f"c{i}" for i in range(1, k)],
        }
        weights.unlink()
        (c1 / "manifest.json").write_text(json.dumps(manifest, indent=2))
    return manifest


# ---------------------------------------------------------------- unpack and run (there)


def unpack(kit: Path, dest: Path) -> Path:
    """Verify the pieces and join them into a model folder at ``dest`` (reused when complete)."""
    mf = kit / "c1" / "manifest.json"
    if not mf.is_file():
        raise KitError(f"{mf} is missing: carry {kit}/c1 first")
    manifest = json.loads(mf.read_text())
    done = dest / ".kit-weights-sha256"
    if done.is_file() and done.read_text() == manifest["weights_sha256"]:
        return dest
    for p in manifest["pieces"]:
        f = kit / p["path"]
        if not f.is_file():
            raise KitError(
                f"piece {f} is missing: carry {f.parent} (the machine keeps it while warm)"
            )
        if f.stat().st_size != p["bytes"] or sha256(f) != p["sha256"]:
            raise KitError(
                f"piece {f} is corrupt or from another pack (sha256 differs); carry it again"
            )
    with _replacing(dest) as tmp:
        shutil.copytree(kit / "c1" / "model", tmp)
        with open(tmp / WEIGHTS, "wb") as out:
            for p in manifest["pieces"]:
                with open(kit / p["path"], "rb") as fh:
                    shutil.copyfileobj(fh, out, MIB)
        if sha256(tmp / WEIGHTS) != manifest["weights_sha256"]:
            raise KitError("the joined weights do not match the manifest; pack again")
        (tmp / ".kit-weights-sha256").write_text(manifest["weights_sha256"])
    return dest


def _calls(kit: Path, manifest: dict) -> str:
    rel = kit.relative_to(ROOT) if kit.is_relative_to(ROOT) else kit
    lines = ["device calls, back to back (the machine keeps carried folders ~30 s after a call):"]
    for c in manifest["carries"][:-1]:
        lines.append(f'  run(carry=["{rel}/{c}"], command="ls {rel}")')
    lines.append(
        f'  run(carry=["{rel}/{manifest["carries"][-1]}"], timeout_s=600, command='
        f'"PYTHONUNBUFFERED=1 python3 benchmarks/device_runs.py --kit {rel} --out $OUT")'
    )
    return "\n".join(lines)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    sub = p.add_subparsers(dest="cmd", required=True)
    pk = sub.add_parser("pack", help="here: write the carry folders")
    pk.add_argument("--model", default="offline:all-mpnet-base-v2")
    pk.add_argument("--data", default=str(ROOT.parent / "shared" / "data" / "agnews" / "train.csv"))
    pk.add_argument("--kit", default=str(ROOT / ".kit"), help="ignored by git (.gitignore)")
    pk.add_argument("--carry-mib", type=float, default=60, help="per device call, tree included")
    pk.add_argument("--tree-mib", type=float, default=TREE_MARGIN / MIB, help="kept for the tree")
    pk.add_argument("--dtype", choices=["fp16", "bf16", "fp32"], default="fp16")
    pk.add_argument("--no-wheels", action="store_true", help=f"do not download {DEVICE_WHEELS}")
    up = sub.add_parser("unpack", help="there (device_runs.py does it): verify and join the pieces")
    up.add_argument("--kit", default=str(ROOT / ".kit"))
    up.add_argument("--dest", required=True)
    args = p.parse_args(argv)
    try:
        if args.cmd == "unpack":
            print(unpack(Path(args.kit), Path(args.dest)))
            return 0
        kit = Path(args.kit).resolve()
        wheels = [] if args.no_wheels else list(DEVICE_WHEELS)
        carry, tree = int(args.carry_mib * MIB), int(args.tree_mib * MIB)
        m = pack(args.model, Path(args.data), kit, carry, args.dtype, wheels, tree)
    except (KitError, UserError) as e:  # UserError: the model spec (agnews_lora's own message)
        print(f"error: {e}", file=sys.stderr)
        return 2
    for c in m["carries"]:
        size = sum(f.stat().st_size for f in (kit / c).rglob("*") if f.is_file())
        print(f"{kit / c}: {size / MIB:.1f} MiB")
    print(f"weights {m['weights_bytes'] / MIB:.1f} MiB in {m['dtype']}, {len(m['pieces'])} pieces")
    print(_calls(kit, m))
    return 0


if __name__ == "__main__":
    sys.exit(main())
