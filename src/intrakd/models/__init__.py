"""Model zoo behind one factory; every model returns :class:`ModelOutput`."""

from intrakd.models import cifar_resnet, digits  # noqa: F401  (fill the registry)
from intrakd.models.contract import Classifier, ModelOutput
from intrakd.models.registry import create_model, list_models, register_model

__all__ = ["Classifier", "ModelOutput", "create_model", "list_models", "register_model"]
