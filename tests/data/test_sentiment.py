import pytest
import torch

from kd_probe.callbacks._units import read_probe_inputs
from kd_probe.core.units import Tokens
from kd_probe.data import SentimentDataModule, generate_sentences
from kd_probe.data.sentiment import (
    _CHUNK,
    NEGATION,
    NEGATIVE,
    PAD_ID,
    POSITIVE,
    SHORTCUTS,
    VOCABULARY,
    decode,
    sentiment_label,
)


def _rule(words: list[str]) -> int:
    """The documented labelling rule, written out again word by word: the sum of the sentiment words'
    polarities, each flipped by a `not` right before it; positive sum → 1, negative → 0, never a tie."""
    total = 0
    for i, word in enumerate(words):
        if word in POSITIVE or word in NEGATIVE:
            polarity = 1 if word in POSITIVE else -1
            total += -polarity if i > 0 and words[i - 1] == NEGATION else polarity
    assert total != 0, f"a tie: {words}"
    return int(total > 0)


def test_same_seed_same_sentences_and_different_seed_or_stream_different_sentences() -> None:
    a, b = generate_sentences(300, seed=5), generate_sentences(300, seed=5)
    assert (
        torch.equal(a.tokens, b.tokens) and torch.equal(a.labels, b.labels) and torch.equal(a.foreground, b.foreground)
    )
    assert not torch.equal(a.tokens, generate_sentences(300, seed=6).tokens)
    assert not torch.equal(a.tokens, generate_sentences(300, seed=5, stream=1).tokens)


def test_a_sentence_does_not_depend_on_how_many_follow_it() -> None:
    many = generate_sentences(2 * _CHUNK + 3, seed=2)
    for count in (7, _CHUNK + 1):
        few = generate_sentences(count, seed=2)
        assert torch.equal(many.tokens[:count], few.tokens) and torch.equal(many.foreground[:count], few.foreground)
        assert torch.equal(many.labels[:count], few.labels) and torch.equal(many.lengths[:count], few.lengths)


def test_shapes_dtypes_lengths_and_padding() -> None:
    s = generate_sentences(500, min_length=9, max_length=20, seed=1)
    assert s.tokens.shape == s.foreground.shape == (500, 20) and s.tokens.dtype == s.lengths.dtype == torch.int64
    assert s.labels.dtype == torch.int64 and s.foreground.dtype == torch.bool and set(s.labels.tolist()) == {0, 1}
    assert int(s.lengths.min()) == 9 and int(s.lengths.max()) == 20
    real = torch.arange(20) < s.lengths.unsqueeze(1)
    assert torch.equal(s.tokens != PAD_ID, real)  # right-padded, no padding inside a sentence
    assert not (s.foreground & ~real).any()  # foreground never on padding
    assert s.foreground.any(1).all() and (real & ~s.foreground).any(1).all()  # every sentence has both
    assert 0.4 < s.labels.float().mean() < 0.6


def test_the_label_follows_from_the_foreground_tokens_alone_by_the_documented_rule() -> None:
    s = generate_sentences(700, seed=3)
    for tokens, foreground, label in zip(s.tokens, s.foreground, s.labels.tolist(), strict=True):
        words = decode(tokens)
        assert _rule(words) == label
        assert _rule(decode(tokens[foreground])) == label  # the foreground words, in order, suffice
        # the foreground is exactly the sentiment words and the `not` right before one
        is_word = [w in POSITIVE or w in NEGATIVE for w in words]
        expected = [
            is_word[i] or (w == NEGATION and i + 1 < len(words) and is_word[i + 1]) for i, w in enumerate(words)
        ]
        assert foreground[: len(words)].tolist() == expected, words
    assert torch.equal(sentiment_label(s.tokens), s.labels)
    assert torch.equal(sentiment_label(torch.where(s.foreground, s.tokens, PAD_ID)), s.labels)


def test_the_hard_cases_occur() -> None:
    s = generate_sentences(1000, seed=4)
    background_not = int(((s.tokens == VOCABULARY.index(NEGATION)) & ~s.foreground).any(1).sum())
    assert 120 < background_not < 300  # decoys: `not` before a filler word, background
    assert 0.3 < float((s.params["negations"] > 0).float().mean()) < 0.8
    assert 30 < int(s.params["outvoted"].sum()) < 110  # one sentiment word outvoted 2 to 1
    assert set(s.params["words"].tolist()) == {1, 2, 3}


def _shortcut_agreement(background_bias: float) -> tuple[float, torch.Tensor]:
    s = generate_sentences(4000, background_bias=background_bias, seed=7)
    ids = torch.tensor([VOCABULARY.index(w) for w in SHORTCUTS])
    present = (s.tokens.unsqueeze(-1) == ids).sum(1)  # [N, 2]: occurrences of each shortcut word
    assert (present.sum(1) == 1).all() and not (s.foreground & torch.isin(s.tokens, ids)).any()
    return float((present.argmax(1) == s.labels).float().mean()), s.params["tied"]


def test_background_bias_makes_the_shortcut_word_predictive() -> None:
    agreement, tied = _shortcut_agreement(1.0)
    assert agreement == 1.0 and bool(tied.all())
    agreement, tied = _shortcut_agreement(0.0)
    assert abs(agreement - 0.5) < 0.03 and not tied.any()
    agreement, _ = _shortcut_agreement(0.5)
    assert abs(agreement - 0.75) < 0.03


def test_decode() -> None:
    ids = [VOCABULARY.index(w) for w in ("not", "good", "movie")] + [PAD_ID]
    assert decode(torch.tensor(ids)) == ["not", "good", "movie"] and decode(ids, keep_padding=True)[-1] == "<pad>"
    assert VOCABULARY[PAD_ID] == "<pad>" and len(set(VOCABULARY)) == len(VOCABULARY)


@pytest.mark.parametrize(
    ("options", "message"),
    [
        (dict(count=-1), "`count` must be a non-negative int, got -1."),
        (
            dict(min_length=7),
            "`min_length` must be an int of at least 8 tokens (room for 3 negated sentiment words), got 7.",
        ),
        (dict(min_length=10, max_length=9), "`max_length` must be an int of at least `min_length`=10, got 9."),
        (dict(background_bias=1.5), "`background_bias` must be a probability in [0, 1], got 1.5."),
        (dict(seed=-2), "`seed` must be a non-negative int, got -2."),
        (dict(stream=0.5), "`stream` must be a non-negative int, got 0.5."),
    ],
)
def test_bad_generator_arguments_are_refused_in_one_sentence(options: dict, message: str) -> None:
    count = options.pop("count", 4)
    with pytest.raises(ValueError) as error:
        generate_sentences(count, **options)
    assert str(error.value) == message


def _dm(**kw: object) -> SentimentDataModule:
    options: dict[str, object] = dict(
        train_size=50, val_size=20, test_size=20, probe_size=8, batch_size=16, max_length=16
    )
    options.update(kw)
    return SentimentDataModule(**options)  # type: ignore[arg-type]


def test_splits_have_their_sizes_are_reproducible_and_differ() -> None:
    a, b = _dm(), _dm()
    a.setup("fit")
    assert (len(a.train_set), len(a.val_set), len(a.test_set), len(a.probe_set)) == (50, 20, 20, 8)
    for split in ("train_set", "val_set", "probe_set"):
        assert torch.equal(getattr(a, split).tokens, getattr(b, split).tokens)
    assert not torch.equal(_dm(seed=1).train_set.tokens, a.train_set.tokens)
    assert torch.equal(_dm(train_size=10).probe_set.tokens, _dm(train_size=90).probe_set.tokens)
    train = a.train_set.tokens
    for other in (a.val_set.tokens, a.test_set.tokens, a.probe_set.tokens):
        assert not any(bool((train == row).all(1).any()) for row in other)


def test_batches_and_attributes() -> None:
    dm = _dm(background_bias=0.3)
    dm.setup("fit")
    tokens, labels, foreground = next(iter(dm.train_dataloader()))
    assert tokens.shape == foreground.shape == (16, 16) and tokens.dtype == labels.dtype == torch.int64
    assert foreground.dtype == torch.bool and labels.shape == (16,)
    assert (dm.num_classes, dm.class_names, dm.pad_id, dm.max_length) == (2, ("negative", "positive"), 0, 16)
    assert dm.vocabulary == VOCABULARY and dm.vocab_size == len(VOCABULARY) and dm.batch_size == 16
    assert dm.units == Tokens(embedding="embedding", pad_id=0) and dm.background_bias == 0.3
    probe = read_probe_inputs(dm, None, {})  # what KnowledgePointProbe reads from the data module
    assert probe.units == dm.units and probe.vocabulary == VOCABULARY
    assert probe.valid is not None and torch.equal(probe.valid, dm.probe_set.tokens != 0)
    assert torch.equal(probe.foreground, dm.probe_set.foreground)


@pytest.mark.parametrize(
    ("options", "message"),
    [
        (dict(train_size=-1), "`train_size` must be a non-negative int, got -1."),
        (dict(probe_size=True), "`probe_size` must be a non-negative int, got True."),
        (
            dict(min_length=4),
            "`min_length` must be an int of at least 8 tokens (room for 3 negated sentiment words), got 4.",
        ),
        (dict(max_length=6), "`max_length` must be an int of at least `min_length`=8, got 6."),
        (dict(background_bias=-0.1), "`background_bias` must be a probability in [0, 1], got -0.1."),
        (dict(batch_size=0), "`batch_size` must be a positive int, got 0."),
        (dict(num_workers=-1), "`num_workers` must be a non-negative int, got -1."),
        (dict(seed="1"), "`seed` must be a non-negative int, got '1'."),
    ],
)
def test_bad_data_module_arguments_are_refused_in_one_sentence(options: dict, message: str) -> None:
    with pytest.raises(ValueError) as error:
        _dm(**options)
    assert str(error.value) == message
