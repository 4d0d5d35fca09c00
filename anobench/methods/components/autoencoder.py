"""The convolutional encoder/decoder stack that MemAE, GradCon and OGNet's generator each build on.

Those papers all use "a stack of strided convolutions, mirrored by transposed convolutions"; they
differ only in kernel size, padding, normalisation and activations, which are the arguments here.
With ``padding = (kernel_size - stride) // 2`` rounded as below every layer exactly halves (encoder)
or doubles (decoder) the spatial size, so an S×S input gives an S/2^L bottleneck for L layers.
"""

from __future__ import annotations

from collections.abc import Sequence

from torch import nn

_ACTIVATIONS = {
    "relu": lambda: nn.ReLU(inplace=False),
    "leaky_relu": lambda: nn.LeakyReLU(0.2, inplace=False),
    "tanh": nn.Tanh,
    "sigmoid": nn.Sigmoid,
}


def activation(name: str | None) -> nn.Module:
    """An activation by name ('relu', 'leaky_relu' (slope 0.2), 'tanh', 'sigmoid'); None = identity."""
    if name is None:
        return nn.Identity()
    try:
        return _ACTIVATIONS[name]()
    except KeyError:
        raise ValueError(f"unknown activation {name!r}; expected one of {sorted(_ACTIVATIONS)} or null") from None


def _halving_padding(kernel_size: int, stride: int) -> tuple[int, int]:
    """(padding, output_padding) so a conv divides and a transposed conv multiplies the size by `stride`."""
    total = kernel_size - stride
    if total < 0:
        raise ValueError(f"kernel_size {kernel_size} must be at least the stride {stride}")
    padding = (total + 1) // 2
    return padding, 2 * padding - total


class ConvEncoder(nn.Sequential):
    """`in_channels` → channels[0] → … → channels[-1], each layer Conv(k, stride) [+ BN] + activation.

    ``last_activation=False`` leaves the final layer linear (a code that a memory module reads).
    """

    def __init__(
        self,
        in_channels: int,
        channels: Sequence[int],
        kernel_size: int = 3,
        stride: int = 2,
        batch_norm: bool = True,
        act: str | None = "relu",
        last_activation: bool = True,
    ) -> None:
        padding, _ = _halving_padding(kernel_size, stride)
        layers: list[nn.Module] = []
        widths = (in_channels, *channels)
        for i, (cin, cout) in enumerate(zip(widths[:-1], widths[1:])):
            last = i == len(channels) - 1
            layers.append(nn.Conv2d(cin, cout, kernel_size, stride, padding, bias=not batch_norm))
            if not last or last_activation:
                if batch_norm:
                    layers.append(nn.BatchNorm2d(cout))
                layers.append(activation(act))
        super().__init__(*layers)
        self.out_channels = widths[-1]
        self.downsampling = stride ** len(channels)


class ConvDecoder(nn.Sequential):
    """Mirror of `ConvEncoder`: transposed convs `in_channels` → channels… → `out_channels`.

    Every layer but the last has [BN +] `act`; the last has `output_act` (e.g. 'sigmoid' for images
    in [0, 1], 'tanh' for [-1, 1], None for a linear output).
    """

    def __init__(
        self,
        in_channels: int,
        channels: Sequence[int],
        out_channels: int,
        kernel_size: int = 3,
        stride: int = 2,
        batch_norm: bool = True,
        act: str | None = "relu",
        output_act: str | None = "sigmoid",
    ) -> None:
        padding, output_padding = _halving_padding(kernel_size, stride)
        layers: list[nn.Module] = []
        widths = (in_channels, *channels, out_channels)
        for i, (cin, cout) in enumerate(zip(widths[:-1], widths[1:])):
            last = i == len(widths) - 2
            layers.append(nn.ConvTranspose2d(cin, cout, kernel_size, stride, padding, output_padding,
                                             bias=last or not batch_norm))
            if last:
                layers.append(activation(output_act))
            else:
                if batch_norm:
                    layers.append(nn.BatchNorm2d(cout))
                layers.append(activation(act))
        super().__init__(*layers)
        self.upsampling = stride ** (len(widths) - 1)

    @property
    def weight_layers(self) -> list[nn.ConvTranspose2d]:
        """The transposed convolutions, input to output (GradCon constrains their weight gradients)."""
        return [m for m in self if isinstance(m, nn.ConvTranspose2d)]
