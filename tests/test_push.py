"""`agnews-lora push`: create_repo + upload_folder against a local fake of the Hub's API."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import yaml
from fake_hub import FakeHub

from agnews_lora import cli

ROOT = Path(__file__).resolve().parents[1]


def _push(run_dir, *args, endpoint: str, token: str | None = "hf_fake_token", tmp_path):
    """`agnews-lora push` in a subprocess (huggingface_hub reads HF_ENDPOINT when imported).

    HF_HUB_DISABLE_XET: upload through the Hub's LFS API ("basic" transfer), which the fake
    speaks; with hf_xet the weights go to a Xet storage server, which it does not."""
    env = {
        **os.environ,
        "HF_ENDPOINT": endpoint,
        "HF_HUB_OFFLINE": "0",
        "HF_HOME": str(tmp_path),
        "HF_HUB_DISABLE_XET": "1",
        "HF_HUB_DISABLE_TELEMETRY": "1",
    }
    env.pop("HF_TOKEN", None)
    if token:
        env["HF_TOKEN"] = token
    return subprocess.run(
        [sys.executable, "-m", "agnews_lora", "push", str(run_dir), *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        cwd=ROOT,
    )


def _front_matter(text: str) -> dict:
    return yaml.safe_load(text.split("---\n")[1])


def test_push_uploads_the_model_and_its_card(trained_run, tmp_path):
    with FakeHub() as hub:
        p = _push(
            trained_run, "--repo-id", "me/tiny", "--private", endpoint=hub.url, tmp_path=tmp_path
        )
        assert p.returncode == 0, p.stderr
        assert f"{hub.url}/me/tiny/commit/" in p.stdout
        q = _push(
            trained_run,
            "--repo-id",
            "org/tiny-adapter",
            "--adapter",
            endpoint=hub.url,
            tmp_path=tmp_path,
        )
        assert q.returncode == 0, q.stderr
    assert hub.created[0] == {
        "name": "tiny",
        "organization": "me",
        "visibility": "private",
        "type": "model",
    }
    assert hub.created[1].get("visibility") != "private"
    for repo, kind, library in (
        ("me/tiny", "merged", "transformers"),
        ("org/tiny-adapter", "adapter", "peft"),
    ):
        folder = trained_run / kind
        local = {f.name: f.read_bytes() for f in folder.iterdir() if f.is_file()}
        assert hub.repos[repo] == local  # every file, byte for byte: card and weights
        assert any(n.endswith(".safetensors") for n in local) and "README.md" in local
        assert _front_matter(hub.repos[repo]["README.md"].decode())["library_name"] == library
    # the weights went through the LFS API, the card through the Hub's metadata check
    assert len(hub.lfs) >= 2
    assert any("pipeline_tag: text-classification" in c for c in hub.validated)


def test_push_with_a_bad_token_is_one_line(trained_run, tmp_path):
    with FakeHub() as hub:
        p = _push(
            trained_run, "--repo-id", "me/tiny", endpoint=hub.url, token="wrong", tmp_path=tmp_path
        )
    assert p.returncode == 2 and "Traceback" not in p.stderr
    assert p.stderr.strip().count("\n") == 0 and "refused the token" in p.stderr
    assert hub.repos == {}


def test_push_without_network_is_one_line(trained_run, tmp_path):
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    p = _push(
        trained_run, "--repo-id", "me/tiny", endpoint=f"http://127.0.0.1:{port}", tmp_path=tmp_path
    )
    assert p.returncode == 2 and "Traceback" not in p.stderr
    assert p.stderr.strip().count("\n") == 0 and "cannot reach the Hugging Face Hub" in p.stderr


def test_push_without_token_is_one_line(trained_run, tmp_path):
    p = _push(
        trained_run,
        "--repo-id",
        "me/tiny",
        endpoint="http://127.0.0.1:9",
        token=None,
        tmp_path=tmp_path,
    )
    assert p.returncode == 2 and "hf auth login" in p.stderr
    assert p.stderr.strip().count("\n") == 0


def test_push_refusals(trained_run, tmp_path, capsys):
    # the tests run with HF_HUB_OFFLINE=1 (conftest)
    assert cli.main(["push", str(trained_run), "--repo-id", "me/x"]) == 2
    assert "HF_HUB_OFFLINE" in capsys.readouterr().err
    assert cli.main(["push", str(trained_run), "--repo-id", "a/b/c"]) == 2
    assert "not a Hub repo id" in capsys.readouterr().err
    assert cli.main(["push", str(tmp_path), "--repo-id", "me/x"]) == 2
    assert "not an agnews-lora run directory" in capsys.readouterr().err
    assert cli.main(["push", str(trained_run), "--repo-id", "me/x", "--adapter", "--merged"]) == 2


def test_push_writes_a_missing_card_first(trained_run, tmp_path, monkeypatch):
    import shutil

    from agnews_lora import hub

    run = shutil.copytree(trained_run, tmp_path / "run")
    (run / "adapter" / "README.md").unlink()
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_OFFLINE", False)
    monkeypatch.setenv("HF_TOKEN", "x")
    calls = []
    monkeypatch.setattr("huggingface_hub.HfApi.create_repo", lambda *a, **k: calls.append(k))

    def upload(self, **k):
        calls.append(sorted(p.name for p in Path(k["folder_path"]).iterdir()))
        return "url"

    monkeypatch.setattr("huggingface_hub.HfApi.upload_folder", upload)
    assert hub.push_run(run, "me/x", "adapter") == "url"
    assert "README.md" in calls[1] and calls[0]["private"] is False
