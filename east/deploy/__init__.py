"""Deploying trained models: the sparse inference format (``.east``) and ``east infer``.

``from east.deploy import load_sparse``: a ``.east`` file as a callable ``SparseResNet``
(images -> logits). See ``east.deploy.sparse`` for the format and the kernels.
"""

from __future__ import annotations

from typing import Any

__all__ = ["SparseResNet", "compile_sparse", "load_sparse", "save_sparse"]


def __getattr__(name: str) -> Any:
    # torch and scipy load on first use, so that `import east.deploy` stays cheap.
    if name in __all__:
        from east.deploy import sparse

        return getattr(sparse, name)
    raise AttributeError(f"module 'east.deploy' has no attribute {name!r}")
