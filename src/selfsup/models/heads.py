"""Projection and prediction heads."""

from __future__ import annotations

from torch import Tensor, nn


class MLP(nn.Module):
    """``layers`` linear layers with BatchNorm + ReLU between them.

    SimCLR's projector is 2 layers with a ReLU between (arXiv 2002.05709, Sec. 2.1; its v2 code
    adds BN on hidden layers); ``last_bn`` adds BN without affine after the output, as
    SimCLR v2 and MoCo v3's projector do. The output layer has a bias unless BN follows it;
    ``last_bias`` overrides that (MoCo v3's code has no bias in any layer of its heads).
    """

    def __init__(self, in_dim: int, hidden_dim: int, out_dim: int, layers: int = 2, bn: bool = True,
                 last_bn: bool = False, last_bias: bool | None = None):
        super().__init__()
        mods: list[nn.Module] = []
        d = in_dim
        for _ in range(layers - 1):
            mods += [nn.Linear(d, hidden_dim, bias=not bn)]
            if bn:
                mods.append(nn.BatchNorm1d(hidden_dim))
            mods.append(nn.ReLU(inplace=True))
            d = hidden_dim
        mods.append(nn.Linear(d, out_dim, bias=not last_bn if last_bias is None else last_bias))
        if last_bn:
            mods.append(nn.BatchNorm1d(out_dim, affine=False))
        self.net = nn.Sequential(*mods)

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x)
