"""intrakd: knowledge distillation from teachers trained with an intra-class contrastive loss."""

__version__ = "0.1.0"
