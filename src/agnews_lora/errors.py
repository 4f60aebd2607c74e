"""The one exception type that means "the user gave us something we cannot use".

The CLI prints its message as a single line and exits with code 2; anything else
that escapes is an unexpected failure (exit code 1).
"""


class UserError(Exception):
    """Bad input, bad configuration or an exceeded budget: say what is wrong and what to do."""


class TrainingInterrupted(Exception):
    """SIGINT / SIGTERM arrived during training: a checkpoint was saved; ``signum`` tells which signal."""

    def __init__(self, run_dir, step: int, signum: int):
        super().__init__(
            f"interrupted by signal {signum} at step {step}; checkpoint saved in {run_dir}/checkpoints"
        )
        self.run_dir, self.step, self.signum = run_dir, step, signum
