"""hepc: a compiler and runner for hyper-epoch pretraining (the q0 method)."""

__version__ = "0.1.0"

__all__ = ["Ensemble", "load_ensemble"]


def __getattr__(name: str):
    # Lazy: `import hepc` (and `hepc plan`) must never import torch; the ensemble API does.
    if name in ("load_ensemble", "Ensemble"):
        from hepc.use import ensemble

        return getattr(ensemble, name)
    raise AttributeError(f"module 'hepc' has no attribute {name!r}")
