"""The multi-scale image flow the M-flow/DNF papers use as the outer flow on 64×64×3 images.

Glow/RealNVP-style levels (Dinh et al. 2017; Kingma & Dhariwal 2018): each level squeezes 2×2 pixels
into channels, then runs ``steps_per_level`` steps of [ActNorm -> 1×1 convolution -> rational-quadratic
spline coupling whose conditioner is a convolutional ResNet] and a closing 1×1 convolution; all but the
last level factor out half of their channels (:class:`nflows.transforms.MultiscaleCompositeTransform`).

The M-flow code then picks a few channels of every level (``channel_factor`` × 1, 2, 4, 8, ... from the
finest to the coarsest), moves them to the front and mixes them with LU-linear layers (its
``partial_mlp`` post-processing: LU, then ``linear_layers − 1`` × [LogTanh, LU]). The manifold
coordinates u are the first ``latent_dim`` outputs of that mixed block.

Input and output are flat (B, C·H·W) vectors, so :class:`mflow_cli.models.manifold_flow.ManifoldFlow`
uses it exactly like the dense coupling flow.
"""

from __future__ import annotations

import torch
from nflows import transforms as T
from nflows.nn.nets import ConvResidualNet
from nflows.utils import create_mid_split_binary_mask

from .. import kernels
from ..errors import ConfigError
from .fused import FusedRQCouplingTransform


class HeadTransform(T.Transform):
    """``transform`` on the first ``features`` of a flat vector, identity on the rest.

    References:
        | Flows for simultaneous manifold learning and density estimation (Brehmer & Cranmer, 2020)
        | https://arxiv.org/abs/2003.13913

    Arguments:
        features: The number of leading features ``transform`` acts on.
        transform: The transform of those features.
    """

    def __init__(self, features: int, transform: T.Transform) -> None:
        super().__init__()
        self.features, self.transform = features, transform

    def _head(self, inputs: torch.Tensor, fn) -> tuple[torch.Tensor, torch.Tensor]:
        head, logdet = fn(inputs[:, : self.features])
        return torch.cat([head, inputs[:, self.features :]], dim=1), logdet

    def forward(self, inputs, context=None):
        return self._head(inputs, self.transform.forward)

    def inverse(self, inputs, context=None):
        return self._head(inputs, self.transform.inverse)


class Unflatten(T.Transform):
    """(B, C·H·W) <-> (B, C, H, W); volume preserving.

    References:
        | Density estimation using Real NVP (Dinh et al., 2017)
        | https://arxiv.org/abs/1605.08803

    Arguments:
        shape: The image shape (C, H, W).
    """

    def __init__(self, shape: tuple[int, int, int]) -> None:
        super().__init__()
        self.shape = tuple(shape)

    def forward(self, inputs, context=None):
        return inputs.reshape(inputs.shape[0], *self.shape), inputs.new_zeros(inputs.shape[0])

    def inverse(self, inputs, context=None):
        return inputs.reshape(inputs.shape[0], -1), inputs.new_zeros(inputs.shape[0])


class ChannelsLastConvResidualNet(ConvResidualNet):
    """nflows' :class:`ConvResidualNet` run on channels-last (NHWC) activations on the CPU, the layout oneDNN's
    convolutions are fastest in: 1.3-1.4× on a 100-channel 3×3 convolution's forward and backward at 8×8 to
    32×32, one thread. Same submodules and ``state_dict``; takes and returns contiguous NCHW tensors. Inside
    :func:`mflow_cli.kernels.use_reference` it runs nflows' own layout."""

    def forward(self, inputs: torch.Tensor, context: torch.Tensor | None = None) -> torch.Tensor:
        if inputs.device.type != "cpu" or not kernels.fused_enabled():
            return super().forward(inputs, context)
        if context is not None:
            context = context.contiguous(memory_format=torch.channels_last)
        outputs = super().forward(inputs.contiguous(memory_format=torch.channels_last), context)
        return outputs.contiguous()


def _step(channels: int, hidden_channels: int, num_blocks: int, spline_bins: int, spline_range: float,
          dropout: float, actnorm: bool) -> T.Transform:
    def conditioner(in_channels: int, out_channels: int) -> ConvResidualNet:
        return ChannelsLastConvResidualNet(
            in_channels, out_channels, hidden_channels=hidden_channels, num_blocks=num_blocks,
            dropout_probability=dropout, use_batch_norm=False,
        )

    coupling = FusedRQCouplingTransform(
        mask=create_mid_split_binary_mask(channels), transform_net_create_fn=conditioner, num_bins=spline_bins,
        tails="linear", tail_bound=spline_range, min_bin_width=1e-3, min_bin_height=1e-3, min_derivative=1e-3,
    )
    steps = [T.ActNorm(channels)] if actnorm else []
    return T.CompositeTransform([*steps, T.OneByOneConvolution(channels), coupling])


def level_output_shapes(data_shape: tuple[int, ...], levels: int) -> list[tuple[int, int, int]]:
    """Shape of what each level hands to the output (channels, height, width), finest first."""
    c, h, w = data_shape
    shapes = []
    for level in range(levels):
        if h % 2 or w % 2:
            size = tuple(data_shape[1:])
            raise ConfigError(f"levels: {levels} levels need the image size {size} divisible by 2^{levels}")
        c, h, w = 4 * c, h // 2, w // 2
        if level < levels - 1:
            shapes.append((c // 2, h, w))
            c //= 2
        else:
            shapes.append((c, h, w))
    return shapes


def head_mask(data_shape: tuple[int, ...], levels: int, channel_factor: int) -> torch.Tensor:
    """Boolean mask over the flat multi-scale output: ``channel_factor``·2^l channels of level l."""
    parts = []
    for level, (c, h, w) in enumerate(level_output_shapes(data_shape, levels)):
        keep = torch.zeros(c, h * w, dtype=torch.bool)
        keep[: min(c, channel_factor * 2**level)] = True
        parts.append(keep.reshape(-1))
    return torch.cat(parts)


def image_flow(
    data_shape: tuple[int, ...],
    steps_per_level: int,
    *,
    levels: int = 4,
    hidden_channels: int = 100,
    num_blocks: int = 3,
    spline_bins: int = 11,
    spline_range: float = 10.0,
    dropout: float = 0.0,
    actnorm: bool = True,
    channel_factor: int = 1,
    linear_layers: int = 2,
    latent_dim: int = 1,
) -> T.Transform:
    """Flat (B, C·H·W) -> flat, multi-scale; the first ``latent_dim`` outputs are the manifold coordinates.

    References:
        | Density estimation using Real NVP (Dinh et al., 2017)
        | https://arxiv.org/abs/1605.08803

        | Glow: Generative Flow with Invertible 1x1 Convolutions (Kingma & Dhariwal, 2018)
        | https://arxiv.org/abs/1807.03039

        | Neural Spline Flows (Durkan et al., 2019)
        | https://arxiv.org/abs/1906.04032

    Arguments:
        steps_per_level: The number of [ActNorm, 1×1 convolution, spline coupling] steps per level.
        levels: The number of squeeze levels (the image size must divide by 2^levels).
        hidden_channels: The channels of the convolutional conditioner ResNets.
        num_blocks: The number of residual blocks per conditioner.
        spline_bins: The number of bins of the rational-quadratic splines.
        spline_range: The splines' interval [−B, B] (linear tails outside).
        dropout: The conditioners' dropout probability.
        actnorm: Whether each step starts with ActNorm.
        channel_factor: Level l contributes ``channel_factor``·2^l channels to the mixed block.
        linear_layers: The number of LU-linear layers mixing that block (LogTanh between them).
        latent_dim: The number d of manifold coordinates (at most the mixed block's size).
    """
    if len(data_shape) != 3:
        raise ConfigError(f"architecture: image needs image data (C, H, W), got data of shape {data_shape}")
    c, h, w = data_shape
    multiscale = T.MultiscaleCompositeTransform(num_transforms=levels)
    shape = (c, h, w)
    level_output_shapes(data_shape, levels)  # checks the size divides by 2^levels
    for _ in range(levels):
        squeeze = T.SqueezeTransform()
        shape = squeeze.get_output_shape(*shape)
        steps = [
            _step(shape[0], hidden_channels, num_blocks, spline_bins, spline_range, dropout, actnorm)
            for _ in range(steps_per_level)
        ]
        level_transform = T.CompositeTransform([squeeze, *steps, T.OneByOneConvolution(shape[0])])
        shape = multiscale.add_transform(level_transform, shape) or shape
    mask = head_mask(data_shape, levels, channel_factor)
    head = int(mask.sum())
    if head < latent_dim:
        raise ConfigError(
            f"latent_dim must be at most {head}, the image flow's mixed dims, got {latent_dim}; raise channel_factor"
        )
    order = torch.cat([torch.nonzero(mask).flatten(), torch.nonzero(~mask).flatten()])
    mixing: list[T.Transform] = [T.LULinear(head, identity_init=True)]
    for _ in range(linear_layers - 1):
        mixing += [T.LogTanh(cut_point=1), T.LULinear(head, identity_init=True)]
    return T.CompositeTransform(
        [
            Unflatten((c, h, w)),
            multiscale,
            T.Permutation(order),
            HeadTransform(head, T.CompositeTransform(mixing)),
        ]
    )
