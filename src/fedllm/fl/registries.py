"""The registries of a federated algorithm's parts, and how a part is named in a config: a name, or
``{name: ..., option: value}`` checked against the part's typed ``Options``."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from pydantic import ValidationError

from fedllm.registry import Registry

ALGORITHMS: Registry[Any] = Registry("algorithm")
"""Method presets (``fedllm.fl.presets``): aggregator × server optimizer × client method."""
AGGREGATORS: Registry[Any] = Registry("aggregator")
SERVER_OPTIMIZERS: Registry[Any] = Registry("server optimizer")
CLIENT_METHODS: Registry[Any] = Registry("client method")
TRANSFORMS: Registry[Any] = Registry("update transform")

register_algorithm = ALGORITHMS.register


def resolve_spec(registry: Registry[Any], spec: Any) -> dict[str, Any]:
    """A component spec (a name, or ``{name: ..., option: value}``) with every option filled in and
    checked against the component's ``Options``; ValueError names what is wrong."""
    if isinstance(spec, str):
        spec = {"name": spec}
    if not isinstance(spec, Mapping) or not isinstance(spec.get("name"), str):
        raise ValueError(f"a {registry.kind} is a name or a mapping with a 'name' key, got {spec!r}")
    cls = registry.lookup(spec["name"])
    options = {k: v for k, v in spec.items() if k != "name"}
    try:
        parsed = cls.Options.model_validate(options)
    except ValidationError as e:
        problems = "; ".join(f"{'.'.join(map(str, err['loc'])) or 'options'}: {err['msg']}" for err in e.errors())
        raise ValueError(f"{registry.kind} {spec['name']!r}: {problems}") from None
    return {"name": spec["name"], **parsed.model_dump()}


def build_component(registry: Registry[Any], spec: Mapping[str, Any]) -> Any:
    """An aggregator or transform from a resolved spec."""
    cls = registry.lookup(spec["name"])
    return cls(cls.Options.model_validate({k: v for k, v in spec.items() if k != "name"}))
