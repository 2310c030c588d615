"""The architectures east builds, as torch-free facts: blocks per residual stage.

Grid validation and the models both read this table, so a grid is checked against the
networks that will actually be built without importing torch.
"""

from __future__ import annotations

STAGE_BLOCKS: dict[str, tuple[int, ...]] = {
    "resnet18": (2, 2, 2, 2),
    "resnet34": (3, 4, 6, 3),
    "resnet50": (3, 4, 6, 3),
    "resnet20": (3, 3, 3),  # the narrow CIFAR ResNet of He et al. (2016), 3 stages
}
KNOWN_ARCHS: tuple[str, ...] = tuple(STAGE_BLOCKS)


def shared_blocks(arch: str, ratio: int) -> int:
    """How many blocks reuse another block's convs under in-stage sharing with ratio R:
    in each stage, blocks R, R+1, ... (east-method.md, trick 2)."""
    return sum(max(0, blocks - ratio) for blocks in STAGE_BLOCKS[arch])
