"""Models: blocks, the ResNet module, the course's small CNNs and the arch registry.

Depends on jax, flax and numpy only (and the package's error types).
"""

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
    tapped_outputs,
    with_new_head,
)
from .resnet import BasicBlock, Bottleneck, ResNet

__all__ = [
    "ARCHS", "TORCHVISION_ARCHS", "ArchSpec", "BasicBlock", "BatchNorm", "Bottleneck",
    "DigitCNN", "ResNet", "abstract_variables", "count_params", "create_model", "features",
    "get_spec", "init_variables", "input_shape", "layer_names",
    "model_config", "model_from_config", "tapped_outputs", "with_new_head",
]
