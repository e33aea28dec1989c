"""cada: Case-Augmented Deliberative Alignment for LLM safety."""

from cada.errors import CadaError

__version__ = "0.1.0"
__all__ = ["CadaError", "__version__"]
