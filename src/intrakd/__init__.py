"""intrakd: knowledge distillation from teachers trained with an intra-class contrastive loss.

The root package sits above every floor (docs/architecture.md): importing it registers the built-in
distillation methods with the configuration schema, so that ``from intrakd.config import
StudentConfig`` works in a user's script as it does in the CLI.
"""

__version__ = "0.1.0"

from intrakd import objectives as _objectives  # noqa: F401  (registers the built-in methods)
