"""`agnews-lora push`: upload a finished run's ``merged/`` or ``adapter/`` (with its model card)
to the Hugging Face Hub with huggingface_hub (`create_repo`, `upload_folder`).

``HF_TOKEN`` / ``hf auth login`` give the token, ``HF_ENDPOINT`` the Hub; every failure (offline,
no network, no token, refused) is a one-line `UserError`.
"""

from __future__ import annotations

import importlib
from pathlib import Path

from .errors import UserError
from .model_card import KINDS, refresh_cards
from .runs import load_finished_run


def _check_repo_id(repo_id: str) -> None:
    from huggingface_hub.utils import HFValidationError, validate_repo_id

    try:
        validate_repo_id(repo_id)
    except HFValidationError:
        raise UserError(
            f"--repo-id '{repo_id}' is not a Hub repo id; use NAME or USER/NAME "
            "(letters, digits, '-', '_', '.')"
        ) from None


def _transport_errors() -> tuple[type, ...]:
    """Connection / timeout errors of the HTTP client huggingface_hub uses (httpx2 in 2.x,
    httpx in 1.x, requests before)."""
    out: list[type] = [OSError]
    for module, name in (
        ("httpx2", "TransportError"),
        ("httpx", "TransportError"),
        ("requests", "ConnectionError"),
        ("requests", "Timeout"),
    ):
        try:
            out.append(getattr(importlib.import_module(module), name))
        except (ImportError, AttributeError):
            pass
    return tuple(out)


def _hub_error(e: Exception, repo_id: str, endpoint: str) -> UserError:
    """One line for what went wrong talking to the Hub."""
    from huggingface_hub.errors import HfHubHTTPError, OfflineModeIsEnabled

    if isinstance(e, OfflineModeIsEnabled):
        return UserError("push needs the Hugging Face Hub, but HF_HUB_OFFLINE is set; unset it")
    if isinstance(e, HfHubHTTPError):
        status = e.response.status_code if e.response is not None else None
        if status == 401:
            return UserError(
                f"the Hub at {endpoint} refused the token (401); log in again with "
                "`hf auth login` or set HF_TOKEN to a token with write access"
            )
        if status == 403:
            return UserError(
                f"the token may not write to '{repo_id}' (403); use a repo id in your "
                "namespace or a token with write access to it"
            )
        first = (str(e).splitlines() or [""])[0]
        return UserError(f"the Hub refused the upload to '{repo_id}': {first}")
    if isinstance(e, _transport_errors()):
        return UserError(
            f"cannot reach the Hugging Face Hub at {endpoint} ({type(e).__name__}); "
            "push needs network access (HF_ENDPOINT sets another Hub)"
        )
    raise e


def push_run(run_dir: str | Path, repo_id: str, kind: str = "merged", private: bool = False) -> str:
    """Upload ``RUN_DIR/<kind>/`` (``merged`` or ``adapter``, model card included) to the Hub
    repo ``repo_id`` (created if missing, ``private`` when new); return the commit URL."""
    if kind not in KINDS:
        raise UserError(f"kind must be one of {', '.join(KINDS)}, got '{kind}'")
    run_dir = Path(run_dir)
    cfg, summary = load_finished_run(run_dir)
    folder = run_dir / kind
    if not folder.is_dir() or not any(folder.glob("*.safetensors")):
        raise UserError(f"run '{run_dir}' has no {kind}/ model to push; train it again")
    _check_repo_id(repo_id)
    if not (folder / "README.md").is_file():  # a run from before model cards
        refresh_cards(run_dir, cfg, summary)

    from huggingface_hub import HfApi, constants, get_token

    endpoint = constants.ENDPOINT
    if constants.HF_HUB_OFFLINE:
        raise UserError("push needs the Hugging Face Hub, but HF_HUB_OFFLINE is set; unset it")
    if not get_token():
        raise UserError(
            "push needs a Hugging Face token with write access: run `hf auth login` or set HF_TOKEN"
        )
    api = HfApi()
    try:
        api.create_repo(repo_id, private=private, exist_ok=True, repo_type="model")
        info = api.upload_folder(
            repo_id=repo_id,
            folder_path=folder,
            repo_type="model",
            commit_message=f"Upload {kind}/ of {run_dir.name} (agnews-lora)",
        )
    except Exception as e:  # noqa: BLE001 - every Hub / network failure becomes one line
        raise _hub_error(e, repo_id, endpoint) from None
    return str(info.commit_url if hasattr(info, "commit_url") else info)
