"""The Predictor's precision handling: a bf16 model stored in bf16 throughout, close to fp32."""

import numpy as np
import torch

from agnews_lora.prediction import Predictor
from agnews_lora.tiny import synthetic_rows


def test_bf16_predictor_stores_the_whole_model_in_bf16_and_agrees_with_fp32(trained_run):
    fp32 = Predictor.from_run(trained_run, precision="fp32")
    bf16 = Predictor.from_run(trained_run, precision="bf16")
    assert fp32.model.dtype == torch.float32 and all(
        p.dtype == torch.float32 for p in fp32.model.parameters()
    )
    assert all(
        p.dtype == torch.bfloat16 for p in bf16.model.parameters()
    )  # LayerNorm and embeddings too
    assert not any(p.requires_grad for p in bf16.model.parameters())
    assert (
        bf16.precision_context().__class__.__name__ == "nullcontext"
    )  # no autocast around a bf16 model
    texts = [t for t, _ in synthetic_rows(200, seed=5)]
    a, _ = fp32.logits(texts)
    b, _ = bf16.logits(texts)
    assert b.dtype == np.float32 and a.shape == b.shape
    assert np.abs(a - b).max() < 0.1 * max(
        1.0, np.abs(a).max()
    )  # bf16 rounding, not a different model
    assert (a.argmax(1) == b.argmax(1)).mean() >= 0.97


def _copy_run(trained_run, tmp_path):
    import shutil

    run = tmp_path / "run"
    shutil.copytree(trained_run, run, ignore=shutil.ignore_patterns("eval"))
    return run


def test_label_names_come_from_the_model_and_an_edited_config_is_refused(
    trained_run, tmp_path, capsys
):
    import json

    import pytest
    import yaml

    from agnews_lora.cli import main
    from agnews_lora.errors import UserError

    id2label = json.loads((trained_run / "merged" / "config.json").read_text())["id2label"]
    assert Predictor.from_run(trained_run).label_names == [
        id2label[str(i)] for i in range(len(id2label))
    ]

    run = _copy_run(trained_run, tmp_path)
    cfg = yaml.safe_load((run / "config.yaml").read_text())
    names = cfg["data"]["label_names"]
    cfg["data"]["label_names"] = [names[1], names[0], *names[2:]]  # relabel: World <-> Sports
    (run / "config.yaml").write_text(yaml.safe_dump(cfg))
    with pytest.raises(UserError, match="disagree with the model's own labels"):
        Predictor.from_run(run)
    out = tmp_path / "sub.csv"
    texts = tmp_path / "in.csv"
    texts.write_text("text\nStocks rally\n")
    capsys.readouterr()  # the Hub libraries' progress bars of the calls above
    assert main(["predict", str(run), "--input", str(texts), "--output", str(out)]) == 2
    err = capsys.readouterr().err
    assert "merged/config.json id2label" in err and len(err.strip().splitlines()) == 1
    assert not out.exists()


def test_unknown_backend_and_runtime_options_are_refused_before_loading(trained_run):
    import pytest

    from agnews_lora.errors import UserError

    with pytest.raises(UserError, match=r"unknown backend 'tensorrt' \(choices: torch, onnx, "):
        Predictor.from_run(trained_run, backend="tensorrt")
    with pytest.raises(UserError, match=r"openvino backend runs in fp32; --precision bf16"):
        Predictor.from_run(trained_run, backend="openvino", precision="bf16")
    with pytest.raises(UserError, match=r"onnx backend runs on the CPU; device 'cuda'"):
        Predictor.from_run(trained_run, backend="onnx", device="cuda")
    p = Predictor.from_run(trained_run, precision="fp32")
    assert p.backend_kind == "torch" and not p.quantized


class RecordingBackend:
    """A stand-in backend: logit k is high for a text of k (mod 4) tokens; records its inputs."""

    def __init__(self):
        self.calls = []

    def logits(self, input_ids: np.ndarray, attention_mask: np.ndarray) -> np.ndarray:
        self.calls.append((input_ids.copy(), attention_mask.copy()))
        out = np.zeros((len(input_ids), 4), dtype=np.float32)
        out[np.arange(len(input_ids)), attention_mask.sum(1) % 4] = 5.0
        return out


def test_a_backend_with_one_logits_method_plugs_into_the_predictor(trained_run):
    """What an ONNX / OpenVINO backend will get: int64 padded batches, longest first, widths a
    multiple of 8; the Predictor puts every result back in input order."""
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(trained_run / "merged")
    backend = RecordingBackend()
    p = Predictor(backend, tok, ["a", "b", "c", "d"], max_length=64, batch_size=8)
    texts = [t for t, _ in synthetic_rows(40, seed=4, min_words=2, max_words=90)]
    results = p.classify(texts)
    n_tokens = [len(tok(t)["input_ids"]) for t in texts]
    assert [r["label"] for r in results] == [min(n, 64) % 4 for n in n_tokens]
    assert [r["truncated"] for r in results] == [n > 64 for n in n_tokens]
    assert sum(len(ids) for ids, _ in backend.calls) == len(texts) and len(backend.calls) > 1
    for ids, mask in backend.calls:
        assert ids.dtype == np.int64 and mask.dtype == np.int64 and ids.shape == mask.shape
        assert len(ids) <= 8 and (ids.shape[1] % 8 == 0 or ids.shape[1] == 64)
        assert np.all(ids[mask == 0] == p.pad_id)
    longest = [int(mask.sum(1).max()) for _, mask in backend.calls]
    assert longest == sorted(longest, reverse=True)


def test_predictor_and_the_training_loops_validation_share_one_path(trained_run):
    """`batched_logits` (training's validation) and `Predictor.logits` give the same logits."""
    from agnews_lora.prediction import batched_logits, encode_texts

    p = Predictor.from_run(trained_run, precision="fp32", batch_size=16)
    texts = [t for t, _ in synthetic_rows(100, seed=6)]
    enc, _ = encode_texts(p.tokenizer, texts, p.max_length)
    idx, via_training = batched_logits(
        p.model, enc, 16, p.pad_id, "cpu", multiple=8, min_tokens=64, max_length=p.max_length
    )
    assert list(idx) == list(range(100))
    np.testing.assert_allclose(p.logits(texts)[0], via_training, atol=1e-5)
