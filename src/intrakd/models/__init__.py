"""Model zoo behind one factory; every model returns :class:`ModelOutput`."""

from intrakd.models import (  # noqa: F401  (fill the registry)
    cifar_mobilenetv2,
    cifar_resnet,
    cifar_resnet_v2,
    cifar_shufflenet,
    cifar_vgg,
    cifar_wrn,
    digits,
    imagenet,
    timm_models,
)
from intrakd.models.contract import Classifier, ModelOutput, check_reads_images, probe, stage_channels
from intrakd.models.input import ModelInput, feed_with, model_input_of, resolve_input
from intrakd.models.registry import create_model, describe_model, list_families, list_models, register_model

__all__ = [
    "Classifier",
    "ModelInput",
    "ModelOutput",
    "check_reads_images",
    "create_model",
    "describe_model",
    "feed_with",
    "list_families",
    "list_models",
    "model_input_of",
    "probe",
    "register_model",
    "resolve_input",
    "stage_channels",
]
