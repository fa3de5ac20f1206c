"""Analysis of what a teacher learned."""

from intrakd.analysis.geometry import embedding_geometry, soft_label_entropy

__all__ = ["embedding_geometry", "soft_label_entropy"]
