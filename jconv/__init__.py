"""jconv: N-D convolutions for JAX whose backward pass is the hand-derived rule."""

from . import autodiff as autodiff
from . import data as data
from . import models as models
from . import reference as reference
from ._activations import relu as relu
from ._activations import relu_grad_input as relu_grad_input
from ._activations import softmax_cross_entropy as softmax_cross_entropy
from ._activations import softmax_cross_entropy_grad as softmax_cross_entropy_grad
from ._conv import conv_forward as conv_forward
from ._conv import conv_grad_bias as conv_grad_bias
from ._conv import conv_grad_input as conv_grad_input
from ._conv import conv_grad_kernel as conv_grad_kernel
from ._dense import dense_forward as dense_forward
from ._dense import dense_grad_bias as dense_grad_bias
from ._dense import dense_grad_input as dense_grad_input
from ._dense import dense_grad_kernel as dense_grad_kernel
from ._dense import dense_init as dense_init
from ._init import conv_init as conv_init
from ._measured import clear_measured_choices as clear_measured_choices
from ._measured import measured_choices as measured_choices
from ._pool import avg_pool as avg_pool
from ._pool import avg_pool_grad_input as avg_pool_grad_input
from ._pool import max_pool as max_pool
from ._pool import max_pool_grad_input as max_pool_grad_input

__version__ = "0.1.0"

__all__ = [
    "autodiff",
    "avg_pool",
    "avg_pool_grad_input",
    "clear_measured_choices",
    "conv_forward",
    "conv_grad_bias",
    "conv_grad_input",
    "conv_grad_kernel",
    "conv_init",
    "data",
    "dense_forward",
    "dense_grad_bias",
    "dense_grad_input",
    "dense_grad_kernel",
    "dense_init",
    "max_pool",
    "max_pool_grad_input",
    "measured_choices",
    "models",
    "reference",
    "relu",
    "relu_grad_input",
    "softmax_cross_entropy",
    "softmax_cross_entropy_grad",
]
