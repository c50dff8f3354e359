"""lowbit: a lab for low-bit and mixed-precision quantization of large language models.

Importing the package does no work and imports nothing heavy; use :mod:`lowbit.api`.
"""

__version__ = "0.1.0"
