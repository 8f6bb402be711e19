"""Translate dates written in words into ISO dates with a fused_rnn encoder-decoder and attention.

    python examples/seq2seq_attention.py                      # fused_rnn modules, additive attention
    python examples/seq2seq_attention.py --modules torch      # the same model from torch.nn modules
    python examples/seq2seq_attention.py --attention none     # no attention, compared by input length
    python examples/seq2seq_attention.py --smoke              # a few steps, tiny sizes

Prints training progress, held-out accuracy by source length, saves a heatmap of the attention
weights (source characters against output characters) under --out, and ends with `exact-match accuracy: X`.
With --attention none it also trains the additive-attention model with the same budget and prints
both models' accuracy by input length side by side (and plots them), since that is the comparison
that shows what attention buys on long inputs.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent))

import dates  # noqa: E402
from seq2seq_model import ATTENTIONS, MODULES, Seq2Seq, Sizes  # noqa: E402

LENGTH_BUCKETS = ((8, 10), (11, 20), (21, 35), (36, 50), (51, 76))
DEFAULT_OUT = Path(__file__).resolve().parent / "output"


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backend", default="auto", help="fused_rnn backend: auto, reference, triton, native")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--modules", choices=MODULES, default="fused",
                        help="fused_rnn modules, or torch.nn modules with plain-PyTorch attention")
    parser.add_argument("--attention", choices=ATTENTIONS, default="additive")
    parser.add_argument("--steps", type=int, default=600, help="training steps")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--lr", type=float, default=3e-3)
    parser.add_argument("--held-out", type=int, default=2000, help="held-out examples")
    parser.add_argument("--eval-every", type=int, default=100)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1,
                        help="torch CPU threads (these small matrices run fastest on one)")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="directory for the pictures")
    parser.add_argument("--smoke", action="store_true", help="a few steps with tiny sizes (seconds)")
    args = parser.parse_args(argv)
    if args.smoke:
        args.steps, args.batch_size, args.held_out, args.eval_every = 4, 16, 32, 2
    return args


def exact_matches(model: Seq2Seq, batch: dates.Batch, tgt_vocab: dates.Vocab) -> list[bool]:
    """Greedy-decode a batch -> per example, whether the output is exactly the answer."""
    ids, _ = model.greedy(batch.src, batch.src_lengths, dates.TARGET_LENGTH + 1)
    return [tgt_vocab.decode(row) == answer for row, answer in zip(ids.tolist(), batch.answers)]


def evaluate(model: Seq2Seq, held_out, src_vocab, tgt_vocab, device, batch_size: int = 500):
    """-> (exact-match accuracy, {bucket: (count, accuracy)} by source length in characters)."""
    model.eval()
    held_out = sorted(held_out, key=lambda pair: len(pair[0]))  # batches of similar length pad little
    correct, lengths = [], []
    for start in range(0, len(held_out), batch_size):
        batch = dates.make_batch(held_out[start:start + batch_size], src_vocab, tgt_vocab).to(device)
        correct += exact_matches(model, batch, tgt_vocab)
        lengths += batch.src_lengths.tolist()
    model.train()
    by_length = {}
    for low, high in LENGTH_BUCKETS:
        hits = [ok for ok, n in zip(correct, lengths) if low <= n <= high]
        by_length[f"{low}-{high}"] = (len(hits), sum(hits) / max(len(hits), 1))
    return sum(correct) / len(correct), by_length


def train(args, attention: str, held_out, src_vocab, tgt_vocab) -> Seq2Seq:
    device = torch.device(args.device)
    torch.manual_seed(args.seed)
    sizes = Sizes(embed=8, encoder_hidden=8, decoder_hidden=16, attention=8) if args.smoke else Sizes()
    model = Seq2Seq(len(src_vocab), len(tgt_vocab), tgt_vocab.stoi[dates.BOS], attention=attention,
                    modules=args.modules, backend=args.backend, sizes=sizes).to(device)
    optimizer = torch.optim.Adam(model.parameters(), lr=args.lr)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=args.lr, total_steps=args.steps,
                                                   pct_start=0.1)
    loss_fn = nn.CrossEntropyLoss()
    batches = dates.training_batches(args.batch_size, held_out, args.seed + 1, src_vocab, tgt_vocab)
    progress_set = held_out[: min(500, len(held_out))]
    print(f"training {attention} attention, {args.modules} modules, backend {args.backend}, device {device}: "
          f"{sum(p.numel() for p in model.parameters())} parameters, {args.steps} steps of {args.batch_size}")
    start, running = time.perf_counter(), 0.0
    for step in range(1, args.steps + 1):
        batch = next(batches).to(device)
        logits = model(batch.src, batch.src_lengths, batch.tgt)
        loss = loss_fn(logits.flatten(0, 1), batch.tgt.flatten())
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        schedule.step()
        running += loss.item()
        if step % args.eval_every == 0 or step == args.steps:
            accuracy, _ = evaluate(model, progress_set, src_vocab, tgt_vocab, device)
            count = args.eval_every if step % args.eval_every == 0 else step % args.eval_every
            print(f"  step {step:5d}/{args.steps}  loss {running / count:.4f}  "
                  f"held-out exact match {accuracy:.3f}  ({time.perf_counter() - start:.0f} s)", flush=True)
            running = 0.0
    return model


def plot_attention(model: Seq2Seq, examples, src_vocab, tgt_vocab, device, path: Path) -> None:
    """Heatmaps of attention weights, source characters (x) against output characters (y), one per example."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    batch = dates.make_batch(examples, src_vocab, tgt_vocab).to(device)
    model.eval()
    ids, weights = model.greedy(batch.src, batch.src_lengths, dates.TARGET_LENGTH + 1)
    lengths = batch.src_lengths.tolist()
    figure, axes = plt.subplots(1, len(examples), figsize=(2.5 + 0.16 * sum(lengths) + len(examples), 3.8),
                                gridspec_kw={"width_ratios": [max(n, 12) for n in lengths]}, squeeze=False)
    for axis, (text, _), row, w, length in zip(axes[0], examples, ids.tolist(), weights, lengths):
        axis.imshow(w[:, :length].cpu().numpy(), cmap="viridis", vmin=0, vmax=1, aspect="auto")
        axis.set_xticks(range(length), ["␣" if ch == " " else ch for ch in text], fontsize=7)
        axis.set_yticks(range(len(row)), [tgt_vocab.itos[i] for i in row], fontsize=8)
        axis.set_title(text, fontsize=8)
    figure.suptitle("attention weights: output character (rows) against source character (columns)")
    figure.tight_layout()
    figure.savefig(path, dpi=80)
    plt.close(figure)


def plot_by_length(results: dict[str, dict[str, tuple[int, float]]], path: Path) -> None:
    """Grouped bars: held-out accuracy per source-length bucket, one bar per model."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    buckets = [f"{low}-{high}" for low, high in LENGTH_BUCKETS]
    figure, axis = plt.subplots(figsize=(6, 3.5))
    width = 0.8 / len(results)
    for k, (name, by_length) in enumerate(results.items()):
        axis.bar([i + k * width for i in range(len(buckets))], [by_length[b][1] for b in buckets],
                 width=width, label=f"{name} attention")
    axis.set_xticks([i + width * (len(results) - 1) / 2 for i in range(len(buckets))], buckets)
    axis.set_xlabel("source length (characters)")
    axis.set_ylabel("held-out exact match")
    axis.set_ylim(0, 1)
    axis.legend()
    figure.tight_layout()
    figure.savefig(path, dpi=80)
    plt.close(figure)


def demo_examples(held_out, count: int = 3):
    """Held-out examples spread over source lengths: short, middle and long."""
    ordered = sorted(held_out, key=lambda pair: len(dates.tokenize(pair[0])))
    return [ordered[round(q * (len(ordered) - 1))] for q in torch.linspace(0.05, 1.0, count).tolist()]


def main(argv=None) -> None:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    args.out.mkdir(parents=True, exist_ok=True)
    src_vocab, tgt_vocab = dates.source_vocab(), dates.target_vocab()
    held_out = dates.held_out_split(args.held_out, seed=args.seed + 1000)
    device = torch.device(args.device)

    compared = [args.attention] + (["additive"] if args.attention == "none" else [])
    results, accuracy = {}, {}
    for attention in compared:
        started = time.perf_counter()
        model = train(args, attention, held_out, src_vocab, tgt_vocab)
        accuracy[attention], results[attention] = evaluate(model, held_out, src_vocab, tgt_vocab, device)
        print(f"{attention} attention: held-out exact match {accuracy[attention]:.4f} on {len(held_out)} "
              f"examples, trained in {time.perf_counter() - started:.0f} s")
        if attention != "none":
            path = args.out / f"attention_{attention}.png"
            plot_attention(model, demo_examples(held_out), src_vocab, tgt_vocab, device, path)
            print(f"attention heatmap: {path}")

    print("held-out exact match by source length (characters):")
    print(f"  {'length':>8} {'examples':>9} " + " ".join(f"{name + ' attn':>14}" for name in compared))
    for low, high in LENGTH_BUCKETS:
        bucket = f"{low}-{high}"
        cells = " ".join(f"{results[name][bucket][1]:>14.3f}" for name in compared)
        print(f"  {bucket:>8} {results[compared[0]][bucket][0]:>9} {cells}")
    if len(compared) > 1:
        path = args.out / "accuracy_by_length.png"
        plot_by_length(results, path)
        print(f"accuracy by length plot: {path}")
    print(f"exact-match accuracy: {accuracy[args.attention]:.4f}")


if __name__ == "__main__":
    main()
