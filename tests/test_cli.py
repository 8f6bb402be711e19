"""The fused-rnn command on the CPU with tiny shapes: bench, profile, grad-paths, check's wiring
and argument errors."""

import hashlib
import json
import re
import shutil
import subprocess
import sys
import time
import types
from pathlib import Path

import pytest
import torch

from fused_rnn import available_backends, cli
from fused_rnn.bench.results import COLUMNS, REPOSITORY, read_rows


def test_bench_prints_table_and_writes_csv_and_plots(tmp_path, capsys):
    csv_path = tmp_path / "cpu.csv"
    status = cli.main([
        "bench", "--quick", "--device", "cpu", "--shape", "B2-T4-I3-H5", "--shape", "B3-T4-I3-H5",
        "--op", "lstm", "--provider", "torch-cpu,reference,native", "--csv", str(csv_path), "--plot", str(tmp_path / "plots"),
    ])
    out = capsys.readouterr().out
    assert status == 0
    assert "lstm B2-T4-I3-H5 float32 forward+backward  (baseline: torch-cpu)" in out and "time/base" in out
    # native is timed when the extension is built, else skipped with its reason (no row)
    providers = ["torch-cpu", "reference"] + (["native"] if "native" in available_backends("cpu") else [])
    expected_rows = 2 * 2 * len(providers)  # shapes x modes x providers
    assert f"wrote {expected_rows} rows to {csv_path}" in out
    rows = read_rows(csv_path)
    assert len(rows) == expected_rows and set(rows[0]) == set(COLUMNS)
    assert {(r["provider"], r["mode"]) for r in rows} == {
        (p, m) for p in providers for m in ("forward", "forward+backward")
    }
    assert all(float(r["p20_ms"]) <= float(r["median_ms"]) <= float(r["p80_ms"]) for r in rows)
    assert (tmp_path / "plots" / "cpu-lstm-float32.png").exists()


def test_bench_attention_points(tmp_path, capsys):
    status = cli.main([
        "bench", "--quick", "--device", "cpu", "--shape", "B2-Tq3-Tk5-D4-A6", "--op", "dot_attention,additive_attention",
        "--provider", "naive,sdpa,reference", "--mode", "forward", "--csv", str(tmp_path / "a.csv"),
    ])
    out = capsys.readouterr().out
    assert status == 0
    rows = read_rows(tmp_path / "a.csv")
    assert {(r["op"], r["provider"]) for r in rows} >= {("dot_attention", "naive"), ("dot_attention", "sdpa"), ("additive_attention", "naive")}
    assert "additive_attention B2-Tq3-Tk5-D4-A6 float32 forward  (baseline: naive)" in out


def test_profile_groups_on_cpu(tmp_path, capsys):
    trace = tmp_path / "trace.json"
    assert cli.main(["profile", "--op", "lstm", "--shape", "B2-T6-I3-H4", "--backend", "reference", "--trace", str(trace)]) == 0
    out = capsys.readouterr().out
    shares = {}
    for line in out.splitlines():
        for group in ("input GEMM", "forward recurrence", "backward recurrence", "weight-gradient GEMMs"):
            if line.startswith(f"  {group} ") and line.rstrip().endswith("%"):
                shares[group] = float(line.split()[-2])
    assert len(shares) == 4 and all(ms > 0 for ms in shares.values()), out
    assert "fused_rnn::lstm_forward" in out and "fused_rnn::lstm_backward" in out
    assert any(e.get("name") == "fused_rnn::lstm_backward" for e in json.loads(trace.read_text())["traceEvents"])


def test_profile_groups_gemms_by_role():
    """The input projection, its input gradient and the weight gradients land where they belong."""
    from fused_rnn.bench.kernel_profile import profile_layer
    from fused_rnn.bench.shapes import parse_shape

    times = profile_layer("gru", parse_shape("B2-T5-I3-H4"), backend="reference")  # T*B != any weight size
    assert "aten::addmm" in times.by_name["input GEMM"]  # x @ W_ih^T + b, forward
    assert "aten::mm" in times.by_name["input GEMM"]  # dxw @ W_ih, backward
    # dW_ih, and dW_hh as one GEMM against the copied previous states (hs is small)
    assert "aten::mm" in times.by_name["weight-gradient GEMMs"]
    assert not {"aten::mm", "aten::addmm"} & set(times.by_name["other"])
    assert "fused_rnn::gru_backward" in times.by_name["backward recurrence"]
    assert not any("fused_rnn::" in name for name in times.by_name["other"])


def test_grad_paths_json_and_plot(tmp_path, capsys):
    out_json, out_png = tmp_path / "paths.json", tmp_path / "paths.png"
    assert cli.main([
        "grad-paths", "--cells", "rnn,lstm,gru", "--seq-len", "12", "--hidden", "6", "--json", str(out_json), "--plot", str(out_png),
    ]) == 0
    document = json.loads(out_json.read_text())
    assert set(document["cells"]) == {"rnn", "lstm", "gru"}
    lstm = document["cells"]["lstm"]
    assert all(len(lstm[k]) == 12 for k in ("grad_norm_x", "grad_norm_h", "grad_norm_c", "forget_gate_mean"))
    assert lstm["grad_norm_x"][-1] > lstm["grad_norm_x"][0]  # the gradient fades away from the loss
    assert out_png.stat().st_size > 10_000
    assert "d=11" in capsys.readouterr().out


def test_check_is_wired_to_the_check_module(monkeypatch):
    calls = []
    fake = types.ModuleType("fused_rnn.check")
    fake.main = lambda devices=None: calls.append(devices) or 3
    monkeypatch.setitem(sys.modules, "fused_rnn.check", fake)
    assert cli.main(["check", "--device", "cpu"]) == 3
    assert cli.main(["check"]) == 3
    assert calls == [["cpu"], None]


@pytest.mark.parametrize(
    "argv, message",
    [
        (["bench", "--op", "lstmx"], "op must be one of"),
        (["bench", "--provider", "cudnnn"], "provider must be one of"),
        (["bench", "--shape", "B2-T4"], "shape must look like"),
        (["bench", "--dtype", "float8"], "dtype must be one of"),
        (["profile", "--op", "lstm", "--shape", "B2-Tq3-Tk5-D4-A6"], "--shape must be a recurrence shape"),
        (["grad-paths", "--cells", "lstm,tcn"], "--cells must name cells"),
        (["grad-paths", "--seq-len", "0"], "--seq-len must be at least 1"),
        (["grad-paths", "--backend", "cudnn"], "backend must be one of"),
        (["profile", "--op", "gru", "--shape", "B2-T3-I4-H5", "--backend", "cudnn"], "backend must be one of"),
    ],
)
def test_bad_arguments_exit_2_naming_the_argument(argv, message, capsys):
    with pytest.raises(SystemExit) as exit_info:
        cli.main(argv)
    assert exit_info.value.code == 2
    assert message in capsys.readouterr().err


def test_module_entry_point():
    done = subprocess.run([sys.executable, "-m", "fused_rnn.cli", "--help"], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0
    assert all(command in done.stdout for command in ("check", "bench", "profile", "grad-paths"))


def _tracked_state() -> tuple:
    """git's view of the tracked files, and the bytes of the committed results."""
    status = subprocess.run(["git", "-C", str(REPOSITORY), "status", "--porcelain", "--untracked-files=no"],
                            capture_output=True, text=True, timeout=60).stdout
    results = REPOSITORY / "benchmarks" / "results"
    digests = {p.relative_to(results).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
               for p in sorted(results.rglob("*")) if p.is_file()}
    return status, digests


@pytest.mark.skipif(shutil.which("git") is None or not (REPOSITORY / ".git").exists(), reason="needs the git checkout")
def test_quick_bench_streams_rows_into_a_folder_of_its_own():
    """What `make bench` runs, on tiny points: each point's rows are printed as soon as it is
    measured (before the next point's progress), the progress bar has an ETA, the summary and the
    places of the CSV and plots come at the end, no profiler noise, and the run writes to a new
    git-ignored folder, leaving the tracked files (the committed results above all) untouched."""
    before = _tracked_state()
    command = [sys.executable, "-u", "-m", "fused_rnn.cli", "bench", "--quick", "--device", "cpu",
               "--shape", "B2-T3-I3-H4", "--shape", "B3-T3-I3-H4", "--op", "lstm,gru"]
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=REPOSITORY)
    lines, arrival = [], []
    for line in process.stdout:
        lines.append(line.rstrip("\n"))
        arrival.append(time.perf_counter())
    assert process.wait(timeout=600) == 0, "\n".join(lines[-30:])
    text = "\n".join(lines)
    assert "USDT" not in text and "profiler_start" not in text
    first_table = lines.index("lstm B2-T3-I3-H4 float32 forward  (baseline: torch-cpu)")
    progress = [i for i, line in enumerate(lines) if line.startswith("[")]
    later_point = [i for i in progress if "B3-T3-I3-H4" in lines[i]]
    assert progress[0] < first_table < later_point[0], "the first point's rows must come before the next point runs"
    assert all(re.search(r" ETA \d+(m\d\ds|s)  ", lines[i]) for i in progress)
    summary = [i for i, line in enumerate(lines) if line.startswith("Summary on cpu (")]
    assert len(summary) == 1 and summary[0] > progress[-1] and "time/base" in lines[summary[0] + 2]
    written = re.search(r"^wrote (\d+) rows to (.+cpu\.csv)$", text, re.MULTILINE)
    assert written, text[-2000:]
    csv_path = Path(written.group(2))
    run = csv_path.parent
    try:
        assert run.parent == REPOSITORY / "benchmarks" / "runs" and re.fullmatch(r"\d{8}T\d{6}Z(-\d+)?", run.name)
        assert len(read_rows(csv_path)) == int(written.group(1)) == 2 * 2 * 2 * len(
            [p for p in ("torch-cpu", "native") if p == "torch-cpu" or "native" in available_backends("cpu")])
        assert f"wrote {run / 'plots' / 'cpu-lstm-float32.png'}" in lines
        ignored = subprocess.run(["git", "-C", str(REPOSITORY), "check-ignore", "-q", str(csv_path)], timeout=60)
        assert ignored.returncode == 0, "the run folder must be git-ignored"
        assert _tracked_state() == before
    finally:
        shutil.rmtree(run, ignore_errors=True)


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine where torch sees no CUDA device")
@pytest.mark.parametrize("argv", [
    ["check", "--device", "cuda"],
    ["profile", "--op", "lstm", "--shape", "B2-T3-I4-H5", "--device", "cuda"],
    ["grad-paths", "--device", "cuda", "--seq-len", "3"],
    ["bench", "--device", "cuda", "--quick"],
])
def test_a_device_that_does_not_exist_fails_in_one_line(argv):
    done = subprocess.run([sys.executable, "-m", "fused_rnn.cli", *argv], capture_output=True, text=True, timeout=300)
    assert done.returncode == 2
    assert done.stdout == ""
    error = done.stderr.strip().splitlines()
    assert len(error) == 1 and error[0].startswith(f"fused-rnn {argv[0]}: error: --device cuda: "), done.stderr
    assert "CUDA" in error[0] and "Traceback" not in done.stderr


def test_bench_save_updates_the_committed_results(tmp_path, monkeypatch, capsys):
    """--save writes into the committed results folder (here a stand-in), merging by key."""
    from fused_rnn.bench import command

    monkeypatch.setattr(command, "default_results_dir", lambda: tmp_path)
    argv = ["bench", "--quick", "--device", "cpu", "--shape", "B2-T3-I3-H4", "--shape", "B3-T3-I3-H4", "--op", "gru",
            "--provider", "torch-cpu", "--save"]
    assert cli.main(argv) == 0
    assert cli.main(argv[:-3] + ["--mode", "forward", "--provider", "torch-cpu", "--save"]) == 0
    out = capsys.readouterr().out
    rows = read_rows(tmp_path / "cpu.csv")
    assert len(rows) == 4  # 2 shapes x 2 modes, the second run replacing the forward rows
    assert f"results to {tmp_path / 'cpu.csv'}" in out and (tmp_path / "plots" / "cpu-gru-float32.png").exists()
