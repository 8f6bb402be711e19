"""The benchmark machinery: registry, shapes, CSV schema and replacement, the check before timing,
timers, peak memory, FLOP counts, plots and the progress bar."""

import csv
import io

import pytest
import torch

from fused_rnn.bench import registry, results, runner
from fused_rnn.bench.base import Built, Provider
from fused_rnn.bench.flops import flops
from fused_rnn.bench.plots import plot_results
from fused_rnn.bench.progress import Progress
from fused_rnn.bench.shapes import (
    SWEEPS, AttentionShape, Point, RecurrentShape, parse_shape, select_points, shape_fits_op,
)
from fused_rnn.bench.timing import Budget, Timing, peak_memory_mib, summarize
from fused_rnn.bench.verify import GroundTruth

CPU = torch.device("cpu")
TINY = RecurrentShape(batch=2, steps=5, input_size=3, hidden=4)


def test_registry_is_consistent():
    for name, points in SWEEPS.items():
        assert points, name
        assert all(shape_fits_op(p.op, p.shape) for p in points), name
    for device, names in registry.QUICK_PROVIDERS.items():
        assert set(names) <= set(registry.PROVIDERS), device
        assert device in {d for n in names for d in registry.PROVIDERS[n].devices}
    for op in ("lstm", "gru", "rnn", "dot_attention", "additive_attention"):
        for device in ("cpu", "cuda"):
            assert op in registry.PROVIDERS[registry.baseline(op, device)].ops
    assert Point("lstm", RecurrentShape(16, 1024, 768, 768)) in SWEEPS["standard"]
    for op in ("lstm", "gru"):  # the CPU points the native CPU kernels are judged at
        assert Point(op, parse_shape("B16-T256-I256-H256")) in SWEEPS["cpu-quick"]
        assert Point(op, parse_shape("B32-T256-I512-H512")) in SWEEPS["cpu-quick"]
    assert {p.op for p in select_points(["batch", "hidden"], ["gru"])} == {"gru"}
    with pytest.raises(ValueError, match="sweep must be one of .* got 'nope'"):
        select_points(["nope"], None)


def test_shapes_parse_and_print():
    assert str(parse_shape("B16-T1024-I768-H768")) == "B16-T1024-I768-H768"
    assert parse_shape("B32-Tq1-Tk4096-D256-A256") == AttentionShape(32, 1, 4096, 256, 256)
    assert RecurrentShape(16, 1024, 768, 768).check_version().steps == 16
    for bad in ("B16-T1024-I768", "b16-t1-i1-h1", "B0-T1-I1-H1"):
        with pytest.raises(ValueError, match="shape"):
            parse_shape(bad)


def _row(provider="torch-cpu", median=1.0, load=0.5):
    timing = Timing(median, median * 0.9, median * 1.1, 5)
    env = {"device": "cpu0", "torch": "2", "triton": "3", "cuda": "", "commit": "abc", "date": "today"}
    return results.make_row("lstm", provider, "forward", TINY, torch.float32, timing, 1.5, env, load)


def test_csv_schema_and_replacement(tmp_path):
    path = tmp_path / "sub" / "cpu.csv"
    results.write_rows(path, [_row("torch-cpu", 1.0), _row("reference", 2.0, load=99.0)])
    with open(path) as file:
        assert file.readline().strip() == (
            "op,provider,mode,shape,dtype,median_ms,p20_ms,p80_ms,peak_mem_mib,device,torch,triton,cuda,commit,date,"
            "load,busy"
        )
    results.write_rows(path, [_row("torch-cpu", 3.0), _row("eager-loop", 4.0)])
    rows = results.read_rows(path)
    assert [(r["provider"], r["median_ms"]) for r in rows] == [("torch-cpu", "3"), ("reference", "2"), ("eager-loop", "4")]
    assert rows[0]["shape"] == "B2-T5-I3-H4" and rows[0]["dtype"] == "float32" and rows[0]["peak_mem_mib"] == "1.5"
    assert (rows[0]["load"], rows[0]["busy"]) == ("0.50", "") and (rows[1]["load"], rows[1]["busy"]) == ("99.00", "yes")
    with open(tmp_path / "bad.csv", "w") as file:
        csv.writer(file).writerow(["op", "provider"])
    with pytest.raises(ValueError, match="expected"):
        results.read_rows(tmp_path / "bad.csv")


def test_csv_written_before_the_load_columns_still_reads(tmp_path):
    path = tmp_path / "old.csv"
    old_columns = results.COLUMNS[:-2]
    with open(path, "w", newline="") as file:
        writer = csv.DictWriter(file, fieldnames=old_columns)
        writer.writeheader()
        writer.writerow({k: v for k, v in _row().items() if k in old_columns})
    (row,) = results.read_rows(path)
    assert (row["load"], row["busy"], row["median_ms"]) == ("", "", "1")
    results.write_rows(path, [_row("native", 2.0)])  # rewritten with every column
    assert [r["provider"] for r in results.read_rows(path)] == ["torch-cpu", "native"]


def test_every_run_gets_a_folder_of_its_own():
    import datetime

    now = datetime.datetime(2030, 1, 2, 3, 4, 5, tzinfo=datetime.timezone.utc)
    first = results.run_dir(now)
    assert first.name == "20300102T030405Z" and first.parent == results.REPOSITORY / "benchmarks" / "runs"
    first.mkdir(parents=True)
    try:
        assert results.run_dir(now).name == "20300102T030405Z-2"
    finally:
        first.rmdir()


class _WrongProvider(Provider):
    """torch.nn.LSTM with its output off by 1e-3: must fail the check and never be timed."""

    name = "wrong"
    ops = ("lstm",)

    def build(self, op, shape, weights, dtype, device):
        right = registry.PROVIDERS["torch-cpu"].build(op, shape, weights, dtype, device)
        return Built(run=lambda x: right.run(x) * 1.001, params=right.params)


def test_only_providers_that_match_the_reference_are_timed(monkeypatch):
    monkeypatch.setitem(registry.PROVIDERS, "wrong", _WrongProvider())
    sweep = runner.Sweep(
        device=CPU, points=[Point("lstm", TINY)], dtypes=[torch.float32], modes=["forward", "forward+backward"],
        providers=["torch-cpu", "wrong", "triton", "eager-loop"], budget=Budget(min_calls=2, max_calls=2, seconds=0),
    )
    outcomes = runner.run_sweep(sweep, Progress(sweep.size(), io.StringIO()))
    status = {(o.provider, o.mode): o for o in outcomes}
    assert len(outcomes) == sweep.size() == 8
    for mode in ("forward", "forward+backward"):
        assert status["torch-cpu", mode].status == runner.MEASURED
        assert status["eager-loop", mode].status == runner.MEASURED
        assert status["wrong", mode].status == runner.FAILED and status["wrong", mode].timing is None
        assert "relative error" in status["wrong", mode].reason
        assert status["triton", mode].status == runner.SKIPPED and "interpreter" in status["triton", mode].reason
    timing = status["torch-cpu", "forward+backward"].timing
    assert timing.samples == 2 and timing.p20_ms <= timing.median_ms <= timing.p80_ms


def test_ground_truth_checks_gradients_of_every_parameter():
    truth = GroundTruth("gru", TINY, torch.float32)
    assert {"output", "d_input0", "d_weight_ih_l0", "d_weight_hh_l0", "d_bias_ih_l0", "d_bias_hh_l0"} <= set(truth.values)
    built = registry.PROVIDERS["eager-loop"].build("gru", TINY, truth.weights, torch.float32, CPU)
    assert truth.check(built, CPU, "forward+backward", 1e-5).passed
    frozen = Built(run=built.run, params={**built.params, "bias_hh_l0": built.params["bias_hh_l0"].detach().clone()})
    check = truth.check(frozen, CPU, "forward+backward", 1e-5)  # that bias no longer gets a gradient
    assert not check.passed and check.worst == "d_bias_hh_l0"


def test_attention_baselines_agree_with_the_float64_formula():
    shape = AttentionShape(2, 3, 5, 4, 6)
    for op, name in (("additive_attention", "naive"), ("general_attention", "sdpa"), ("dot_attention", "sdpa")):
        truth = GroundTruth(op, shape, torch.float32)
        built = registry.PROVIDERS[name].build(op, shape, truth.weights, torch.float32, CPU)
        assert truth.check(built, CPU, "forward+backward", 1e-5).passed, (op, name)
    decoder_step = AttentionShape(2, 1, 7, 4, 6)
    truth = GroundTruth("scaled_dot_attention", decoder_step, torch.float32)
    built = registry.PROVIDERS["sdpa"].build("scaled_dot_attention", decoder_step, truth.weights, torch.float32, CPU)
    assert truth.values["output"].shape == (2, 4)
    assert truth.check(built, CPU, "forward", 1e-5).passed


def test_timing_summary_and_cpu_peak_memory():
    t = summarize([5.0, 1.0, 2.0, 4.0, 3.0])
    assert (t.median_ms, t.samples) == (3.0, 5) and t.p20_ms < 3.0 < t.p80_ms
    peak = peak_memory_mib(lambda: torch.ones(2**21).add_(1).sum(), CPU)  # 8 MiB temporary
    assert 7.9 < peak < 12


def test_flop_counts():
    shape = RecurrentShape(batch=2, steps=3, input_size=5, hidden=7)
    assert flops("lstm", shape, "forward") == 2 * 3 * 2 * 28 * (5 + 7) + 13 * 3 * 2 * 7
    assert flops("gru", shape, "forward+backward") == 3 * flops("gru", shape, "forward")
    dot = AttentionShape(1, 2, 3, 4, 5)
    assert flops("dot_attention", dot, "forward") == 2 * 6 * 4 + 5 * 6 + 2 * 6 * 4


def _series_rows(busy_shape=None):
    rows = []
    for batch in (1, 4, 16):
        for provider, median in (("torch-cpu", batch * 1.0), ("reference", batch * 2.0)):
            row = _row(provider, median, load=99.0 if f"B{batch}-T5-I3-H4" == busy_shape else 0.5)
            row["shape"] = f"B{batch}-T5-I3-H4"
            rows.append(row)
    return rows


def test_plots_are_written(tmp_path):
    pytest.importorskip("matplotlib")
    alone = dict(_series_rows()[0], op="gru", provider="reference")  # nothing to compare it with: no figure
    written = plot_results(_series_rows(busy_shape="B4-T5-I3-H4") + [alone], "cpu0", "cpu", tmp_path)
    assert [p.name for p in written] == ["cpu-lstm-float32.png"]
    assert written[0].stat().st_size > 10_000


def test_plot_panels_colours_bands_and_speedup_axis(monkeypatch):
    """Only panels with something to show; one colour per provider whatever the panel; the p20-p80
    band under each line; the speed-up axis in plain ratios; busy rows drawn hollow and hatched."""
    matplotlib = pytest.importorskip("matplotlib")
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from fused_rnn.bench import plots

    figures = []
    monkeypatch.setattr(plt, "close", lambda figure: figures.append(figure))
    plots.plot_results(_series_rows(busy_shape="B4-T5-I3-H4"), "cpu0", "cpu", __import__("pathlib").Path("/tmp"))
    (figure,) = figures
    titles = [axis.get_title() for axis in figure.axes]
    assert titles == ["lstm forward float32: time against B", "lstm forward float32: speed-up"]
    lines_axis, speedup_axis = figure.axes
    colours = {line.get_label(): line.get_color() for line in lines_axis.get_lines() if not line.get_label().startswith("_")}
    assert colours == {"torch-cpu": plots.colour("torch-cpu"), "reference": plots.colour("reference")}
    assert len(lines_axis.collections) == 2  # a p20-p80 band per provider
    hollow = [line for line in lines_axis.get_lines() if line.get_markerfacecolor() == "none"]
    assert len(hollow) == 2  # B4 of each provider
    bars = [patch for patch in speedup_axis.patches]
    assert {bar.get_facecolor()[:3] for bar in bars} == {matplotlib.colors.to_rgb(plots.colour("reference"))}
    assert [bar.get_hatch() for bar in bars] == [None, "//", None]
    labels = [label.get_text() for label in speedup_axis.get_yticklabels()]
    assert {"0.5×", "1×", "2×"} <= set(labels), labels
    assert plots.speedup_ticks(0.9, 1.1) == [0.5, 1.0, 2.0] and plots.times_label(0.25) == "0.25×"
    assert plots.speedup_ticks(0.2, 3.0) == [0.125, 0.25, 0.5, 1.0, 2.0, 4.0]


def test_progress_bar_lines_with_eta():
    stream, out = io.StringIO(), io.StringIO()
    progress = Progress(3, stream, out)
    for label in ("a", "b", "c"):
        progress.advance(label)
        progress.print(f"rows of {label}")
    lines = stream.getvalue().splitlines()
    assert lines[0].startswith("[########................] 1/3") and lines[-1].endswith(" c")
    assert lines[-1].startswith("[########################] 3/3")
    assert all(" ETA " in line for line in lines) and lines[-1].split("ETA ")[1].startswith("0s")
    assert out.getvalue().splitlines() == ["rows of a", "rows of b", "rows of c"]


def test_table_columns_never_run_together():
    from fused_rnn.bench.report import format_columns

    lines = format_columns(("provider", "median ms"), [("a-very-long-provider-name", "123456.789"), ("b", "1.0")])
    assert len({len(line) for line in lines}) == 1  # right-aligned to one edge
    assert lines[1] == "  a-very-long-provider-name  123456.789"  # two spaces between the widest cells
    assert [line.split() for line in lines] == [["provider", "median", "ms"], ["a-very-long-provider-name", "123456.789"],
                                                ["b", "1.0"]]


def test_fused_attention_availability_is_the_attention_kernels_own(monkeypatch):
    """The native backend registers its CUDA attention kernels apart from its recurrence kernels:
    the bench asks the attention ops whether attention can run, not the recurrence registry."""
    from fused_rnn import attention_ops, backends

    provider = registry.PROVIDERS["native"]
    shape = AttentionShape(2, 3, 5, 8, 8)
    recurrence_only = lambda name, device: "no recurrence kernel" if name == "native" else None  # noqa: E731
    monkeypatch.setattr(backends, "unavailable_reason", recurrence_only)
    monkeypatch.setattr(attention_ops, "attention_unavailable_reason", lambda name, device: None)
    assert provider.unavailable_reason("dot_attention", shape, torch.float32, torch.device("cpu")) is None
    assert provider.unavailable_reason("lstm", RecurrentShape(2, 3, 4, 5), torch.float32, torch.device("cpu")) == (
        "no recurrence kernel"
    )
