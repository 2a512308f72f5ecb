"""jconv: N-D convolutions for JAX whose backward pass is the hand-derived rule."""

from . import autodiff as autodiff
from . import reference as reference
from ._conv import conv_forward as conv_forward
from ._conv import conv_grad_bias as conv_grad_bias
from ._conv import conv_grad_input as conv_grad_input
from ._conv import conv_grad_kernel as conv_grad_kernel
from ._init import conv_init as conv_init

__version__ = "0.1.0"

__all__ = [
    "autodiff",
    "conv_forward",
    "conv_grad_bias",
    "conv_grad_input",
    "conv_grad_kernel",
    "conv_init",
    "reference",
]
