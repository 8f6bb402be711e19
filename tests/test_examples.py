"""The examples run end to end in their smoke mode: exit 0, the promised last line, the picture."""

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"
sys.path.insert(0, str(EXAMPLES))

import dates  # noqa: E402
from seq2seq_model import Seq2Seq, Sizes  # noqa: E402


def run_example(script: str, *args: str) -> list[str]:
    done = subprocess.run([sys.executable, str(EXAMPLES / script), "--smoke", *args],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-3000:]
    return done.stdout.strip().splitlines()


def test_seq2seq_attention_smoke(tmp_path):
    """--attention none trains the no-attention model and the additive one, and compares them."""
    lines = run_example("seq2seq_attention.py", "--attention", "none", "--out", str(tmp_path))
    assert lines[-1].startswith("exact-match accuracy: ")
    assert 0.0 <= float(lines[-1].split(": ")[1]) <= 1.0
    assert any(line.split()[:1] == ["51-76"] and len(line.split()) == 4 for line in lines)
    assert (tmp_path / "attention_additive.png").stat().st_size > 0
    assert (tmp_path / "accuracy_by_length.png").stat().st_size > 0


def test_seq2seq_torch_modules_smoke(tmp_path):
    lines = run_example("seq2seq_attention.py", "--modules", "torch", "--attention", "luong", "--out", str(tmp_path))
    assert lines[-1].startswith("exact-match accuracy: ")
    assert (tmp_path / "attention_luong.png").stat().st_size > 0


@pytest.mark.parametrize("attention", ["additive", "luong", "none"])
def test_seq2seq_fused_and_torch_modules_are_the_same_model(attention):
    """Same seed -> same parameters under the same names, and the same logits and gradients."""
    src_vocab, tgt_vocab = dates.source_vocab(), dates.target_vocab()
    batch = next(dates.training_batches(5, [], 3, src_vocab, tgt_vocab))
    models, logits = {}, {}
    for modules in ("fused", "torch"):
        torch.manual_seed(0)
        models[modules] = Seq2Seq(len(src_vocab), len(tgt_vocab), tgt_vocab.stoi[dates.BOS], attention=attention,
                                  modules=modules, backend="reference", sizes=Sizes(8, 7, 9, 5)).double()
        logits[modules] = models[modules](batch.src, batch.src_lengths, batch.tgt)
        logits[modules].square().sum().backward()
    fused, plain = (dict(models[m].named_parameters()) for m in ("fused", "torch"))
    assert fused.keys() == plain.keys()
    assert torch.allclose(logits["fused"], logits["torch"], rtol=1e-10, atol=1e-12)
    for name in fused:
        assert torch.equal(fused[name].detach(), plain[name].detach()), name
        assert torch.allclose(fused[name].grad, plain[name].grad, rtol=1e-9, atol=1e-12), name


def test_gradient_flow_smoke(tmp_path):
    lines = run_example("gradient_flow.py", "--out", str(tmp_path))
    assert lines[-1] == f"plot: {tmp_path / 'gradient_flow.png'}"
    assert (tmp_path / "gradient_flow.png").stat().st_size > 0
    results = json.loads((tmp_path / "gradient_flow.json").read_text())
    assert set(results) == {"rnn", "lstm", "gru", "lstm_fb1", "lstm_fb3"}
    assert results["lstm"]["forget_bias"] is None and results["lstm_fb3"]["forget_bias"] == 3.0
    reach = {name: r["before"]["grad_norm_x"][0] / r["before"]["grad_norm_x"][-1] for name, r in results.items()}
    assert reach["lstm_fb3"] > 10 * reach["lstm"], reach  # the open forget gate carries the gradient back
    why = next(i for i, line in enumerate(lines) if line.startswith("Why: the LSTM's cell state"))
    explanation = " ".join(lines[why:lines.index("", why)])
    assert "forget gate" in explanation and "torch.nn initialises every bias" in explanation
    assert any(line.startswith("recall accuracy after 3 training steps") for line in lines)


def test_readme_pictures_exist_and_are_small():
    """Every picture examples/README.md shows is committed, as a small PNG."""
    readme = (EXAMPLES / "README.md").read_text()
    pictures = re.findall(r"!\[[^\]]*\]\(([^)]+)\)", readme)
    assert pictures
    for picture in pictures:
        path = EXAMPLES / picture
        assert path.is_file(), picture
        assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and path.stat().st_size < 400_000, picture
