"""`agnews-lora sweep`: child runs from a grid / list of overrides, resumable, with csv + plot + markdown."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
from conftest import tiny_overrides

from agnews_lora import sweep as sweep_mod
from agnews_lora.cli import main
from agnews_lora.errors import UserError
from agnews_lora.sweep import load_sweep
from agnews_lora.sweep_report import mark_pareto

# The test sweep file: two tiny children from the grid, one over budget, one with a target that does not exist.
TINY_SWEEP = """\
base_config: {base}
overrides:
{overrides}
grid:
  lora.r: [1, 4]
  lora.target_modules: {{qv: [query, value]}}
runs:
  - name: too-big
    set: {{budget.max_trainable_params: 1000}}
  - name: bad-target
    set:
      - "lora.target_modules=[nonexistent]"
"""


def _write_sweep(
    tmp: Path, model_dir: Path, train_csv: Path, body: str = TINY_SWEEP, **extra
) -> Path:
    sets = tiny_overrides(
        model_dir,
        train_csv,
        tmp,
        **{"train.max_steps": 20, "train.eval_every": 10, "train.precision": "fp32", **extra},
    )
    overrides = "\n".join(f"  - {json.dumps(s)}" for s in sets if not s.startswith("output_dir="))
    base = tmp / "base.yaml"
    base.write_text("lora:\n  alpha: 8\n", encoding="utf-8")
    path = tmp / "tiny-sweep.yaml"
    path.write_text(body.format(base=base.name, overrides=overrides), encoding="utf-8")
    return path


def _csv(path: Path) -> dict[str, dict]:
    with path.open(newline="", encoding="utf-8") as fh:
        return {r["name"]: r for r in csv.DictReader(fh)}


@pytest.fixture(scope="module")
def finished_sweep(tiny_model_dir, data_dir, tmp_path_factory):
    """The tiny sweep run once through the CLI: (sweep file, sweep dir, exit code)."""
    tmp = tmp_path_factory.mktemp("sweep")
    path = _write_sweep(tmp, tiny_model_dir, data_dir / "train.csv")
    out = tmp / "out"
    rc = main(["sweep", str(path), "--output-dir", str(out), "--no-progress"])
    return path, out, rc


def test_sweep_trains_children_and_writes_reports(finished_sweep):
    path, out, rc = finished_sweep
    assert rc == 1  # one child failed; the sweep went on and says so
    rows = _csv(out / "summary.csv")
    assert list(rows) == ["r1_qv", "r4_qv", "too-big", "bad-target"]
    assert {n: r["status"] for n, r in rows.items()} == {
        "r1_qv": "ok",
        "r4_qv": "ok",
        "too-big": "over_budget",
        "bad-target": "failed",
    }
    r1, r4 = rows["r1_qv"], rows["r4_qv"]
    assert (r1["lora.r"], r4["lora.r"], r1["lora.target_modules"]) == ("1", "4", "query,value")
    assert (
        int(r4["lora_params"]) == 4 * int(r1["lora_params"]) > 0
        and r1["head_params"] == r4["head_params"]
    )
    for r in (r1, r4):
        assert (
            0 <= float(r["val_accuracy"]) <= 1 and r["fits_budget"] == "True" and r["steps"] == "20"
        )
        run = Path(r["run_dir"])
        assert run.parent == out and (run / "summary.json").is_file() and (run / "adapter").is_dir()
        saved = json.loads((run / "summary.json").read_text())
        assert saved["params"]["trainable"] == int(r["trainable_params"])
    assert (
        "over budget" in rows["too-big"]["error"]
        and int(rows["too-big"]["trainable_params"]) > 1000
    )
    assert not (out / "too-big").exists() and not (out / "bad-target").exists()
    assert (
        "nonexistent" in rows["bad-target"]["error"]
        or "does not fit" in rows["bad-target"]["error"]
    )
    assert (out / "pareto.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    md = (out / "summary.md").read_text()
    assert "| `r4_qv` | ok | 4 | query,value |" in md and "over_budget" in md and "pareto.png" in md
    assert "★" in md and "Best validation accuracy within the budget" in md
    page = (out / "report.html").read_text()
    assert '<a href="r4_qv/report.html">r4_qv</a>' in page and "data:image/png;base64," in page


def test_child_config_is_base_plus_overrides_plus_child(finished_sweep):
    from agnews_lora.runs import load_run_config

    _, out, _ = finished_sweep
    cfg = load_run_config(out / "r4_qv")
    assert (cfg.lora.r, cfg.lora.target_modules, cfg.lora.alpha, cfg.train.max_steps) == (
        4,
        ["query", "value"],
        8.0,
        20,
    )
    assert (cfg.run_name, Path(cfg.output_dir)) == ("r4_qv", out)


def test_rerun_skips_finished_children_and_retrains_unfinished(finished_sweep, monkeypatch):
    path, out, _ = finished_sweep
    import agnews_lora.training as training

    trained = []
    real_train = training.train
    monkeypatch.setattr(
        training, "train", lambda cfg, **kw: trained.append(cfg.run_name) or real_train(cfg, **kw)
    )
    (out / "r1_qv" / "summary.json").unlink()  # as if r1 had crashed mid-run without a checkpoint
    before = (out / "r4_qv" / "summary.json").stat().st_mtime_ns
    assert main(["sweep", str(path), "--output-dir", str(out), "--no-progress"]) == 1
    assert trained == ["r1_qv"]
    rows = _csv(out / "summary.csv")
    assert (rows["r1_qv"]["status"], rows["r4_qv"]["status"]) == ("ok", "done")
    assert (out / "r4_qv" / "summary.json").stat().st_mtime_ns == before


def test_changed_sweep_marks_finished_children_stale(finished_sweep, tmp_path, monkeypatch):
    path, out, _ = finished_sweep
    import agnews_lora.training as training

    trained = []
    monkeypatch.setattr(training, "train", lambda cfg, **kw: trained.append(cfg.run_name))
    changed = (
        tmp_path / "changed.yaml"
    )  # one shared override differs from what the children were trained with
    changed.write_text(
        path.read_text()
        .replace("base_config: base.yaml", f"base_config: {path.parent / 'base.yaml'}")
        .replace('"train.max_steps=20"', '"train.max_steps=21"')
    )
    rows = sweep_mod.run_sweep(load_sweep(changed, out))
    assert trained == []
    assert {r["name"]: r["status"] for r in rows}["r4_qv"] == "stale"
    assert _csv(out / "summary.csv")["r4_qv"]["val_accuracy"] != ""


def test_child_names_and_output_dir(tmp_path):
    (tmp_path / "s.yaml").write_text(
        "output_dir: here\ngrid:\n  lora.r: [2, 8]\n  train.learning_rate: [0.001]\n"
        "runs:\n  - set: {lora.target_modules: [query, key]}\n  - name: mine\n    set: {lora.dropout: 0.0}\n"
    )
    sw = load_sweep(tmp_path / "s.yaml")
    assert [c.name for c in sw.children] == [
        "r2_learning_rate-0.001",
        "r8_learning_rate-0.001",
        "target_modules-query-key",
        "mine",
    ]
    assert (
        sw.output_dir == Path("here")
        and load_sweep(tmp_path / "s.yaml", tmp_path / "o").output_dir == tmp_path / "o"
    )
    assert sw.swept_keys == ["lora.r", "train.learning_rate", "lora.target_modules", "lora.dropout"]
    assert sw.children[1].config.lora.r == 8 and sw.children[1].config.train.learning_rate == 0.001
    assert sw.children[2].config.lora.target_modules == ["query", "key"]
    assert load_sweep(_plain(tmp_path, "runs: [{set: {lora.r: 3}}]")).output_dir == Path(
        "sweeps/plain"
    )


def _plain(tmp: Path, text: str) -> Path:
    path = tmp / "plain.yaml"
    path.write_text(text, encoding="utf-8")
    return path


@pytest.mark.parametrize(
    "text, message",
    [
        ("grid: [oops", "not valid YAML at line"),
        ("grids: {lora.r: [1]}", "unknown key 'grids' (did you mean 'grid'?)"),
        ("overrides: {lora.r: 4}", "defines no children"),
        (
            "grid: {lora.rank: [1, 2]}",
            "child 'rank-1': unknown config key 'lora.rank' (did you mean 'r'?)",
        ),
        ("grid: {lora.r: [1, x]}", "must be an integer"),
        ("grid: {lora.r: 4}", "must be a list of values"),
        ("overrides: [train.max_steps]\ngrid: {lora.r: [1]}", "expected KEY=VALUE"),
        ("grid: {output_dir: [a, b]}", "set by the sweep itself"),
        ("base_config: nowhere.yaml\ngrid: {lora.r: [1]}", "base_config 'nowhere.yaml' not found"),
        (
            "runs: [{name: a, set: {lora.r: 1}}, {name: a, set: {lora.r: 2}}]",
            "two children are named 'a'",
        ),
        ("runs: [{name: ../up, set: {lora.r: 1}}]", "must be letters, digits"),
        ("- just a list", "must be a mapping"),
    ],
)
def test_bad_sweep_files_are_user_errors(tmp_path, text, message):
    with pytest.raises(UserError, match=None) as e:
        load_sweep(_plain(tmp_path, text))
    assert message in str(e.value) and "\n" not in str(e.value)


def test_missing_sweep_file_exits_2(tmp_path, capsys):
    assert main(["sweep", str(tmp_path / "nope.yaml")]) == 2
    err = capsys.readouterr().err.strip()
    assert err == f"error: sweep file '{tmp_path / 'nope.yaml'}' not found"


def test_mark_pareto():
    rows = [
        dict(name=n, status=s, trainable_params=p, val_accuracy=a, fits_budget=f)
        for n, s, p, a, f in [
            ("small", "ok", 100, 0.80, True),
            ("mid", "done", 200, 0.85, True),
            ("worse", "ok", 300, 0.84, True),
            ("big", "ok", 400, 0.90, True),
            ("over", "ok", 900, 0.95, False),
            ("failed", "failed", 150, None, True),
            ("tie", "ok", 200, 0.85, True),
        ]
    ]
    mark_pareto(rows)
    assert [r["name"] for r in rows if r["pareto"]] == ["small", "mid", "big"]


def test_shipped_rank_sweep_is_valid(tmp_path, monkeypatch):
    root = Path(__file__).resolve().parents[1]
    monkeypatch.chdir(root)
    spec = root / "configs" / "sweeps" / "rank.yaml"
    if not (root / "configs" / "offline-minilm.yaml").is_file():
        pytest.skip("configs/offline-minilm.yaml (the base config) is not in the tree yet")
    sw = load_sweep(spec, tmp_path)
    assert len(sw.children) == 10 and sw.swept_keys == ["lora.r", "lora.target_modules"]
    assert sorted({c.config.lora.r for c in sw.children}) == [1, 2, 4, 8, 16]
    assert {tuple(c.config.lora.target_modules) for c in sw.children} == {
        ("query", "value"),
        ("query", "key", "value", "attention.output.dense"),
    }
    assert all(c.config.train.max_steps for c in sw.children)


def _stub_sweep(tmp: Path, model_dir: Path, train_csv: Path) -> Path:
    return _write_sweep(
        tmp,
        model_dir,
        train_csv,
        body="base_config: {base}\noverrides:\n{overrides}\ngrid:\n  lora.r: [1, 2]\n",
    )


def test_interrupted_sweep_writes_reports_and_says_how_to_continue(
    tiny_model_dir, data_dir, tmp_path, monkeypatch, capsys
):
    import agnews_lora.training as training
    from agnews_lora.errors import TrainingInterrupted

    def interrupted(cfg, **kw):
        raise TrainingInterrupted(Path(cfg.output_dir) / cfg.run_name, 3, 15)

    monkeypatch.setattr(training, "train", interrupted)
    path = _stub_sweep(tmp_path, tiny_model_dir, data_dir / "train.csv")
    assert main(["sweep", str(path), "--output-dir", str(tmp_path / "out")]) == 128 + 15
    assert "rerun `agnews-lora sweep" in capsys.readouterr().err
    assert [r["status"] for r in _csv(tmp_path / "out" / "summary.csv").values()] == [
        "pending",
        "pending",
    ]


def test_unfinished_child_with_checkpoint_resumes(tiny_model_dir, data_dir, tmp_path, monkeypatch):
    import agnews_lora.checkpoint as ckpt
    import agnews_lora.training as training
    from agnews_lora.config import save_config
    from agnews_lora.training import Run

    sw = load_sweep(_stub_sweep(tmp_path, tiny_model_dir, data_dir / "train.csv"), tmp_path / "out")
    first = sw.children[0]
    (tmp_path / "out" / first.name).mkdir(parents=True)
    save_config(first.config, tmp_path / "out" / first.name / "config.yaml")
    calls = []
    monkeypatch.setattr(ckpt, "latest_checkpoint", lambda root: root / "step-3")
    monkeypatch.setattr(
        training,
        "train",
        lambda cfg, resume=None, **kw: (
            calls.append((cfg and cfg.run_name, resume))
            or Run(
                Path(resume or "x"),
                first.config,
                {"params": {"trainable": 1}, "best": {"val_accuracy": 0.5}},
            )
        ),
    )
    rows = sweep_mod.run_sweep(sw)
    assert calls == [(None, tmp_path / "out" / first.name), ("r2", None)]
    assert [r["status"] for r in rows] == ["resumed", "ok"]
