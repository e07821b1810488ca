"""Models: blocks, the ResNet module, the course's small CNNs and the arch registry.

Depends on jax and flax only.
"""

from ..ops.legacy import fast_gradients, loop_friendly_gradients, relu_variant  # TEMPORARY
from .digits import DigitCNN
from .layers import BatchNorm
from .registry import (
    ARCHS,
    TORCHVISION_ARCHS,
    ArchSpec,
    abstract_variables,
    count_params,
    create_model,
    features,
    get_spec,
    init_variables,
    input_shape,
    layer_names,
    model_config,
    model_from_config,
    with_new_head,
)
from .resnet import BasicBlock, Bottleneck, ResNet

__all__ = [
    "ARCHS", "TORCHVISION_ARCHS", "ArchSpec", "BasicBlock", "BatchNorm", "Bottleneck",
    "DigitCNN", "ResNet", "abstract_variables", "count_params", "create_model", "features",
    "fast_gradients", "get_spec", "init_variables", "input_shape", "layer_names", "loop_friendly_gradients",
    "model_config", "model_from_config", "relu_variant", "with_new_head",
]
