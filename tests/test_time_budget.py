"""train.time_budget: parsing, the steps that fit, a schedule ending on time, resume, too short."""

import json

import pytest
from conftest import tiny_overrides
from helpers import set_args
from safetensors.torch import load_file

from agnews_lora import time_budget as tb
from agnews_lora.cli import main
from agnews_lora.config import load_config
from agnews_lora.errors import UserError
from agnews_lora.runs import read_metrics
from agnews_lora.training import setup, train

PACE = tb.Pace(seconds_per_step=0.5, timed_steps=16, eval_seconds=2.0, export_seconds=5.0)


@pytest.mark.parametrize(
    "text, seconds",
    [
        ("20m", 1200),
        ("90s", 90),
        ("1h", 3600),
        ("1h30m", 5400),
        ("1.5h", 5400),
        ("2 min", 120),
        (20, 1200),
        ("20", 1200),
        (0.5, 30),
    ],
)
def test_durations_parse(text, seconds):
    assert tb.parse_duration(text) == pytest.approx(seconds)


@pytest.mark.parametrize("text", ["abc", "20x", "m", "-5m", "0", "0s", "1m1m", "h1", "", True, [1]])
def test_bad_durations_are_one_line_errors(text):
    with pytest.raises(UserError, match="train.time_budget must be a duration"):
        tb.parse_duration(text)


def test_bad_budget_on_the_command_line_is_one_line_exit_2(tmp_path, capsys):
    args = ["--set", "train.time_budget=soon", "--set", f"output_dir={tmp_path}"]
    assert main(["train", *args]) == 2
    err = capsys.readouterr().err.strip()
    assert "train.time_budget" in err and len(err.splitlines()) == 1 and not any(tmp_path.iterdir())


@pytest.mark.parametrize("left", [10.0, 60.0, 600.0, 7200.0])
@pytest.mark.parametrize("eval_every", [1, 7, 500])
def test_the_chosen_steps_are_the_most_that_fit(left, eval_every):
    n = tb.steps_that_fit(left, PACE, eval_every)
    usable = left * (1 - tb.MARGIN)
    if n == 0:
        assert tb.run_seconds(1, PACE, eval_every) > usable
    else:
        more = tb.run_seconds(n + 1, PACE, eval_every)
        assert tb.run_seconds(n, PACE, eval_every) <= usable < more


def _budgeted(monkeypatch, pace=PACE, start=100.0, after=110.0):
    """Deterministic planning: a fixed pace, and a clock at ``start`` in setup, ``after`` later."""
    calls = iter([start])
    monkeypatch.setattr(tb, "clock", lambda: next(calls, after))
    monkeypatch.setattr(tb, "measure_pace", lambda loop, load_s: pace)


def _cfg(tiny_model_dir, data_dir, tmp_path, **extra):
    sets = tiny_overrides(tiny_model_dir, data_dir / "train.csv", tmp_path, **extra)
    return load_config(None, sets)


def test_budget_fixes_the_steps_and_the_schedule_ends_on_time(
    tiny_model_dir, data_dir, tmp_path, monkeypatch
):
    _budgeted(monkeypatch)
    cfg = _cfg(
        tiny_model_dir,
        data_dir,
        tmp_path,
        **{
            "train.time_budget": "1m",
            "run_name": "b",
            "train.eval_every": 10,
            "train.log_every": 7,
        },
    )
    run = train(cfg, progress=False)
    expected = tb.steps_that_fit(60.0 - 10.0, PACE, 10)
    assert 0 < expected < 120  # the budget, not max_steps, decides
    s = run.summary
    assert s["steps"] == s["total_steps"] == expected == s["schedule"]["total_steps"]
    assert s["schedule"]["configured_steps"] == 120 and s["schedule"]["time_budget_seconds"] == 60
    assert tb.run_seconds(expected, PACE, 10) + 10.0 <= 60.0
    train_rows = [r for r in read_metrics(run.dir / "metrics.jsonl") if r["split"] == "train"]
    # linear: decayed to 0 exactly at the last step
    assert train_rows[-1]["step"] == expected and train_rows[-1]["lr"] == 0.0
    assert max(r["lr"] for r in train_rows) > 0


def test_the_pace_trial_leaves_no_trace(tiny_model_dir, data_dir, tmp_path, capsys, caplog):
    """A budget that fits every step: the same weights as the run without a budget."""
    import logging

    caplog.set_level(logging.INFO, logger="agnews_lora")
    extra = {"train.max_steps": 30, "train.eval_every": 15, "train.precision": "fp32"}
    a = train(_cfg(tiny_model_dir, data_dir, tmp_path, run_name="plain", **extra), progress=False)
    assert "estimated training time" in caplog.text and "evaluations not included" in caplog.text
    caplog.clear()
    b = train(
        _cfg(
            tiny_model_dir,
            data_dir,
            tmp_path,
            run_name="budget",
            **extra,
            **{"train.time_budget": "1h"},
        ),
        progress=False,
    )
    assert "estimated training time" in caplog.text and "all 30 configured steps fit" in caplog.text
    assert b.summary["steps"] == 30 and b.summary["schedule"]["pace"]["timed_steps"] == 16
    wa, wb = (
        load_file(a.dir / "adapter/adapter_model.safetensors"),
        load_file(b.dir / "adapter/adapter_model.safetensors"),
    )
    assert wa.keys() == wb.keys() and all((wa[k] == wb[k]).all() for k in wa)
    assert read_metrics(a.dir / "metrics.jsonl")[-1] == read_metrics(b.dir / "metrics.jsonl")[-1]


def test_resume_keeps_the_recorded_total(tiny_model_dir, data_dir, tmp_path, monkeypatch):
    _budgeted(monkeypatch)
    cfg = _cfg(
        tiny_model_dir,
        data_dir,
        tmp_path,
        **{
            "train.time_budget": "1m",
            "run_name": "r",
            "train.eval_every": 20,
            "train.checkpoint_every": 10,
        },
    )
    expected = tb.steps_that_fit(50.0, PACE, 20)
    assert expected > 20
    loop = setup(cfg, progress=False)

    def stop(step, metrics):
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        loop.fit(on_eval=stop)
    # a resume on a far slower machine: nothing is measured again, the recorded total stands
    monkeypatch.setattr(tb, "measure_pace", lambda *a: pytest.fail("re-measured on resume"))
    run = train(None, resume=loop.run_dir, progress=False)
    assert run.summary["resumed_from_step"] == 10
    assert run.summary["steps"] == run.summary["total_steps"] == expected
    summary = json.loads((loop.run_dir / "summary.json").read_text())
    assert summary["schedule"]["total_steps"] == expected
    last = [r for r in read_metrics(loop.run_dir / "metrics.jsonl") if r["split"] == "train"][-1]
    assert last["step"] == expected and last["lr"] == 0.0


def test_a_budget_too_short_is_one_line_exit_2_and_leaves_nothing(
    tiny_model_dir, data_dir, tmp_path, monkeypatch, capsys
):
    _budgeted(monkeypatch, pace=tb.Pace(30.0, 16, 2.0, 5.0))
    sets = tiny_overrides(
        tiny_model_dir,
        data_dir / "train.csv",
        tmp_path,
        **{"train.time_budget": "30s", "run_name": "short"},
    )
    args = set_args(sets)
    assert main(["train", "--no-progress", *args]) == 2
    err = capsys.readouterr().err
    last = err.strip().splitlines()[-1]  # after the info lines: the one error line
    assert "too short" in last and "at least" in last and "Traceback" not in err
    assert [line for line in err.splitlines() if "time_budget" in line] == [last]
    assert not (tmp_path / "runs" / "short").exists()
    # already over before the trial: said without measuring
    _budgeted(monkeypatch, start=0.0, after=45.0)
    monkeypatch.setattr(tb, "measure_pace", lambda *a: pytest.fail("measured"))
    assert main(["train", "--no-progress", *args]) == 2
    assert "alone took" in capsys.readouterr().err
    assert not (tmp_path / "runs" / "short").exists()


def _fake_clock(monkeypatch, step_seconds, eval_seconds=PACE.eval_seconds):
    """The trial says `PACE`; the budget's clock then moves only with real steps and evaluations."""
    from agnews_lora.loop import Loop

    spent = [0.0]

    def costs(method, seconds):
        def timed(self, *args, **kwargs):
            spent[0] += seconds
            return method(self, *args, **kwargs)

        return timed

    monkeypatch.setattr(Loop, "train_step", costs(Loop.train_step, step_seconds))
    monkeypatch.setattr(Loop, "evaluate", costs(Loop.evaluate, eval_seconds))
    monkeypatch.setattr(tb, "clock", lambda: 100.0 + spent[0])
    monkeypatch.setattr(tb, "measure_pace", lambda loop, load_s: PACE)


def _budget_cfg(tiny_model_dir, data_dir, tmp_path, name, **extra):
    sets = {"train.time_budget": "1m", "run_name": name, "train.eval_every": 10, **extra}
    return _cfg(tiny_model_dir, data_dir, tmp_path, **sets)


def _replans(run):
    return [(r["at_step"], r["total_steps"]) for r in run.summary["schedule"].get("replans", [])]


def _lrs(run):
    return [(r["step"], r["lr"]) for r in read_metrics(run.dir / "metrics.jsonl") if "lr" in r]


def test_steps_slower_than_the_trial_shorten_the_run_to_end_within_the_budget(
    tiny_model_dir, data_dir, tmp_path, monkeypatch, caplog
):
    """Real steps take twice the trial's time: cut at an evaluation, the LR still decays to zero."""
    import logging

    caplog.set_level(logging.INFO, logger="agnews_lora")
    _fake_clock(monkeypatch, 1.0)
    run = train(_budget_cfg(tiny_model_dir, data_dir, tmp_path, "slow"), progress=False)
    s = run.summary
    assert s["schedule"]["total_steps"] == tb.steps_that_fit(60.0, PACE, 10) == 72
    # measured over steps 0-20 (at 10: too few steps): 24 s used (20 steps, 2 evaluations); the 52
    # steps left need 52 + 6 x 2 + 5 = 69 s more; 22 steps + 3 evaluations + export = 33 s end at 57,
    # the 5 % margin of the budget kept
    assert _replans(run) == [(20, 42)] and s["steps"] == s["total_steps"] == 42
    assert s["schedule"]["replans"][0]["seconds_per_step"] == 1.0
    assert tb.clock() == 100.0 + 42 * 1.0 + 5 * PACE.eval_seconds  # + export 5 = 57 s
    assert "too slow to finish 72 steps in 60 s; the run now ends at step 42" in caplog.text
    lrs = dict(_lrs(run))
    assert lrs[42] == 0.0 and all(lr > 0 for step, lr in lrs.items() if step < 42)


def test_steps_faster_than_the_trial_lengthen_the_run_up_to_the_configured_steps(
    tiny_model_dir, data_dir, tmp_path, monkeypatch
):
    _fake_clock(monkeypatch, 0.25)
    run = train(_budget_cfg(tiny_model_dir, data_dir, tmp_path, "fast"), progress=False)
    # at step 20, 9 s used: 92 more steps fit in 57 s -> 112 (of the 120 configured), then steady
    assert _replans(run) == [(20, 112)] and run.summary["steps"] == 112
    assert dict(_lrs(run))[112] == 0.0


def test_a_plan_shorter_than_eval_every_is_checked_between_evaluations(
    tiny_model_dir, data_dir, tmp_path, monkeypatch, caplog
):
    """No evaluation before the planned end: the pace is checked every quarter of the plan anyway,
    so steps twice the trial's time still end within the budget (they ran to 107 s of 60 before)."""
    import logging

    caplog.set_level(logging.INFO, logger="agnews_lora")
    _fake_clock(monkeypatch, 1.0)
    cfg = _budget_cfg(tiny_model_dir, data_dir, tmp_path, "short", **{"train.eval_every": 1000})
    run = train(cfg, progress=False)
    s = run.summary
    assert s["schedule"]["total_steps"] == tb.steps_that_fit(60.0, PACE, 1000) == 100
    # checked at step 25 (a quarter of 100): 25 s used; 25 more steps, the last evaluation (2 s)
    # and the export (5 s) end at 57 s, the 5 % margin kept
    assert _replans(run) == [(25, 50)] and s["steps"] == s["total_steps"] == 50
    assert tb.clock() == 100.0 + 50 * 1.0 + PACE.eval_seconds <= 100.0 + 60.0 - 5.0
    assert "too slow to finish 100 steps in 60 s; the run now ends at step 50" in caplog.text
    assert [
        r["step"] for r in read_metrics(run.dir / "metrics.jsonl") if r["split"] == "validation"
    ] == [50]


def test_a_pace_that_holds_is_never_replanned(tiny_model_dir, data_dir, tmp_path, monkeypatch):
    _fake_clock(monkeypatch, PACE.seconds_per_step)
    run = train(_budget_cfg(tiny_model_dir, data_dir, tmp_path, "steady"), progress=False)
    assert run.summary["steps"] == 72 and _replans(run) == []


def test_a_replanned_run_resumes_with_the_same_learning_rates(
    tiny_model_dir, data_dir, tmp_path, monkeypatch
):
    _fake_clock(monkeypatch, 1.0)
    whole = train(_budget_cfg(tiny_model_dir, data_dir, tmp_path, "whole"), progress=False)
    loop = setup(
        _budget_cfg(tiny_model_dir, data_dir, tmp_path, "cut", **{"train.checkpoint_every": 30}),
        progress=False,
    )

    def stop(step, metrics):  # after the re-plan at step 20 and the checkpoint at 30
        if step == 40:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        loop.fit(on_eval=stop)
    resumed = train(None, resume=loop.run_dir, progress=False)
    assert resumed.summary["resumed_from_step"] == 30
    assert _replans(resumed) == _replans(whole) == [(20, 42)]
    assert resumed.summary["steps"] == whole.summary["steps"] == 42
    assert _lrs(resumed) == _lrs(whole)
