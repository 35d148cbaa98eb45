"""The built-in text data: a LightningDataModule of generated sentiment sentences with per-token foreground."""

from __future__ import annotations

from torch import Tensor
from torch.utils.data import Dataset

from kd_probe.core.units import Tokens
from kd_probe.data._generated import GeneratedDataModule
from kd_probe.data.sentiment import PAD_ID, VOCABULARY, _check_options, generate_sentences
from kd_probe.data.shapes import _check_seed

__all__ = ["SentimentDataModule", "TokenDataset"]


class TokenDataset(Dataset):
    """In-memory ``(tokens, label, foreground)`` samples: int64 ``[T]``, int64, bool ``[T]``.

    ``params`` optionally holds per-sentence metadata (the generator's parameters for the built-in data).

    Example::

        >>> ds = TokenDataset(torch.tensor([[5, 2, 0]]), torch.tensor([1]), torch.tensor([[False, True, False]]))
        >>> tokens, label, foreground = ds[0]
        >>> tokens.tolist(), int(label), foreground.dtype
        ([5, 2, 0], 1, torch.bool)
    """

    def __init__(
        self, tokens: Tensor, labels: Tensor, foreground: Tensor, *, params: dict[str, Tensor] | None = None
    ) -> None:
        if not (len(tokens) == len(labels) == len(foreground)):
            raise ValueError(
                f"tokens, labels and foreground must have the same length, got {len(tokens)}, {len(labels)}, "
                f"{len(foreground)}."
            )
        if tokens.ndim != 2 or foreground.shape != tokens.shape:
            raise ValueError(
                f"tokens must be [N, T] and foreground [N, T] of the same size, got tokens {tuple(tokens.shape)} "
                f"and foreground {tuple(foreground.shape)}."
            )
        self.tokens, self.labels, self.foreground = tokens.long(), labels.long(), foreground.bool()
        self.params = params or {}  # per-sentence generation parameters, when the data is generated

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index: int) -> tuple[Tensor, Tensor, Tensor]:
        return self.tokens[index], self.labels[index], self.foreground[index]


class SentimentDataModule(GeneratedDataModule[TokenDataset]):
    """Generated sentences for binary sentiment classification, with exact per-token foreground.

    Every sample is ``(tokens, label, foreground)``: int64 token ids ``[T]`` (``T = max_length``, right-padded
    with :attr:`pad_id`; words in :attr:`vocabulary`), an int label (0 negative, 1 positive) and a bool
    ``[T]`` that is true exactly on the tokens the label is computed from (see
    :func:`~kd_probe.data.generate_sentences`). Nothing is downloaded; each split is generated in
    :meth:`setup` from its own random stream, so it is the same for a given ``seed`` whatever the sizes of
    the other splits. The ``probe`` split is held out for the explanation probes and never used for training
    or validation; :attr:`units` (``Tokens(embedding="embedding", pad_id=0)``) tells the probes that the
    inputs are token sequences whose noise enters at the model's ``embedding`` module.

    Args:
        train_size, val_size, test_size, probe_size: sentences per split.
        min_length: fewest tokens in a sentence (≥ 8).
        max_length: most tokens in a sentence, the padded length of every item.
        background_bias: probability that a sentence's shortcut word is tied to its class; 0 means the
            background carries no label information.
        batch_size: batch size of every loader.
        num_workers: worker processes of every loader.
        seed: the data seed.
        with_index: the training loader's batches end with each sample's dataset index (``(..., index)``), as
            :class:`~kd_probe.losses.CRD` needs.

    Example::

        >>> dm = SentimentDataModule(train_size=64, val_size=32, test_size=32, probe_size=8, max_length=16)
        >>> dm.setup("fit")
        >>> tokens, label, foreground = dm.train_set[0]
        >>> tuple(tokens.shape), tokens.dtype, foreground.dtype
        ((16,), torch.int64, torch.bool)
    """

    num_classes = 2
    noun = "sentences"
    class_names = ("negative", "positive")
    pad_id = PAD_ID
    vocabulary = VOCABULARY
    vocab_size = len(VOCABULARY)
    units = Tokens(embedding="embedding", pad_id=PAD_ID)

    def __init__(
        self,
        train_size: int = 4000,
        val_size: int = 1000,
        test_size: int = 1000,
        probe_size: int = 64,
        min_length: int = 8,
        max_length: int = 24,
        background_bias: float = 0.0,
        batch_size: int = 64,
        num_workers: int = 0,
        seed: int = 0,
        with_index: bool = False,
    ) -> None:
        super().__init__()
        sizes = dict(train_size=train_size, val_size=val_size, test_size=test_size, probe_size=probe_size)
        self._check_loading(sizes, batch_size, num_workers)
        _check_options(count=0, min_length=min_length, max_length=max_length, background_bias=background_bias)
        _check_seed("seed", seed)
        self.save_hyperparameters()
        self.min_length, self.max_length = min_length, max_length
        self.background_bias, self.seed = float(background_bias), seed
        self.train_size, self.val_size, self.test_size, self.probe_size = train_size, val_size, test_size, probe_size
        self._init_splits(batch_size, num_workers, with_index)

    def _generate(self, name: str, stream: int) -> TokenDataset:
        sentences = generate_sentences(
            getattr(self, f"{name}_size"),
            min_length=self.min_length,
            max_length=self.max_length,
            background_bias=self.background_bias,
            seed=self.seed,
            stream=stream,
        )
        return TokenDataset(sentences.tokens, sentences.labels, sentences.foreground, params=sentences.params)
