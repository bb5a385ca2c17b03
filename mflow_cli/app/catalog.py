"""The catalog: every name a recipe may use, mapped to what it builds.

``data.name`` -> a dataset class; ``model.kind`` -> a model class with a *preset* (the constructor defaults that
make the kind: a DNF is a :class:`~mflow_cli.models.manifold_flow.ManifoldFlow` with noise and the joint schedule,
M-flow the same class trained sequentially) and the :class:`Evaluation` that scores and draws it. This table is
the only place names meet classes; nothing registers itself on import.

Renamed recipe keys and values of earlier versions are listed here too (``renamed``), so that saved recipes and
checkpoints keep loading; :mod:`mflow_cli.app.recipe` applies them with a deprecation notice.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

from ..datasets.arrays import ArrayDataset
from ..datasets.base import Dataset, PixelData
from ..datasets.circle import VonMisesCircle
from ..datasets.images import ImageManifold
from ..datasets.images_standard import CIFAR10, MNIST, SVHN, FashionMNIST
from ..datasets.sphere import SphericalGaussian, VonMisesSphereMixture
from ..datasets.spiral import ThinSpiral
from ..datasets.toy3d import Toy3D
from ..errors import ConfigError
from ..metrics.flow_vae import VariationalEvaluation, evaluate_flow_vae
from ..metrics.images import ImageEvaluation, evaluate_images
from ..metrics.manifold import ManifoldEvaluation, evaluate_manifold
from ..metrics.vq_flow import AtlasEvaluation, evaluate_vq_flow
from ..models.base import Model
from ..models.flow_vae import FlowVAE
from ..models.infomax_vae import InfoMaxVAE
from ..models.manifold_flow import ManifoldFlow
from ..models.pae import ProbabilisticAutoEncoder
from ..models.vq_flow import VQFlow
from ..plots.flow_vae import VariationalFigures, plot_flow_vae
from ..plots.images import ImageFigures, plot_images
from ..plots.manifold import ManifoldFigures, plot_manifold
from ..plots.vq_flow import AtlasFigures, plot_vq_flow


def _frozen(mapping: Mapping[str, Any] | None = None) -> Mapping[str, Any]:
    return MappingProxyType(dict(mapping or {}))


@dataclass(frozen=True)
class Evaluation:
    """How a trained model is scored (``mflow evaluate``) and drawn (``mflow plot``).

    ``options`` validates the recipe's ``evaluate`` section (its fields are the keys) and is handed to both the
    evaluator and the plotter; ``figures`` validates the plot-only ``plot`` section.
    """

    evaluate: Callable[..., dict[str, Any]]
    options: type
    plot: Callable[..., list]
    figures: type


MANIFOLD = Evaluation(evaluate_manifold, ManifoldEvaluation, plot_manifold, ManifoldFigures)
IMAGES = Evaluation(evaluate_images, ImageEvaluation, plot_images, ImageFigures)
ATLAS = Evaluation(evaluate_vq_flow, AtlasEvaluation, plot_vq_flow, AtlasFigures)
VARIATIONAL = Evaluation(evaluate_flow_vae, VariationalEvaluation, plot_flow_vae, VariationalFigures)


@dataclass(frozen=True)
class ModelKind:
    """One ``model.kind``: the class, the preset defaults that make it this kind, and how it is evaluated.

    ``pixel_evaluation`` replaces ``evaluation`` when the dataset is an image dataset (:class:`PixelData`).
    ``renamed`` maps recipe keys of earlier versions to today's; ``renamed_phases`` does the same for the training
    phases named in ``train.epochs``.
    """

    cls: type[Model]
    summary: str
    evaluation: Evaluation
    preset: Mapping[str, Any] = field(default_factory=_frozen)
    pixel_evaluation: Evaluation | None = None
    renamed: Mapping[str, str] = field(default_factory=_frozen)
    renamed_phases: Mapping[str, str] = field(default_factory=_frozen)

    def build(self, data_shape: tuple[int, ...], **kwargs: Any) -> Model:
        """The model of this kind for data of ``data_shape``: the preset, then ``kwargs`` on top."""
        return self.cls(tuple(data_shape), **{**self.preset, **kwargs})

    def evaluation_for(self, dataset_cls: type[Dataset]) -> Evaluation:
        if self.pixel_evaluation is not None and issubclass(dataset_cls, PixelData):
            return self.pixel_evaluation
        return self.evaluation


_MANIFOLD_RENAMED = _frozen({"linear_transform": "linear"})


def _manifold_kind(summary: str, **preset: Any) -> ModelKind:
    return ModelKind(ManifoldFlow, summary, MANIFOLD, _frozen(preset), IMAGES, _MANIFOLD_RENAMED)


_FLOW_VAE_RENAMED = _frozen({"flow": "posterior_flow", "flow_length": "posterior_layers"})
_VQ_RENAMED = _frozen({"flow": "chart_flow", "layers": "chart_layers"})
_VQ_PHASES = _frozen({"flow": "density"})

MODELS: Mapping[str, ModelKind] = _frozen({
    "dnf": _manifold_kind(
        "Denoising Normalizing Flow: NLL of noise-inflated data + denoising reconstruction, one phase",
        noise_std=0.1, off_manifold_std=0.1, schedule="joint",
    ),
    "mflow": _manifold_kind(
        "M-flow: the manifold on reconstruction, then the density on it (sequential phases)",
        noise_std=0.0, reconstruction_weight=1000.0, schedule="sequential",
    ),
    "me_flow": _manifold_kind(
        "Me-flow: M-flow with a separate encoder; reconstruction + exact on-manifold NLL, jointly",
        encoder="network", noise_std=0.0, reconstruction_weight=1000.0, schedule="joint",
    ),
    "pie": _manifold_kind(
        "PIE: ambient likelihood with a narrow Gaussian (std 0.01) off the manifold, no noise",
        noise_std=0.0, off_manifold_std=0.01, reconstruction_weight=0.0, schedule="joint",
    ),
    "ambient_flow": _manifold_kind(
        "plain normalizing flow on R^D (latent dimension = data dimension), maximum likelihood",
        latent_dim=None, outer_layers=5, inner_layers=0, noise_std=0.0, reconstruction_weight=0.0, schedule="joint",
    ),
    "pae": ModelKind(
        ProbabilisticAutoEncoder, "probabilistic auto-encoder: an auto-encoder, then a flow on its latents", MANIFOLD,
        pixel_evaluation=IMAGES, renamed=_MANIFOLD_RENAMED,
    ),
    "infomax_vae": ModelKind(
        InfoMaxVAE, "VAE with a mutual-information critic (InfoMax VAE)", MANIFOLD, pixel_evaluation=IMAGES,
    ),
    "flow_vae": ModelKind(
        FlowVAE, "VAE whose posterior is pushed through a flow (static flow parameters)", VARIATIONAL,
        renamed=_FLOW_VAE_RENAMED,
    ),
    "dynamic_flow_vae": ModelKind(
        FlowVAE, "flow-VAE whose encoder outputs the flow parameters per input", VARIATIONAL,
        _frozen({"dynamic": True}), renamed=_FLOW_VAE_RENAMED,
    ),
    "conv_flow_vae": ModelKind(
        FlowVAE, "convolutional flow-VAE (static flow parameters)", VARIATIONAL,
        _frozen({"architecture": "conv"}), renamed=_FLOW_VAE_RENAMED,
    ),
    "vq_flow": ModelKind(
        VQFlow, "VQ-Flow: an atlas of chart flows whose centres a VQ auto-encoder learns", ATLAS,
        renamed=_VQ_RENAMED, renamed_phases=_VQ_PHASES,
    ),
    "classic_flow": ModelKind(
        VQFlow, "a classic flow (RealNVP or MAF): a VQ-Flow with one chart, the baseline", ATLAS,
        _frozen({"num_charts": 1}), renamed=_VQ_RENAMED, renamed_phases=_VQ_PHASES,
    ),
})

DATA_RENAMED: Mapping[str, Mapping[str, str]] = _frozen({"image_manifold": _frozen({"random_flips": "flip"})})
"""Dataset keys of earlier versions -> today's, by ``data.name``."""

LOGIT_KEY: Mapping[bool, str] = _frozen({True: "logit", False: "none"})
"""The standard image datasets' old ``logit: true/false`` -> ``preprocessing: logit/none``."""

DATASETS: Mapping[str, type[Dataset]] = _frozen({
    "thin_spiral": ThinSpiral,
    "von_mises_circle": VonMisesCircle,
    "von_mises_sphere": VonMisesSphereMixture,
    "spherical_gaussian": SphericalGaussian,
    "toy3d": Toy3D,
    "image_manifold": ImageManifold,
    "mnist": MNIST,
    "fashion_mnist": FashionMNIST,
    "svhn": SVHN,
    "cifar10": CIFAR10,
    "array": ArrayDataset,
})


def _lookup(table: Mapping[str, Any], name: str, what: str, where: str) -> Any:
    if name not in table:
        raise ConfigError(f"{where}unknown {what} {name!r}; known: {', '.join(sorted(table))}")
    return table[name]


def model_kind(kind: str, where: str = "") -> ModelKind:
    """The catalog entry of ``model.kind``; ``where`` prefixes the error (e.g. ``"r.yaml: model.kind: "``)."""
    return _lookup(MODELS, kind, "model kind", where)


def dataset_class(name: str, where: str = "") -> type[Dataset]:
    """The dataset class of ``data.name``."""
    return _lookup(DATASETS, name, "dataset", where)
