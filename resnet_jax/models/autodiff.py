"""TEMPORARY (issue 16 transition): the old names, now in ``resnet_jax.ops``; deleted once
no caller imports them."""

from ..ops.legacy import act as relu  # noqa: F401
from ..ops.legacy import conv as conv_general_dilated  # noqa: F401
from ..ops.legacy import fast_gradients, loop_friendly_gradients, relu_variant  # noqa: F401
from ..ops.legacy import pool as max_pool  # noqa: F401
