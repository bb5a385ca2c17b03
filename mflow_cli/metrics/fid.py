"""Fréchet distance between feature statistics of samples and test data (an FID-style score).

FD = ‖μ₁ − μ₂‖² + tr(Σ₁ + Σ₂ − 2(Σ₁Σ₂)^{1/2}) (Heusel et al. 2017). tr((Σ₁Σ₂)^{1/2}) is computed as
Σ sqrt(λ_i) over the eigenvalues λ_i of the symmetric PSD matrix Σ₁^{1/2} Σ₂ Σ₁^{1/2}, which has the same
spectrum as Σ₁Σ₂, so only symmetric eigendecompositions are needed (no complex sqrtm round-off).

Inception-v3 weights cannot be downloaded here, so the features come from (a) a TorchScript feature
network a user gives by path (``torch.jit.load``; any (N, *shape) -> (N, F) module), or (b) by default a
small MLP classifier that mflow trains once on the dataset's training images and caches: on its labels
where the dataset has them (``dataset.labels("train")``), else on k-means cluster ids of the images.
Scores from different feature networks are not comparable with each other or with published FIDs, which is
why the evaluators report it as ``frechet_feature_distance`` (formerly ``fid``), not as an FID.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import torch
from torch import nn

from .. import io


def frechet_distance(mu1: np.ndarray, sigma1: np.ndarray, mu2: np.ndarray, sigma2: np.ndarray) -> float:
    """Fréchet distance between N(μ₁, Σ₁) and N(μ₂, Σ₂), in float64."""
    mu1, mu2 = np.asarray(mu1, np.float64), np.asarray(mu2, np.float64)
    sigma1, sigma2 = np.asarray(sigma1, np.float64), np.asarray(sigma2, np.float64)
    w, v = np.linalg.eigh((sigma1 + sigma1.T) / 2)
    root1 = (v * np.sqrt(np.clip(w, 0, None))) @ v.T
    inner = root1 @ sigma2 @ root1
    lam = np.linalg.eigvalsh((inner + inner.T) / 2)
    tr_sqrt = np.sqrt(np.clip(lam, 0, None)).sum()
    return float(((mu1 - mu2) ** 2).sum() + np.trace(sigma1) + np.trace(sigma2) - 2 * tr_sqrt)


def feature_statistics(features: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
    """Mean (F,) and covariance (F, F) of features (N, F), float64."""
    f = features.detach().double().cpu().numpy()
    return f.mean(0), np.cov(f, rowvar=False)


class FeatureClassifier(nn.Module):
    """A small MLP classifier; its penultimate layer gives the features."""

    def __init__(self, in_features: int, num_classes: int, hidden: int = 256, features: int = 64) -> None:
        super().__init__()
        self.body = nn.Sequential(
            nn.Flatten(), nn.Linear(in_features, hidden), nn.ReLU(), nn.Linear(hidden, features), nn.ReLU()
        )
        self.head = nn.Linear(features, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x)


def kmeans_labels(x: torch.Tensor, k: int, iters: int = 20, seed: int = 0) -> torch.Tensor:
    """Cluster ids (N,) of rows of x by Lloyd's algorithm (pseudo-labels for unlabelled data)."""
    gen = torch.Generator().manual_seed(seed)
    centres = x[torch.randperm(len(x), generator=gen)[:k]].clone()
    for _ in range(iters):
        labels = torch.cdist(x, centres).argmin(1)
        for j in range(k):  # k centres, not samples
            sel = labels == j
            if sel.any():
                centres[j] = x[sel].mean(0)
    return torch.cdist(x, centres).argmin(1)


def train_feature_classifier(
    images: torch.Tensor, labels: torch.Tensor | None, epochs: int = 3, batch_size: int = 128, seed: int = 0
) -> FeatureClassifier:
    """Train :class:`FeatureClassifier` on images (N, ...) in [0, 1] (labels or k-means ids).

    Deterministic given ``seed``; the global RNG is left as it was (fork_rng), so scoring does not shift
    the random stream of whatever runs around it.
    """
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        gen = torch.Generator().manual_seed(seed)
        flat = images.reshape(len(images), -1).float()
        if labels is None:
            labels = kmeans_labels(flat, 10, seed=seed)
        labels = labels.long()
        net = FeatureClassifier(flat.shape[1], int(labels.max()) + 1)
        opt = torch.optim.Adam(net.parameters(), lr=1e-3)
        for _ in range(epochs):
            order = torch.randperm(len(flat), generator=gen)
            for start in range(0, len(flat), batch_size):
                idx = order[start : start + batch_size]
                loss = nn.functional.cross_entropy(net.head(net(flat[idx])), labels[idx])
                opt.zero_grad()
                loss.backward()
                opt.step()
    return net.eval()


def _dataset_key(images: torch.Tensor) -> str:
    h = hashlib.sha256()
    h.update(str(tuple(images.shape)).encode())
    h.update(images[: min(len(images), 2000)].float().numpy().tobytes())
    return h.hexdigest()[:16]


def cached_feature_classifier(
    images: torch.Tensor, labels: torch.Tensor | None, cache_dir: str | Path, epochs: int = 3
) -> FeatureClassifier:
    """The default feature network for ``images``: loaded from ``cache_dir`` if trained before, else trained."""
    path = Path(cache_dir) / f"fid_classifier_{_dataset_key(images)}_{'labels' if labels is not None else 'kmeans'}.pt"
    if path.is_file():
        blob = io.load_torch(path)
        with torch.random.fork_rng():  # building the module draws initial weights; keep the caller's stream
            net = FeatureClassifier(int(blob["in_features"]), int(blob["num_classes"]))
        net.load_state_dict(blob["state_dict"])
        return net.eval()
    if labels is None:
        labels = kmeans_labels(images.reshape(len(images), -1).float(), 10)
    net = train_feature_classifier(images, labels, epochs=epochs)
    path.parent.mkdir(parents=True, exist_ok=True)
    in_features, num_classes = int(images[0].numel()), int(labels.max()) + 1
    io.save_torch({"state_dict": net.state_dict(), "in_features": in_features, "num_classes": num_classes}, path)
    return net


@torch.no_grad()
def extract_features(net: nn.Module, images: torch.Tensor, batch_size: int = 1000) -> torch.Tensor:
    return torch.cat([net(chunk.float()) for chunk in torch.split(images, batch_size)])


def fid_score(net: nn.Module, samples: torch.Tensor, reference: torch.Tensor) -> float:
    """Fréchet distance between ``net`` features of samples and of reference images."""
    mu1, s1 = feature_statistics(extract_features(net, samples))
    mu2, s2 = feature_statistics(extract_features(net, reference))
    return frechet_distance(mu1, s1, mu2, s2)
