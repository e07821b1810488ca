"""torch <-> flax: key mapping, layout transposes, loading weights files safely.

    model, variables = resnet_jax.port.from_torch(torchvision_model_or_state_dict_or_path)
    state_dict = resnet_jax.port.to_torch(variables, "resnet18")  # load_state_dict(strict=True)
"""

from .convert import from_torch, infer_arch, load_state_dict, to_torch, torch_shapes
from .files import PortError, read_weights_file

__all__ = [
    "PortError", "from_torch", "infer_arch", "load_state_dict", "read_weights_file",
    "to_torch", "torch_shapes",
]
