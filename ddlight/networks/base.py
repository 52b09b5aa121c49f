"""Base class shared by every network of :mod:`ddlight.networks`."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence

from torch import Tensor, nn

#: Shape of one input example: ``(channels, frequency bins, time frames)``.
InShape = tuple[int, int, int]


def as_in_shape(in_shape: Sequence[int]) -> InShape:
    """Validate an input shape and return it as a tuple.

    Args:
        in_shape: ``(C, F, T)`` of one example (a list, e.g. from a YAML config, is accepted).

    Returns:
        The shape as a tuple of three positive ints.

    Raises:
        ValueError: If ``in_shape`` does not hold exactly three positive ints.
    """
    shape = tuple(int(s) for s in in_shape)
    if len(shape) != 3 or min(shape) < 1:
        raise ValueError(f"in_shape must be (C, F, T) with positive sizes, got {tuple(in_shape)}")
    return shape  # type: ignore[return-value]


class AudioNetwork(nn.Module, ABC):
    """A classifier of audio features ``[B, C, F, T]``: ``forward(x) = classifier(embed(x))``.

    Subclasses build ``self.classifier`` (input size ``self.embed_dim``) and implement
    :meth:`embed`. ``forward`` keeps no Python-side state, so every network works under
    :func:`torch.func.functional_call` with a dictionary of (non-leaf) parameter tensors, which is
    how distillers unroll differentiable SGD through it.

    Attributes:
        in_shape: ``(C, F, T)`` of one example.
        num_classes: Number of output logits.
        embed_dim: Size of the feature vector returned by :meth:`embed`.
    """

    classifier: nn.Module
    embed_dim: int

    def __init__(self, in_shape: Sequence[int], num_classes: int) -> None:
        """Store and validate the input shape and number of classes.

        Args:
            in_shape: ``(C, F, T)`` of one example.
            num_classes: Number of classes (at least 1).

        Raises:
            ValueError: If ``in_shape`` is invalid or ``num_classes`` < 1.
        """
        super().__init__()
        if num_classes < 1:
            raise ValueError(f"num_classes must be at least 1, got {num_classes}")
        self.in_shape = as_in_shape(in_shape)
        self.num_classes = int(num_classes)

    @abstractmethod
    def embed(self, x: Tensor) -> Tensor:
        """Features before the final linear layer.

        Args:
            x: Input features ``[B, C, F, T]``.

        Returns:
            Embeddings ``[B, embed_dim]``.
        """

    def forward(self, x: Tensor) -> Tensor:
        """Class logits.

        Args:
            x: Input features ``[B, C, F, T]``.

        Returns:
            Logits ``[B, num_classes]``.
        """
        return self.classifier(self.embed(x))
