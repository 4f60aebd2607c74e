"""`agnews-lora tune TUNE_YAML`: a budget-aware hyperparameter search on Optuna.

One study lives in a database (default: ``<study dir>/study.db``, SQLite; any Optuna RDB URL such
as ``postgresql://...`` lets workers on several machines share it).  Each trial is an ordinary run
directory ``<study dir>/trial-NNNN``; a layout over the budget is recorded without training; bad
trials are pruned at the loop's evaluations (``train(on_eval=...)``); a killed worker's trial is
failed by Optuna's heartbeat and retried (from its checkpoint when it has one).  Reports: see
tune_report.py.  Format and behaviour: docs/tuning.md.
"""

from __future__ import annotations

import json
import logging
import math
import sys
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .errors import TrainingInterrupted, UserError
from .sweep_report import table
from .tune_report import StudyView, write_study_reports
from .tune_space import TuneSpec, load_tune

log = logging.getLogger(__name__)


class TrialFailed(Exception):
    """A trial's training failed; Optuna records it as FAIL and the study goes on."""


def _optuna():
    try:
        import optuna
    except ImportError:
        raise UserError('`agnews-lora tune` needs Optuna: pip install -e ".[tune]"') from None
    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    return optuna


# ---------------------------------------------------------------------------------------------
# storage, sampler, pruner, study


def storage_url(spec: TuneSpec) -> str:
    return spec.storage or f"sqlite:///{(spec.output_dir / 'study.db').resolve()}"


def make_storage(spec: TuneSpec):
    """RDB storage with a heartbeat: a dead worker's trial is failed and retried (2 retries)."""
    _optuna()
    from optuna.storages import RDBStorage, RetryHeartbeatStaleTrialCallback

    url = storage_url(spec)
    kwargs = (
        {"connect_args": {"timeout": 60}} if url.startswith("sqlite") else {"pool_pre_ping": True}
    )
    for attempt in range(3):  # workers starting together on a new database race to create tables
        try:
            return RDBStorage(
                url,
                engine_kwargs=kwargs,
                heartbeat_interval=spec.heartbeat_seconds,
                grace_period=2 * spec.heartbeat_seconds,
                heartbeat_stale_trial_callback=RetryHeartbeatStaleTrialCallback(max_retry=2),
            )
        except (ImportError, ModuleNotFoundError) as e:
            raise UserError(
                f"storage '{_safe(url)}' needs a database driver ({e}); for PostgreSQL: "
                f'pip install -e ".[tune]"'
            ) from None
        except Exception as e:  # noqa: BLE001 - bad URL, server unreachable, foreign database
            racing = "already exists" in str(e) or "UniqueViolation" in str(e)
            if racing and attempt < 2:
                time.sleep(1 + attempt)
                continue
            first = str(e).splitlines()[0] if str(e) else type(e).__name__
            msg = f"cannot open the study storage '{_safe(url)}': {first[:200]}"
            raise UserError(msg) from None


def _safe(url: str) -> str:
    """The URL without a password."""
    head, sep, tail = url.partition("@")
    if not sep or "://" not in head:
        return url
    scheme, _, creds = head.partition("://")
    return f"{scheme}://{creds.split(':')[0]}:***@{tail}" if ":" in creds else url


def make_sampler(spec: TuneSpec):
    optuna = _optuna()
    if spec.sampler == "grid":
        return optuna.samplers.GridSampler(spec.grid(), seed=spec.seed)
    if spec.sampler == "random":
        return optuna.samplers.RandomSampler(seed=spec.seed)
    if spec.sampler == "nsga2":
        return optuna.samplers.NSGAIISampler(seed=spec.seed)
    return optuna.samplers.TPESampler(seed=spec.seed, multivariate=True, n_startup_trials=4)


def make_pruner(spec: TuneSpec):
    """Median or Hyperband at the loop's evaluations (Optuna prunes single objectives only)."""
    optuna = _optuna()
    name, options = (
        (spec.pruner, {})
        if isinstance(spec.pruner, str)
        else (spec.pruner["name"], {k: v for k, v in spec.pruner.items() if k != "name"})
    )
    if name == "none" or len(spec.directions) > 1:
        return optuna.pruners.NopPruner()
    try:
        if name == "hyperband":
            return optuna.pruners.HyperbandPruner(
                **{"min_resource": 1, "reduction_factor": 3, **options}
            )
        return optuna.pruners.MedianPruner(
            **{"n_startup_trials": 2, "n_warmup_steps": 0, **options}
        )
    except TypeError as e:
        raise UserError(f"pruner {name}: {e}") from None


def open_study(spec: TuneSpec):
    optuna = _optuna()
    spec.output_dir.mkdir(parents=True, exist_ok=True)
    storage = make_storage(spec)
    study = optuna.create_study(
        storage=storage,
        study_name=spec.study_name,
        directions=list(spec.directions),
        sampler=make_sampler(spec),
        pruner=make_pruner(spec),
        load_if_exists=True,
    )
    if tuple(d.name.lower() for d in study.directions) != spec.directions:
        raise UserError(
            f"study '{spec.study_name}' in {_safe(storage_url(spec))} was created with another "
            f"objective; use another study_name (or output directory)"
        )
    return study


# ---------------------------------------------------------------------------------------------
# one trial


@dataclass
class Objective:
    spec: TuneSpec
    study: Any
    progress: bool = False
    trained: list[str] = field(default_factory=list)  # run dirs trained by this worker (tests)

    def __call__(self, trial) -> Any:
        optuna = _optuna()
        from . import checkpoint as ckpt
        from .budget import check_budget
        from .training import train
        from .tune_space import _plan_counts

        inherited = trial.user_attrs.get(
            "run_dir"
        )  # a retried trial carries its predecessor's run dir
        sets, labels = self.spec.suggest(trial)
        trial.set_user_attr("sets", json.loads(json.dumps(sets, default=str)))
        trial.set_user_attr("labels", labels)
        cfg = self.spec.config(sets)
        cfg.output_dir, cfg.run_name = str(self.spec.output_dir), f"trial-{trial.number:04d}"
        counts = _plan_counts(cfg)
        for k in ("trainable", "lora", "head"):
            trial.set_user_attr(f"{k}_params", getattr(counts, k))
        try:
            check_budget(counts, cfg.budget.max_trainable_params)
        except UserError as e:  # never trained: recorded as pruned with its exact count
            trial.set_user_attr("status", "over_budget")
            trial.set_user_attr("error", str(e))
            log.info(
                "trial %d: over budget (%s trainable), not trained",
                trial.number,
                f"{counts.trainable:,}",
            )
            raise optuna.TrialPruned(str(e)) from None
        run_dir, resume = Path(cfg.output_dir) / cfg.run_name, None
        if inherited and _resumable(Path(inherited), cfg, ckpt):
            run_dir, resume = Path(inherited), Path(inherited)
        trial.set_user_attr("run_dir", str(run_dir))
        trial.set_user_attr("status", "running")
        single = len(self.spec.directions) == 1

        def on_eval(step: int, metrics: dict) -> None:
            trial.set_user_attr("last_val_accuracy", metrics["accuracy"])
            if single:
                trial.report(metrics["accuracy"], step)
                if trial.should_prune():
                    raise optuna.TrialPruned(
                        f"val accuracy {metrics['accuracy']:.4f} at step {step}"
                    )

        log.info(
            "trial %d: %s (%s trainable)%s",
            trial.number,
            ", ".join(f"{k}={v}" for k, v in labels.items()),
            f"{counts.trainable:,}",
            f", resuming {run_dir}" if resume else "",
        )
        self.trained.append(str(run_dir))
        try:
            run = train(
                None if resume else cfg, resume=resume, progress=self.progress, on_eval=on_eval
            )
        except optuna.TrialPruned:
            trial.set_user_attr("status", "pruned")
            log.info("trial %d: pruned", trial.number)
            raise
        except (
            TrainingInterrupted
        ):  # a checkpoint was saved: queue the same trial to resume it, then stop
            trial.set_user_attr("status", "interrupted")
            self.study.add_trial(
                optuna.trial.create_trial(
                    state=optuna.trial.TrialState.WAITING,
                    params=trial.params,
                    distributions=trial.distributions,
                    user_attrs={"run_dir": str(run_dir)},
                    system_attrs={"failed_trial": trial.number},
                )
            )
            raise
        except KeyboardInterrupt:
            raise
        except Exception as e:  # noqa: BLE001 - one trial's failure must not end the study
            msg = (
                str(e)
                if isinstance(e, UserError)
                else f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"
            )
            trial.set_user_attr("status", "failed")
            trial.set_user_attr("error", msg)
            log.warning("trial %d failed: %s", trial.number, msg)
            raise TrialFailed(msg) from e
        s = run.summary
        trial.set_user_attr("status", "resumed" if resume else "ok")
        trial.set_user_attr(
            "summary",
            {
                "val_accuracy": s["best"]["val_accuracy"],
                "val_macro_f1": s["best"].get("val_macro_f1"),
                "best_step": s["best"]["step"],
                "steps": s["steps"],
                "train_seconds": s["timings"]["train_seconds"],
            },
        )
        acc = s["best"]["val_accuracy"]
        log.info("trial %d: val accuracy %.4f", trial.number, acc)
        if self.spec.objective == "accuracy":
            return acc
        return acc, counts.trainable if self.spec.objective == "accuracy,params" else s["timings"][
            "train_seconds"
        ]


def _resumable(run_dir: Path, cfg, ckpt) -> bool:
    from .sweep import _same_config

    if (run_dir / "summary.json").exists() or ckpt.latest_checkpoint(
        run_dir / "checkpoints"
    ) is None:
        return False
    return _same_config(run_dir, cfg)  # output_dir and run_name aside


# ---------------------------------------------------------------------------------------------
# running


def _counts(study) -> tuple[int, int]:
    """(trials that count towards n_trials: finished, pruned or running; waiting retries)."""
    from optuna.trial import TrialState

    trials = study.get_trials(deepcopy=False)
    done = sum(
        t.state in (TrialState.COMPLETE, TrialState.PRUNED, TrialState.RUNNING) for t in trials
    )
    return done, sum(t.state == TrialState.WAITING for t in trials)


def run_study(spec: TuneSpec, progress: bool = False) -> tuple[Any, Objective]:
    """Run this worker's share: until the study has n_trials trials (all workers), or timeout."""
    optuna = _optuna()
    if spec.n_trials is None and spec.sampler != "grid" and spec.timeout is None:
        raise UserError(
            "give n_trials (tune file or --n-trials) or a timeout; the search has no natural end"
        )
    study = open_study(spec)
    objective = Objective(spec, study, progress)
    optuna.storages.fail_stale_trials(study)  # a dead worker's trial: failed, and queued again
    goal = spec.n_trials or (
        math.prod(len(v) for v in spec.grid().values()) if spec.sampler == "grid" else None
    )
    done, waiting = _counts(study)
    log.info(
        "study %s: %d trials so far (%d counted, %d queued) -> %s",
        spec.study_name,
        len(study.trials),
        done,
        waiting,
        spec.output_dir,
    )

    def finished(study) -> bool:  # all workers together; queued retries run first
        d, w = _counts(study)
        return goal is not None and d >= goal and not w

    def stop_when_finished(study, trial) -> None:
        if finished(study):
            study.stop()

    if not finished(study):
        study.optimize(
            objective,
            timeout=spec.timeout,
            catch=(TrialFailed,),
            callbacks=[stop_when_finished],
            gc_after_trial=True,
        )
    return study, objective


# ---------------------------------------------------------------------------------------------
# CLI


def cmd_tune(args) -> int:
    spec = load_tune(
        args.tune_file, args.output_dir, args.storage, args.n_trials, args.timeout, args.set
    )
    if spec.layouts.dropped:
        log.info("over budget in every layout, not searched: %s", ", ".join(spec.layouts.dropped))
    log.info(
        "%d of %d layouts fit the budget of %s",
        len(spec.layouts.fitting()),
        len(spec.layouts.counts),
        f"{spec.layouts.budget:,}",
    )
    code = 0
    try:
        study, _ = run_study(spec, progress=not args.no_progress)
    except TrainingInterrupted as e:
        print(
            f"stopped: {e}; rerun the same command to continue "
            "(the trial resumes from its checkpoint)",
            file=sys.stderr,
        )
        study, code = open_study(spec), 128 + int(e.signum)
    rows, best = write_study_reports(spec, study)
    out = spec.output_dir
    view = StudyView(spec.path, spec.base_config, spec.overrides, out, spec.keys(), [])
    print(
        "\n"
        + "\n".join(table(view, rows))
        + f"\n\nstudy          {spec.study_name} in {_safe(storage_url(spec))}"
        f"\nwritten        {out / 'summary.csv'}  {out / 'pareto.png'}  {out / 'summary.md'}"
        + (f"\nbest config    {best}" if best else ""),
        flush=True,
    )
    return code
