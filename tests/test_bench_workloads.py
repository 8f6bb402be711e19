"""The CPU goal sweep of the benchmark registry and its workloads beyond one padded layer: packed
batches and stepwise calls of a module or a cell (decoders), run alike by torch.nn and fused_rnn."""

from __future__ import annotations

import pytest
import torch

from fused_rnn import native
from fused_rnn.bench.flops import flops
from fused_rnn.bench.registry import PROVIDERS
from fused_rnn.bench.shapes import (
    SWEEPS,
    PackedShape,
    Point,
    RecurrentShape,
    StepwiseShape,
    parse_shape,
)
from fused_rnn.bench.verify import GroundTruth
from fused_rnn.bench.workloads import make_weights, packed_lengths

CPU = torch.device("cpu")
# B5-T40-I6-H7-packed: built for 40 steps, checked at its check version of 16 (the runner builds once)
WORKLOADS = ["B5-T9-I6-H7-packed", "B5-T40-I6-H7-packed", "L2-B5-T9-I6-H7-steps", "B5-T9-I6-H7-cells"]


@pytest.mark.parametrize(
    "text, shape",
    [
        ("B64-T256-I256-H256-packed", PackedShape(64, 256, 256, 256)),
        ("L2-B64-T20-I500-H500-steps", StepwiseShape(64, 20, 500, 500, layers=2)),
        ("B64-T20-I500-H500-cells", StepwiseShape(64, 20, 500, 500, cell=True)),
    ],
)
def test_workload_shapes_parse_and_print(text, shape):
    assert parse_shape(text) == shape and str(shape) == text
    assert shape != RecurrentShape(shape.batch, shape.steps, shape.input_size, shape.hidden)
    assert type(shape.check_version()) is type(shape) and shape.check_version().steps == min(shape.steps, 16)


@pytest.mark.parametrize("bad", ["L2-B1-T2-I3-H4", "B1-T2-I3-H4-steps", "L0-B1-T2-I3-H4-steps", "B1-T2-I3-H4-loop"])
def test_malformed_workload_shapes_are_refused(bad):
    with pytest.raises(ValueError, match="shape"):
        parse_shape(bad)


def test_cpu_goal_sweep_holds_every_goal_point():
    points = SWEEPS["cpu-goals"]
    for op in ("rnn", "lstm", "gru"):
        for t in (64, 256, 1024):
            for b in (1, 16, 64):
                for h in (128, 256, 512, 1024):
                    assert Point(op, RecurrentShape(b, t, h, h)) in points
        packed = [p.shape for p in points if p.op == op and isinstance(p.shape, PackedShape)]
        # each packed point has its padded counterpart in the sweep
        assert packed and all(Point(op, RecurrentShape(s.batch, s.steps, s.input_size, s.hidden)) in points for s in packed)
    for op in ("lstm", "gru"):
        assert Point(op, StepwiseShape(64, 20, 500, 500, layers=2)) in points
        assert Point(op, StepwiseShape(64, 20, 500, 500, cell=True)) in points


def test_packed_lengths_spread_over_a_quarter_to_all_of_the_steps():
    shape = PackedShape(64, 256, 8, 8)
    lengths = packed_lengths(shape)
    assert lengths.shape == (64,) and lengths.min() >= 64 and lengths.max() <= 256
    assert torch.equal(lengths, packed_lengths(shape)) and len(set(lengths.tolist())) > 32
    assert torch.equal(lengths, lengths.sort(descending=True)[0])  # packing permutes no rows
    # the FLOPs of a packed point are those of its rows' real lengths
    padded = RecurrentShape(64, 256, 8, 8)
    assert flops("gru", shape, "forward") == pytest.approx(flops("gru", padded, "forward") * lengths.sum().item() / (64 * 256))


def test_weights_of_every_layer():
    weights = make_weights("gru", StepwiseShape(5, 9, 6, 7, layers=2))
    assert weights["weight_ih_l0"].shape == (21, 6) and weights["weight_ih_l1"].shape == (21, 7)
    assert set(weights) == {f"{stem}_l{layer}" for stem in ("weight_ih", "weight_hh", "bias_ih", "bias_hh") for layer in (0, 1)}


@pytest.mark.parametrize("text", WORKLOADS)
@pytest.mark.parametrize("op", ["rnn", "lstm", "gru"])
@pytest.mark.parametrize("provider", ["native", "torch-cpu"])
def test_providers_pass_the_check_on_every_workload(provider, op, text):
    if PROVIDERS[provider].unavailable_reason(op, parse_shape(text), torch.float64, CPU):
        pytest.skip(PROVIDERS[provider].unavailable_reason(op, parse_shape(text), torch.float64, CPU))
    shape = parse_shape(text)
    for dtype in (torch.float32, torch.float64):
        truth = GroundTruth(op, shape, dtype)
        built = PROVIDERS[provider].build(op, shape, truth.weights, dtype, CPU)
        for mode in ("forward", "forward+backward"):
            check = truth.check(built, CPU, mode, truth.tolerance(CPU, mode))
            assert check.passed, f"{provider} {op} {text} {dtype} {mode}: {check}"


@pytest.mark.parametrize("text", WORKLOADS)
def test_plain_layer_providers_decline_other_workloads(text):
    reason = PROVIDERS["eager-loop"].unavailable_reason("lstm", parse_shape(text), torch.float32, CPU)
    assert reason and "one layer over a padded batch" in reason


def test_floor_rows_pair_providers_and_scale_by_the_gemm_rate(tmp_path):
    from fused_rnn.bench.cpu_floor import floor_rows

    path = tmp_path / "cpu.csv"
    header = "op,provider,mode,shape,dtype,median_ms,load\n"
    rows = [
        "lstm,torch-cpu,forward,B16-T256-I256-H256,float32,20.0,1.5",
        "lstm,native,forward,B16-T256-I256-H256,float32,10.0,1.7",
        "lstm,native,forward,B16-T256-I256-H256,float64,10.0,1.7",
        "lstm,torch-cpu,forward,B16-T256-I256-H256,float64,30.0,1.7",
        "gru,native,forward,B16-T256-I256-H256,float32,9.0,1.2",  # no torch.nn row: left out
    ]
    path.write_text(header + "\n".join(rows) + "\n")
    table = floor_rows(str(path), rate=100.0)
    assert [(r["op"], r["dtype"]) for r in table] == [("lstm", "float32"), ("lstm", "float64")]
    f32, f64 = table
    floor_ms = flops("lstm", RecurrentShape(16, 256, 256, 256), "forward") / 100e9 * 1e3
    assert f32["ratio"] == 0.5 and f32["load"] == "1.7" and f32["goal"] == 1.0 and f32["own_padded"] is None
    assert f32["native_floor"] == pytest.approx(100 * floor_ms / 10.0)
    assert f32["torch_floor"] == pytest.approx(100 * floor_ms / 20.0)
    assert f64["native_floor"] == pytest.approx(100 * 2 * floor_ms / 10.0)  # float64 at half the rate


def test_floor_rows_keep_the_rows_of_one_device(tmp_path):
    from fused_rnn.bench.cpu_floor import floor_rows

    path = tmp_path / "cpu.csv"
    rows = [
        "lstm,torch-cpu,forward,B16-T256-I256-H256,float32,20.0,1.5,CPU A",
        "lstm,native,forward,B16-T256-I256-H256,float32,10.0,1.7,CPU A",
        "lstm,torch-cpu,forward,B16-T256-I256-H256,float32,20.0,1.5,CPU B",
        "lstm,native,forward,B16-T256-I256-H256,float32,30.0,1.7,CPU B",
    ]
    path.write_text("op,provider,mode,shape,dtype,median_ms,load,device\n" + "\n".join(rows) + "\n")
    assert [r["ratio"] for r in floor_rows(str(path), 100.0, "CPU A")] == [0.5]
    assert [r["ratio"] for r in floor_rows(str(path), 100.0, "CPU B")] == [1.5]
    assert floor_rows(str(path), 100.0, "CPU C") == []


def test_packing_alone_pads_the_packed_input_and_its_gradient():
    from fused_rnn.bench.packed_floor import packing_alone

    shape = PackedShape(5, 9, 7, 7)
    built = packing_alone(shape)
    x = torch.randn(9, 5, 7, dtype=torch.float64)
    inside = (torch.arange(9).unsqueeze(1) < packed_lengths(shape).unsqueeze(0)).unsqueeze(2)  # [T, B, 1]
    assert not inside.all()
    assert torch.equal(built.forward((x,)), x * inside)
    grad_output = torch.randn_like(x)
    _, grads = built.forward_backward((x,), grad_output)
    assert torch.equal(grads["input0"], grad_output * inside)
    with pytest.raises(ValueError, match="I == H"):
        packing_alone(PackedShape(5, 9, 6, 7))


@pytest.mark.skipif(native.unavailable_reason(CPU) is not None, reason="native backend unavailable")
def test_packed_floor_adds_the_packing_to_the_row_step_fraction():
    from fused_rnn.bench.packed_floor import measure_packed_floors
    from fused_rnn.bench.timing import Budget

    shape = PackedShape(5, 9, 7, 7)
    [result] = measure_packed_floors(shape, torch.float64, "forward+backward", Budget(1, 1, 0.0), ops=("gru",))
    assert result.op == "gru"
    assert result.fraction == packed_lengths(shape).sum().item() / (9 * 5) < 1
    assert min(result.packing_ms, result.padded_ms, result.packed_ms) > 0
    assert result.floor == pytest.approx(result.fraction + result.packing_ms / result.padded_ms)
    assert result.ratio == result.packed_ms / result.padded_ms


def test_packed_verdict_tells_a_floor_above_the_goal():
    from fused_rnn.bench.cpu_floor import packed_verdict

    assert packed_verdict(0.69, 0.8) == "met"
    assert packed_verdict(0.75, 0.72) == "floor above goal"
    assert packed_verdict(0.75, 0.65) == "not met"
