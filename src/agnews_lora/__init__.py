"""agnews-lora: LoRA fine-tuning of a transformer encoder for AG News under a parameter budget.

Library API (no CLI needed)::

    from agnews_lora import load_config, train, Predictor
    run = train(load_config("configs/offline-minilm.yaml"))
    Predictor.from_run(run.dir).predict(["Stocks rally as oil falls"])
"""

__version__ = "0.1.0"

from .config import Config, load_config  # noqa: E402
from .errors import UserError  # noqa: E402


def __getattr__(name):  # heavy imports (torch, transformers) only when used
    if name in ("train", "Run"):
        from . import training

        return getattr(training, name)
    if name == "Predictor":
        from .prediction import Predictor

        return Predictor
    if name == "evaluate_run":
        from .evaluation import evaluate_run

        return evaluate_run
    raise AttributeError(name)


__all__ = [
    "Config",
    "load_config",
    "UserError",
    "train",
    "Run",
    "Predictor",
    "evaluate_run",
    "__version__",
]
