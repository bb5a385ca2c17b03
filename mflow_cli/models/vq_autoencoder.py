"""A vector-quantized autoencoder that learns the chart centres of VQ-Flow (van den Oord et al. 2017).

Encoder E: R^D -> R^c, decoder D: R^c -> R^D and a codebook {v_k} ⊂ R^c minimise
‖D(v_{k*}) − x‖², k* = argmin_k ‖E(x) − v_k‖ (VQ-Flow paper, "The chart regions"). The argmin is not
differentiable, so the decoder sees E(x) + sg(v_{k*} − E(x)) (straight-through estimator); the codebook
moves towards the encodings by ‖sg(E(x)) − v‖² and the encoder is held to its code by the commitment
loss β‖E(x) − sg(v)‖². Codes that no batch uses for a while (usage EMA below ``restart_threshold``/K)
are restarted at random encodings of the current batch (dead-code restart).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .autoencoders import mlp


class VQAutoencoder(nn.Module):
    r"""MLP encoder/decoder (SiLU) around a K-code codebook; :meth:`loss` trains it, :meth:`distances` serves charts.

    References:
        | Neural Discrete Representation Learning (van den Oord et al., 2017)
        | https://arxiv.org/abs/1711.00937

    Arguments:
        data_dim: The data dimension D.
        num_codes: The codebook size K.
        code_dim: The dimension of the codes and of the encoder's output.
        hidden_features: The width of the hidden layers.
        hidden_layers: The number of hidden layers of the encoder and of the decoder.
        commitment: The weight β of the commitment loss β‖E(x) − sg(v)‖².
        usage_decay: The decay of the per-code usage moving average.
        restart_threshold: A code whose usage average falls below ``restart_threshold``/K is restarted.
    """

    def __init__(
        self,
        data_dim: int,
        num_codes: int,
        code_dim: int = 2,
        hidden_features: int = 64,
        hidden_layers: int = 2,
        commitment: float = 0.25,
        usage_decay: float = 0.99,
        restart_threshold: float = 0.03,
    ) -> None:
        super().__init__()
        hidden = [hidden_features] * hidden_layers
        self.encoder = mlp([data_dim, *hidden, code_dim], activation=nn.SiLU)
        self.decoder = mlp([code_dim, *hidden, data_dim], activation=nn.SiLU)
        self.codebook = nn.Parameter(torch.randn(num_codes, code_dim) * 0.1)
        self.register_buffer("usage", torch.full((num_codes,), 1.0 / num_codes))
        self.commitment, self.usage_decay, self.restart_threshold = commitment, usage_decay, restart_threshold
        self.restarts = 0

    @property
    def num_codes(self) -> int:
        return self.codebook.shape[0]

    def distances(self, x: torch.Tensor) -> torch.Tensor:
        """d_k(x) = ‖E(x) − v_k‖ for every code: (B, K)."""
        return torch.cdist(self.encoder(x), self.codebook)

    def centres(self) -> torch.Tensor:
        """The chart centres mapped to data space, D(v_k): (K, D)."""
        return self.decoder(self.codebook)

    def loss(self, x: torch.Tensor) -> tuple[torch.Tensor, dict[str, float]]:
        r"""mean ‖D(E(x) + sg(v − E(x))) − x‖² + mean ‖sg(E(x)) − v‖² + β mean ‖E(x) − sg(v)‖², v = v_{k*(x)}
        (van den Oord et al. 2017, eq. 3; means over the batch and coordinates)."""
        e = self.encoder(x)
        idx = torch.cdist(e, self.codebook).argmin(1)
        v = self.codebook[idx]
        recon = F.mse_loss(self.decoder(e + (v - e).detach()), x)
        codebook = F.mse_loss(v, e.detach())
        commit = F.mse_loss(e, v.detach())
        if self.training:
            self._update_usage(idx, e.detach())
        loss = recon + codebook + self.commitment * commit
        return loss, {"vq_recon": recon.item(), "vq_commit": commit.item(), "vq_restarts": float(self.restarts)}

    @torch.no_grad()
    def _update_usage(self, idx: torch.Tensor, e: torch.Tensor) -> None:
        counts = torch.bincount(idx, minlength=self.num_codes).to(self.usage.dtype) / len(idx)
        self.usage.mul_(self.usage_decay).add_((1 - self.usage_decay) * counts)
        dead = (self.usage < self.restart_threshold / self.num_codes).nonzero(as_tuple=True)[0]
        if len(dead) == 0:
            return
        pick = torch.randint(0, len(e), (len(dead),), device=e.device)
        self.codebook.data[dead] = e[pick] + 0.01 * e.std(0) * torch.randn_like(e[pick])
        self.usage[dead] = 1.0 / self.num_codes
        self.restarts += len(dead)
