"""How the gradient of a late loss reaches early inputs in RNN, LSTM and GRU layers.

    python examples/gradient_flow.py            # about two minutes on a 2-core CPU
    python examples/gradient_flow.py --smoke    # seconds

The task needs long memory: a sequence of `--delay + 1` one-hot tokens whose first token is one of
`--symbols` signal symbols and whose rest is noise; the loss, at the last step only, asks for that
first token back. With fused_rnn's gradient-path profiler the example measures, for each layer,
‖∂L/∂x[t]‖ (over batch and features) against the distance from the loss, on a fresh layer and
again after a short training, and, for the LSTM, the cell-state gradient ‖∂L/∂c[t]‖ and the mean
forget-gate activation per step: with torch.nn's initialisation ("lstm", every bias uniform in
±1/√H, so the forget gate starts near 0.5) and with the forget-gate bias set to 1 and to 3.

What it shows: the LSTM's cell state hands the gradient back one step multiplied by the forget
gate, so an LSTM whose forget gate starts open (bias 3: about 0.95) carries the gradient of the
late loss back to the first input, and learns the recall, while one initialised as torch.nn does
(forget gate about 0.5, the cell path shrinking as 0.5 per step) does not. It prints every number it
plots, then that explanation with the numbers measured, writes them all (and the GRU's mean update
gate) to gradient_flow.json and draws gradient_flow.png under --out.
"""

from __future__ import annotations

import argparse
import json
import math
import textwrap
import time
from pathlib import Path

import torch
from torch import nn

import fused_rnn
from fused_rnn.profiling import gradient_paths

LAYERS = {"rnn": fused_rnn.RNN, "lstm": fused_rnn.LSTM, "gru": fused_rnn.GRU}
FORGET_BIASES = (1.0, 3.0)
DEFAULT_OUT = Path(__file__).resolve().parent / "output"


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backend", default="auto", help="fused_rnn backend: auto, reference, triton, native")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--delay", type=int, default=40, help="steps between the token and its recall")
    parser.add_argument("--symbols", type=int, default=8, help="signal symbols (chance = 1/symbols)")
    parser.add_argument("--hidden", type=int, default=64)
    parser.add_argument("--steps", type=int, default=400, help="training steps per layer")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--lr", type=float, default=1e-2)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1,
                        help="torch CPU threads (these small matrices run fastest on one)")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="directory for the plot and JSON")
    parser.add_argument("--smoke", action="store_true", help="a few steps with tiny sizes (seconds)")
    args = parser.parse_args(argv)
    if args.smoke:
        args.delay, args.hidden, args.steps, args.batch_size = 6, 8, 3, 8
    return args


def recall_batch(batch_size: int, delay: int, symbols: int, generator: torch.Generator, device):
    """-> x [delay + 1, B, 2 * symbols] one-hot (signal at t = 0, noise after), y [B] the signal."""
    y = torch.randint(symbols, (batch_size,), generator=generator)
    noise = torch.randint(symbols, 2 * symbols, (delay, batch_size), generator=generator)
    tokens = torch.cat([y.unsqueeze(0), noise], dim=0)
    x = nn.functional.one_hot(tokens, 2 * symbols).float()
    return x.to(device), y.to(device)


def set_forget_bias(layer: nn.Module, value: float) -> None:
    """Make the LSTM forget gate's total bias b_ih + b_hh equal `value` (gate order i, f, g, o)."""
    hidden = layer.hidden_size
    with torch.no_grad():
        layer.bias_ih_l0[hidden:2 * hidden].fill_(value)
        layer.bias_hh_l0[hidden:2 * hidden].zero_()


class Recaller(nn.Module):
    """One recurrent layer and a linear read-out of its last output: x [T, B, I] -> logits [B, S]."""

    def __init__(self, kind: str, inputs: int, hidden: int, symbols: int, backend: str) -> None:
        super().__init__()
        self.layer = LAYERS[kind](inputs, hidden, backend=backend)
        self.head = nn.Linear(hidden, symbols)

    def forward(self, x):
        output, _ = self.layer(x)
        return self.head(output[-1])


def train(model: Recaller, args, generator: torch.Generator) -> float:
    """Short training on the recall task -> accuracy on a fresh batch of 1000."""
    optimizer = torch.optim.Adam(model.parameters(), lr=args.lr)
    for _ in range(args.steps):
        x, y = recall_batch(args.batch_size, args.delay, args.symbols, generator, args.device)
        loss = nn.functional.cross_entropy(model(x), y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
    x, y = recall_batch(1000, args.delay, args.symbols, generator, args.device)
    with torch.no_grad():
        return (model(x).argmax(-1) == y).float().mean().item()


def run_configuration(name: str, kind: str, args, probe, forget_bias=None) -> dict:
    """Measure gradient paths on a fresh model, train it, measure again -> results for the JSON."""
    torch.manual_seed(args.seed)
    model = Recaller(kind, 2 * args.symbols, args.hidden, args.symbols, args.backend).to(args.device)
    if forget_bias is not None:
        set_forget_bias(model.layer, forget_bias)
    x, y = probe
    loss_fn = lambda out: nn.functional.cross_entropy(model.head(out[-1]), y)  # noqa: E731
    before = gradient_paths(model.layer, x, loss_fn).to_dict()
    started = time.perf_counter()
    accuracy = train(model, args, torch.Generator().manual_seed(args.seed + 1))
    after = gradient_paths(model.layer, x, loss_fn).to_dict()
    print(f"{name}: trained {args.steps} steps in {time.perf_counter() - started:.0f} s, "
          f"recall accuracy {accuracy:.3f} (chance {1 / args.symbols:.3f})", flush=True)
    return {"kind": kind, "forget_bias": forget_bias, "accuracy": accuracy, "before": before, "after": after}


def print_table(title: str, columns: dict[str, list[float]], distances: list[int]) -> None:
    """One row per distance from the loss, one column per curve."""
    print(title)
    print(f"  {'distance':>8} " + " ".join(f"{name:>16}" for name in columns))
    for d in distances:
        print(f"  {d:>8} " + " ".join(f"{values[d]:>16.3e}" for values in columns.values()))


def by_distance(per_step: list[float]) -> list[float]:
    """Values indexed by time step t -> indexed by distance T-1-t from the loss at the last step."""
    return per_step[::-1]


def explanation(results: dict, delay: int) -> str:
    """Why the LSTM learns the recall only with its forget gate open, with the numbers measured."""
    lstms = {name: r for name, r in results.items() if r["kind"] == "lstm"}
    gate = {name: sum(r["before"]["forget_gate_mean"]) / len(r["before"]["forget_gate_mean"]) for name, r in lstms.items()}
    cell = {name: r["before"]["grad_norm_c"][0] / r["before"]["grad_norm_c"][-1] for name, r in lstms.items()}
    opened = max(lstms, key=lambda name: gate[name])

    def gates(name: str) -> str:
        return f"{gate[name]:.2f} ({gate[name]:.2f}^{delay} = {gate[name] ** delay:.1e})"

    by_bias = ", ".join(f"bias {r['forget_bias']:g} {gates(name)}" for name, r in lstms.items() if name != "lstm")
    return "\n".join(textwrap.wrap(
        "Why: the LSTM's cell state c[t] = f[t] * c[t-1] + i[t] * g[t] hands the gradient back one step "
        "multiplied by the forget gate f[t], so across the delay it keeps about the product of the gates. "
        f"torch.nn initialises every bias uniformly in ±1/√H, so a fresh LSTM's forget gate is about "
        f"sigmoid(0) = 0.5: measured {gates('lstm')}; with the forget-gate bias set, {by_bias}. "
        f"On the fresh layers ‖∂L/∂c‖ at the first step against the last is {cell['lstm']:.1e} for torch.nn's "
        f"initialisation and {cell[opened]:.1e} with the gate open (bias {lstms[opened]['forget_bias']:g}), "
        f"and the LSTM learns the recall only then: accuracy {lstms['lstm']['accuracy']:.3f} against "
        f"{lstms[opened]['accuracy']:.3f}. Initialising the forget gate open (a bias of 1 or more: Gers et al. 2000; "
        "Jozefowicz et al. 2015) is the classic remedy. The vanilla RNN and the GRU start with the gradient "
        f"faded as much (‖∂L/∂x[0]‖ / ‖∂L/∂x[T-1]‖ above) and learn this {delay}-step recall by training "
        "their weights; an LSTM with an open forget gate starts with a path that does not fade.",
        width=100))


def plot(results: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(1, 3, figsize=(15, 4.2))
    colours = dict(zip(results, plt.rcParams["axes.prop_cycle"].by_key()["color"]))
    widest_open = max((n for n, r in results.items() if r["forget_bias"] is not None),
                      key=lambda n: results[n]["forget_bias"], default=None)
    for name in [n for n in ("rnn", "gru", "lstm", widest_open) if n in results]:
        for phase, style in (("before", "--"), ("after", "-")):
            axes[0].semilogy(by_distance(results[name][phase]["grad_norm_x"]), style, color=colours[name],
                             label=f"{name} {phase} training")
    axes[0].set_title("‖∂L/∂x[t]‖: how much of the late loss reaches each input")
    for name, result in results.items():
        if result["kind"] != "lstm":
            continue
        for phase, style in (("before", "--"), ("after", "-")):
            axes[1].semilogy(by_distance(result[phase]["grad_norm_c"]), style, color=colours[name],
                             label=f"{name} {phase}")
            axes[2].plot(by_distance(result[phase]["forget_gate_mean"]), style, color=colours[name],
                         label=f"{name} {phase}")
    axes[1].set_title("LSTM cell-state path ‖∂L/∂c[t]‖ (lstm: torch.nn's init)")
    axes[2].set_title("LSTM mean forget-gate activation")
    axes[2].set_ylim(0, 1)
    for axis in axes:
        axis.set_xlabel("distance from the loss (time steps)")
        axis.legend(fontsize=7)
    axes[0].set_ylabel("gradient norm")
    figure.tight_layout()
    figure.savefig(path, dpi=80)
    plt.close(figure)


def main(argv=None) -> None:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    args.out.mkdir(parents=True, exist_ok=True)
    probe = recall_batch(args.batch_size, args.delay, args.symbols,
                         torch.Generator().manual_seed(args.seed + 2), args.device)
    configurations = [(kind, kind, None) for kind in LAYERS]
    configurations += [(f"lstm_fb{bias:g}", "lstm", bias) for bias in FORGET_BIASES]
    results = {name: run_configuration(name, kind, args, probe, bias) for name, kind, bias in configurations}

    length = args.delay + 1
    distances = sorted({0, length - 1} | {2 ** k for k in range(int(math.log2(length - 1)) + 1)})
    for phase in ("before", "after"):
        print_table(f"‖∂L/∂x[t]‖ {phase} training, by distance from the loss:",
                    {name: by_distance(r[phase]["grad_norm_x"]) for name, r in results.items()}, distances)
    for quantity in ("grad_norm_c", "forget_gate_mean"):
        for phase in ("before", "after"):
            print_table(f"LSTM {quantity} {phase} training, by distance from the loss:",
                        {name: by_distance(r[phase][quantity]) for name, r in results.items()
                         if r["kind"] == "lstm"}, distances)
    ratios = {name: r["before"]["grad_norm_x"][0] / r["before"]["grad_norm_x"][-1] for name, r in results.items()}
    print("‖∂L/∂x[0]‖ / ‖∂L/∂x[T-1]‖ on fresh layers: "
          + ", ".join(f"{name} {ratio:.1e}" for name, ratio in ratios.items()))
    print(f"recall accuracy after {args.steps} training steps (chance {1 / args.symbols:.3f}): "
          + ", ".join(f"{name} {r['accuracy']:.3f}" for name, r in results.items()))
    print()
    print(explanation(results, args.delay))
    print()
    (args.out / "gradient_flow.json").write_text(json.dumps(results, indent=1))
    print(f"data: {args.out / 'gradient_flow.json'}")
    path = args.out / "gradient_flow.png"
    plot(results, path)
    print(f"plot: {path}")

if __name__ == "__main__":
    main()
