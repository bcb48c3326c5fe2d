"""Population specs: pydantic models, YAML loading with locations, overrides, JSON schema."""

from hepc.spec.load import LoadedSpec, load_spec
from hepc.spec.models import Spec

__all__ = ["LoadedSpec", "Spec", "load_spec"]
