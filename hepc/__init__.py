"""hepc: a compiler and runner for hyper-epoch pretraining (the q0 method)."""

__version__ = "0.1.0"
