"""A small transformer encoder for `python -m jacbench run --model` and `jacbench.compare`.

A linear embedding of each token's features, one nn.TransformerEncoderLayer (multi-head
self-attention, feed-forward, LayerNorm, dropout), a final LayerNorm, mean pooling over the
sequence and a linear head. Dropout is inactive: the suite runs the model in eval mode. One
sample is a sequence of shape (tokens, features); samples do not interact (batch_first).

    python -m jacbench run --model examples.transformer_layer:make_net --input-shape 6,8 \\
        --batch 4,16 --outputs 4
"""
from __future__ import annotations

from torch import nn


class TinyTransformer(nn.Module):
    def __init__(self, features: int = 8, d_model: int = 16, heads: int = 2, ff: int = 32,
                 classes: int = 4, dropout: float = 0.1):
        super().__init__()
        self.embed = nn.Linear(features, d_model)
        self.layer = nn.TransformerEncoderLayer(d_model, heads, ff, dropout=dropout,
                                                batch_first=True)
        self.norm = nn.LayerNorm(d_model)
        self.head = nn.Linear(d_model, classes)

    def forward(self, x):  # x: (batch, tokens, features)
        h = self.layer(self.embed(x))
        return self.head(self.norm(h).mean(dim=1))


def make_net(features: int = 8, d_model: int = 16, heads: int = 2, classes: int = 4) -> nn.Module:
    return TinyTransformer(features, d_model, heads, 2 * d_model, classes).eval()


def make_tiny() -> nn.Module:
    """The test size: 4 features, width 8, 2 heads, 3 classes."""
    return make_net(features=4, d_model=8, heads=2, classes=3)


def make_wide() -> nn.Module:
    """Width 64 (feed-forward 128), 4 heads, 4 classes: a full NTK of batch 32 takes tens of
    milliseconds, the size issue 18's comparison asks for."""
    return make_net(features=8, d_model=64, heads=4, classes=4)
