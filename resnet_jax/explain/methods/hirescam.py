"""HiResCAM (Draelos & Carin 2020): map = ReLU(sum_k G^k * A^k), element-wise, so the map
is exactly the target score's first-order contribution of each position."""

from .base import CAMMethod


class HiResCAM(CAMMethod):
    name = "hirescam"

    def weighted(self, acts, grads):
        return grads * acts[None]
