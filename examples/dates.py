"""A translation task generated in code: dates written in many formats -> ISO dates.

"the twenty-third of september, nineteen eighty-seven", "9/23/1987", "23.09.1987",
"wednesday, sep 23rd '87" all translate to "1987-09-23". Sources are read character by character
(8 to 76 characters), so where the output digits come from moves around the source from format to
format, which is what attention has to learn, and a long source is many steps for a fixed-size state
to carry. Month/day order is fixed by the separator ("/" is month first, "." and "-" are day first),
so the order has to be read, not guessed.
"""

from __future__ import annotations

import datetime
import random
from dataclasses import dataclass

import torch

FIRST_DAY = datetime.date(1950, 1, 1)
LAST_DAY = datetime.date(2049, 12, 31)

MONTHS = ["january", "february", "march", "april", "may", "june", "july", "august", "september",
          "october", "november", "december"]
WEEKDAYS = ["monday", "tuesday", "wednesday", "thursday", "friday", "saturday", "sunday"]
UNITS = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten",
         "eleven", "twelve", "thirteen", "fourteen", "fifteen", "sixteen", "seventeen", "eighteen",
         "nineteen"]
TENS = ["", "", "twenty", "thirty", "forty", "fifty", "sixty", "seventy", "eighty", "ninety"]
ORDINAL_UNITS = ["", "first", "second", "third", "fourth", "fifth", "sixth", "seventh", "eighth",
                 "ninth", "tenth", "eleventh", "twelfth", "thirteenth", "fourteenth", "fifteenth",
                 "sixteenth", "seventeenth", "eighteenth", "nineteenth"]
ORDINAL_TENS = {20: "twentieth", 30: "thirtieth"}

PAD, BOS, EOS, UNK = "<pad>", "<s>", "</s>", "<unk>"
TARGET_LENGTH = len("1987-09-23")


def number_words(n: int) -> str:
    """0..99 in words: 7 -> "seven", 87 -> "eighty-seven"."""
    if n < 20:
        return UNITS[n]
    tens, unit = divmod(n, 10)
    return TENS[tens] + ("" if unit == 0 else "-" + UNITS[unit])


def ordinal_words(n: int) -> str:
    """1..31 as an ordinal in words: 23 -> "twenty-third"."""
    if n < 20:
        return ORDINAL_UNITS[n]
    tens, unit = divmod(n, 10)
    return ORDINAL_TENS[n] if unit == 0 else TENS[tens] + "-" + ORDINAL_UNITS[unit]


def ordinal_suffix(n: int) -> str:
    """23 -> "23rd", 11 -> "11th"."""
    if 10 <= n % 100 <= 20:
        return f"{n}th"
    return f"{n}" + {1: "st", 2: "nd", 3: "rd"}.get(n % 10, "th")


def year_words(year: int, rng: random.Random) -> str:
    """1950..2049 in words: 1987 -> "nineteen eighty-seven"; 2005 -> "two thousand five" or
    "two thousand and five"; 2012 -> "two thousand twelve" or "twenty twelve"."""
    century, rest = divmod(year, 100)
    if century == 20 and (rest < 10 or rng.random() < 0.5):
        if rest == 0:
            return "two thousand"
        return "two thousand " + rng.choice(["", "and "]) + number_words(rest)
    return f"{number_words(century)} {number_words(rest)}"


def _formats(d: datetime.date, rng: random.Random) -> list[str]:
    month, month3, weekday = MONTHS[d.month - 1], MONTHS[d.month - 1][:3], WEEKDAYS[d.weekday()]
    yy = f"{d.year % 100:02d}"
    return [
        f"{d.month}/{d.day}/{d.year}",
        f"{d.month:02d}/{d.day:02d}/{yy}",
        f"{d.day:02d}.{d.month:02d}.{d.year}",
        f"{d.day}-{month3}-{yy}",
        f"{month} {d.day}, {d.year}",
        f"{d.day} {month3} {d.year}",
        f"{weekday}, {month} {ordinal_suffix(d.day)}, {d.year}",
        f"{d.year}, {month} {d.day}",
        f"{month3} {ordinal_suffix(d.day)} '{yy}",
        f"the {ordinal_words(d.day)} of {month}, {year_words(d.year, rng)}",
        f"{month} the {ordinal_words(d.day)}, {d.year}",
        f"{weekday} the {ordinal_words(d.day)} of {month} {year_words(d.year, rng)}",
        f"{ordinal_suffix(d.day)} {month} {year_words(d.year, rng)}",
        f"on {weekday}, {month} {ordinal_words(d.day)} in the year {year_words(d.year, rng)}",
    ]


def tokenize(text: str) -> list[str]:
    """Source tokens are characters: "sep 23rd" -> ["s", "e", "p", " ", "2", "3", "r", "d"]."""
    return list(text)


def random_pair(rng: random.Random) -> tuple[str, str]:
    """One (source text, ISO date) pair: a uniformly drawn day in a uniformly drawn format."""
    day = FIRST_DAY + datetime.timedelta(days=rng.randrange((LAST_DAY - FIRST_DAY).days + 1))
    return rng.choice(_formats(day, rng)), day.isoformat()


class Vocab:
    """Token <-> id; ids 0..3 are PAD, BOS, EOS, UNK."""

    def __init__(self, tokens: list[str]) -> None:
        self.itos = [PAD, BOS, EOS, UNK] + sorted(set(tokens) - {PAD, BOS, EOS, UNK})
        self.stoi = {token: i for i, token in enumerate(self.itos)}

    def __len__(self) -> int:
        return len(self.itos)

    def encode(self, tokens: list[str]) -> list[int]:
        return [self.stoi.get(token, self.stoi[UNK]) for token in tokens]

    def decode(self, ids: list[int]) -> str:
        """Ids up to (not including) the first EOS, joined without spaces."""
        out = []
        for i in ids:
            if i == self.stoi[EOS]:
                break
            out.append(self.itos[i])
        return "".join(out)


def source_vocab() -> Vocab:
    """Every character a format can produce: letters, digits, space and "/.-,'"."""
    return Vocab(list("abcdefghijklmnopqrstuvwxyz0123456789 /.-,'"))


def target_vocab() -> Vocab:
    return Vocab(list("0123456789-"))


@dataclass
class Batch:
    """A padded batch. src [B, S] ids, src_lengths [B] int64 (CPU), tgt [B, TARGET_LENGTH + 1] ids
    ending in EOS, texts: the source strings, answers: the ISO dates."""

    src: torch.Tensor
    src_lengths: torch.Tensor
    tgt: torch.Tensor
    texts: list[str]
    answers: list[str]

    def to(self, device: torch.device) -> "Batch":
        return Batch(self.src.to(device), self.src_lengths, self.tgt.to(device), self.texts, self.answers)


def make_batch(pairs: list[tuple[str, str]], src_vocab: Vocab, tgt_vocab: Vocab) -> Batch:
    sources = [src_vocab.encode(tokenize(text)) for text, _ in pairs]
    lengths = torch.tensor([len(s) for s in sources], dtype=torch.int64)
    src = torch.full((len(pairs), int(lengths.max())), src_vocab.stoi[PAD], dtype=torch.int64)
    for row, ids in enumerate(sources):
        src[row, : len(ids)] = torch.tensor(ids)
    eos = tgt_vocab.stoi[EOS]
    tgt = torch.tensor([tgt_vocab.encode(list(answer)) + [eos] for _, answer in pairs], dtype=torch.int64)
    return Batch(src, lengths, tgt, [text for text, _ in pairs], [answer for _, answer in pairs])


def held_out_split(count: int, seed: int) -> list[tuple[str, str]]:
    """`count` distinct pairs for evaluation; training draws reject these source strings."""
    rng = random.Random(seed)
    pairs: dict[str, str] = {}
    while len(pairs) < count:
        text, answer = random_pair(rng)
        pairs[text] = answer
    return list(pairs.items())


def training_batches(batch_size: int, held_out: list[tuple[str, str]], seed: int,
                     src_vocab: Vocab, tgt_vocab: Vocab, pool: int = 16):
    """An endless stream of fresh training batches none of whose sources is in `held_out`.
    Pairs are drawn `pool` batches at a time and grouped by source length, so that a batch is
    padded to little more than its own longest source; the batches then come in random order."""
    rng = random.Random(seed)
    excluded = {text for text, _ in held_out}
    while True:
        pairs = []
        while len(pairs) < batch_size * pool:
            pair = random_pair(rng)
            if pair[0] not in excluded:
                pairs.append(pair)
        pairs.sort(key=lambda pair: len(pair[0]))
        groups = [pairs[start:start + batch_size] for start in range(0, len(pairs), batch_size)]
        rng.shuffle(groups)
        for group in groups:
            yield make_batch(group, src_vocab, tgt_vocab)
