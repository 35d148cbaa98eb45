"""Generated token sequences for binary sentiment classification, with exact per-token foreground (pure torch).

Each sentence is right-padded token ids over the fixed :data:`VOCABULARY` (id ``PAD_ID`` = 0 is ``<pad>``):

- 1 to 3 **sentiment words** (``POSITIVE`` or ``NEGATIVE``; the intensity variants, ``good``/``great``/
  ``superb``, all count the same), each preceded by the **negation** ``not`` with probability 0.4.
- **Labelling rule**: a sentiment word's effective polarity is +1 for a positive word and −1 for a negative one,
  flipped when the token right before it is ``not``. The label is 1 (positive) when the sum of the effective
  polarities is positive and 0 (negative) when it is negative; the generator never makes a tie. Every sentiment
  word of a sentence has the same effective polarity, except that with probability 0.15 one word of a
  three-word sentence disagrees (it is outvoted 2 to 1).
- The **foreground** is exactly the sentiment words and the ``not`` right before them: the tokens the label is
  computed from. ``not`` before any other word (a decoy, in about a fifth of the sentences) is background.
- **Background**: neutral filler words and topic nouns (``FILLERS``), and one **shortcut** word
  (``SHORTCUTS``). With probability ``background_bias`` the shortcut is tied to the class (``SHORTCUTS[label]``),
  else it is drawn at random, so that a shortcut exists as ``background_bias`` makes one for the images.

Everything is vectorised over sentences and drawn from generators seeded by ``(seed, stream, chunk)``, so a
split is the same on every machine and for every number of sentences asked for (sentence ``i`` does not depend
on how many follow it).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from kd_probe.data.shapes import _check_seed, _chunk_generator

__all__ = [
    "FILLERS",
    "NEGATION",
    "NEGATIVE",
    "PAD_ID",
    "POSITIVE",
    "SHORTCUTS",
    "VOCABULARY",
    "SentenceSet",
    "decode",
    "generate_sentences",
    "sentiment_label",
]

PAD_ID = 0
NEGATION = "not"
POSITIVE = ("good", "great", "superb", "nice", "fine", "lovely", "brilliant", "enjoyable")
NEGATIVE = ("bad", "awful", "dreadful", "poor", "dull", "boring", "terrible", "weak")
SHORTCUTS = ("tonight", "yesterday")  # class 0, class 1 when the shortcut is tied to the class
FILLERS = (
    *("the", "a", "this", "that", "it", "was", "is", "and", "but", "with", "of", "very", "quite", "really"),
    *("so", "just", "movie", "film", "plot", "acting", "story", "ending", "music", "cast", "scene", "script"),
    *("director", "camera", "actor", "dialogue", "pace", "sequel"),
)
VOCABULARY = ("<pad>", *POSITIVE, *NEGATIVE, NEGATION, *SHORTCUTS, *FILLERS)

_CHUNK = 256  # sentences drawn from one generator; fixed so that results never depend on batching
_MAX_WORDS = 3  # sentiment words per sentence
_NEGATED = 0.4  # probability that a sentiment word is preceded by `not`
_OUTVOTED = 0.15  # probability that one word of a three-word sentence has the other effective polarity
_DECOY = 0.2  # probability of a `not` before a filler word (background)
_SPECIAL = _MAX_WORDS + 2  # unit slots: the sentiment words, the decoy and the shortcut
_MIN_LENGTH = 2 * _MAX_WORDS + 2  # room for three negated words, the shortcut and one filler
_POSITIVE_IDS = torch.tensor([VOCABULARY.index(w) for w in POSITIVE])
_NEGATIVE_IDS = torch.tensor([VOCABULARY.index(w) for w in NEGATIVE])
_FILLER_IDS = torch.tensor([VOCABULARY.index(w) for w in FILLERS])
_SHORTCUT_IDS = torch.tensor([VOCABULARY.index(w) for w in SHORTCUTS])
_NOT_ID = VOCABULARY.index(NEGATION)


@dataclass
class SentenceSet:
    """A generated split: ``tokens`` int64 ``[N, T]`` (right-padded with ``PAD_ID``), ``labels`` int64 ``[N]``
    (0 negative, 1 positive), ``foreground`` bool ``[N, T]`` (true exactly on the sentiment words and the
    negations that apply to them), ``lengths`` int64 ``[N]``, and ``params``: per-sentence parameters for
    inspection and tests — ``words`` (sentiment words), ``negations`` (applied ``not``), ``outvoted`` (a word
    with the other effective polarity), ``decoy`` (a ``not`` before a filler) and ``tied`` (shortcut tied to
    the class)."""

    tokens: Tensor
    labels: Tensor
    foreground: Tensor
    lengths: Tensor
    params: dict[str, Tensor]


def sentiment_label(tokens: Tensor) -> Tensor:
    """The labelling rule applied to token ids ``[N, T]``: 1 where the sum of the sentiment words' effective
    polarities (flipped by a ``not`` right before them) is positive, else 0. Other tokens are ignored, so the
    foreground tokens alone (the rest set to ``PAD_ID``) give the same label."""
    polarity = torch.isin(tokens, _POSITIVE_IDS).long() - torch.isin(tokens, _NEGATIVE_IDS).long()
    negated = torch.zeros_like(tokens, dtype=torch.bool)
    negated[:, 1:] = tokens[:, :-1] == _NOT_ID
    return ((torch.where(negated, -polarity, polarity)).sum(1) > 0).long()


def decode(tokens: Tensor | Sequence[int], *, keep_padding: bool = False) -> list[str]:
    """The words of one sentence of token ids ``[T]`` (padding left out unless ``keep_padding``).

    Example::

        >>> decode(torch.tensor([VOCABULARY.index("not"), VOCABULARY.index("good"), PAD_ID]))
        ['not', 'good']
    """
    ids = tokens.tolist() if isinstance(tokens, Tensor) else list(tokens)
    return [VOCABULARY[i] for i in ids if keep_padding or i != PAD_ID]


def _sample_chunk(
    count: int, min_length: int, max_length: int, background_bias: float, g: torch.Generator
) -> dict[str, Tensor]:
    """Draw every random number a chunk of sentences needs, as units of one or two tokens in ``[count, slots]``
    unit slots; laying the units out as tokens is then a pure function (:func:`_layout`)."""

    def rand(*shape: int) -> Tensor:
        return torch.rand(*shape, generator=g)

    labels = torch.randint(2, (count,), generator=g)
    lengths = torch.randint(min_length, max_length + 1, (count,), generator=g)
    words = torch.randint(1, _MAX_WORDS + 1, (count,), generator=g)
    present = torch.arange(_MAX_WORDS) < words.unsqueeze(1)
    negated = (rand(count, _MAX_WORDS) < _NEGATED) & present
    sign = 2 * labels.unsqueeze(1) - 1  # the label's polarity, ±1
    outvoted = (rand(count) < _OUTVOTED) & (words == _MAX_WORDS)
    dissenter = torch.randint(_MAX_WORDS, (count,), generator=g)
    effective = torch.where(outvoted.unsqueeze(1) & (torch.arange(_MAX_WORDS) == dissenter.unsqueeze(1)), -sign, sign)
    surface = torch.where(negated, -effective, effective)  # the polarity of the word as written
    word = torch.where(
        surface > 0,
        _POSITIVE_IDS[torch.randint(len(POSITIVE), (count, _MAX_WORDS), generator=g)],
        _NEGATIVE_IDS[torch.randint(len(NEGATIVE), (count, _MAX_WORDS), generator=g)],
    )
    units = lengths - negated.sum(1)  # before the decoy, which takes two tokens
    decoy = (rand(count) < _DECOY) & (units - 1 >= _SPECIAL)
    tied = rand(count) < background_bias
    shortcut = _SHORTCUT_IDS[torch.where(tied, labels, torch.randint(len(SHORTCUTS), (count,), generator=g))]
    slots = max_length
    order = torch.where(torch.arange(slots) < (units - decoy.long()).unsqueeze(1), rand(count, slots), 2.0).argsort(1)
    return {
        "labels": labels,
        "lengths": lengths,
        "words": words,
        "negated": negated,
        "outvoted": outvoted,
        "word": word,
        "decoy": decoy,
        "decoy_filler": _FILLER_IDS[torch.randint(len(FILLERS), (count,), generator=g)],
        "tied": tied,
        "shortcut": shortcut,
        "filler": _FILLER_IDS[torch.randint(len(FILLERS), (count, slots), generator=g)],
        "slot": order[:, :_SPECIAL],  # where the three sentiment words, the decoy and the shortcut go
    }


def _layout(p: dict[str, Tensor], max_length: int) -> tuple[Tensor, Tensor]:
    """Lay the units of a chunk out as right-padded tokens ``[B, T]`` and the foreground ``[B, T]``."""
    count, slots = p["filler"].shape
    rows = torch.arange(count).unsqueeze(1)
    present = torch.cat(
        [
            torch.arange(_MAX_WORDS) < p["words"].unsqueeze(1),
            p["decoy"].unsqueeze(1),
            torch.ones(count, 1, dtype=torch.bool),
        ],
        1,
    )
    special_first = torch.cat(
        [torch.where(p["negated"], _NOT_ID, p["word"]), torch.full((count, 1), _NOT_ID), p["shortcut"].unsqueeze(1)], 1
    )
    special_second = torch.cat([p["word"], p["decoy_filler"].unsqueeze(1), torch.zeros(count, 1, dtype=torch.long)], 1)
    special_width = (
        1 + torch.cat([p["negated"], p["decoy"].unsqueeze(1), torch.zeros(count, 1, dtype=torch.bool)], 1).long()
    )
    special_foreground = torch.cat([present[:, :_MAX_WORDS], torch.zeros(count, 2, dtype=torch.bool)], 1)
    # absent specials (fewer words, no decoy) stay filler units of one token
    slot = torch.where(present, p["slot"], slots)  # an absent special writes to a dropped column
    first = torch.cat([p["filler"], torch.zeros(count, 1, dtype=torch.long)], 1).scatter(1, slot, special_first)
    second = torch.zeros(count, slots + 1, dtype=torch.long).scatter(1, slot, special_second)
    width = torch.ones(count, slots + 1, dtype=torch.long).scatter(1, slot, special_width)
    foreground = torch.zeros(count, slots + 1, dtype=torch.bool).scatter(1, slot, special_foreground)
    first, second, width, foreground = first[:, :slots], second[:, :slots], width[:, :slots], foreground[:, :slots]
    units = p["lengths"] - p["negated"].sum(1) - p["decoy"].long()
    used = torch.arange(slots) < units.unsqueeze(1)
    start = torch.where(used, width.cumsum(1) - width, max_length)  # unused units write to a dropped column
    tokens = torch.zeros(count, max_length + 1, dtype=torch.long)
    tokens[rows, start] = first
    tokens[rows, torch.where(used & (width == 2), start + 1, max_length)] = second
    flags = torch.zeros(count, max_length + 1, dtype=torch.bool)
    flags[rows, start] = foreground
    flags[rows, torch.where(used & (width == 2), start + 1, max_length)] = foreground
    return tokens[:, :max_length], flags[:, :max_length]


def generate_sentences(
    count: int,
    *,
    min_length: int = 8,
    max_length: int = 24,
    background_bias: float = 0.0,
    seed: int = 0,
    stream: int = 0,
) -> SentenceSet:
    """Generate ``count`` sentences labelled by the rule of the module docstring (see :func:`sentiment_label`).
    The same ``(seed, stream)`` always gives the same sentences.

    Args:
        count: number of sentences.
        min_length: fewest tokens in a sentence (≥ 8, room for three negated sentiment words).
        max_length: most tokens in a sentence, and the padded length ``T`` of ``tokens``.
        background_bias: probability in [0, 1] that a sentence's shortcut word is tied to its class.
        seed: random seed.
        stream: independent stream of sentences for the same seed (the data module uses one per split).

    Example::

        >>> sentences = generate_sentences(4, max_length=16, seed=1)
        >>> sentences.tokens.shape, sentences.foreground.dtype
        (torch.Size([4, 16]), torch.bool)
        >>> bool(sentiment_label(sentences.tokens).equal(sentences.labels))
        True
    """
    _check_options(count=count, min_length=min_length, max_length=max_length, background_bias=background_bias)
    _check_seed("seed", seed)
    _check_seed("stream", stream)
    tokens, foreground, params = [], [], []
    for chunk in range(max(1, math.ceil(count / _CHUNK))):
        n = min(_CHUNK, count - chunk * _CHUNK)
        g = _chunk_generator(seed, stream, chunk)
        p = {k: v[:n] for k, v in _sample_chunk(_CHUNK, min_length, max_length, background_bias, g).items()}
        chunk_tokens, chunk_foreground = _layout(p, max_length)
        tokens.append(chunk_tokens)
        foreground.append(chunk_foreground)
        params.append(p)
    merged = {k: torch.cat([p[k] for p in params]) for k in ("words", "outvoted", "decoy", "tied")}
    merged["negations"] = torch.cat([p["negated"].sum(1) for p in params])
    labels, lengths = torch.cat([p["labels"] for p in params]), torch.cat([p["lengths"] for p in params])
    return SentenceSet(torch.cat(tokens), labels, torch.cat(foreground), lengths, merged)


def _check_options(*, count: int, min_length: int, max_length: int, background_bias: float) -> None:
    if isinstance(count, bool) or not isinstance(count, int) or count < 0:
        raise ValueError(f"`count` must be a non-negative int, got {count!r}.")
    if isinstance(min_length, bool) or not isinstance(min_length, int) or min_length < _MIN_LENGTH:
        raise ValueError(
            f"`min_length` must be an int of at least {_MIN_LENGTH} tokens (room for {_MAX_WORDS} negated "
            f"sentiment words), got {min_length!r}."
        )
    if isinstance(max_length, bool) or not isinstance(max_length, int) or max_length < min_length:
        raise ValueError(f"`max_length` must be an int of at least `min_length`={min_length}, got {max_length!r}.")
    probability = isinstance(background_bias, (int, float)) and not isinstance(background_bias, bool)
    if not probability or not 0.0 <= float(background_bias) <= 1.0:
        raise ValueError(f"`background_bias` must be a probability in [0, 1], got {background_bias!r}.")
