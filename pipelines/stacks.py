"""Register a ZenML stack described in ``configs/zenml/stacks/*.yaml`` (a cluster's orchestrator, remote artifact
store, container registry, image builder, remote MLflow tracking server and model registry).

    python -m pipelines.stacks configs/zenml/stacks/kubernetes.yaml \\
        orchestrator.kubernetes_context=my-cluster artifact_store.path=s3://my-bucket/zenml --activate

Each ``component.key=value`` override replaces one configuration value of the file. A component that already
exists under its name is updated to the file's configuration, so rerunning after an edit is safe. The
flavors come from ZenML's integrations (``pip install -e ".[cluster]"`` installs their libraries).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

import yaml

from unimatch.config import apply_overrides
from unimatch.errors import ConfigError, run_guarded


def read_stack(path: str | Path, overrides: list[str] | None = None) -> dict[str, Any]:
    """The stack file with ``component.key=value`` overrides applied to the components' configurations."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"stack file not found: {path}")
    try:
        stack = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as error:
        raise ConfigError(f"{path}: not valid YAML: {error}") from error
    if not isinstance(stack, dict) or not isinstance(stack.get("name"), str) or not stack.get("components"):
        raise ConfigError(f"{path}: needs a 'name' and a 'components' mapping (type: name, flavor, configuration)")
    components = stack["components"]
    configurations = {kind: component.get("configuration") or {} for kind, component in components.items()}
    for text in overrides or []:
        if text.split(".", 1)[0] not in components:
            raise ConfigError(f"override '{text}': {path} has no component '{text.split('.', 1)[0]}'")
    configurations = apply_overrides(configurations, overrides or [])
    for kind, component in components.items():
        component["configuration"] = configurations[kind]
    return stack


def register_stack(client: Any, stack: dict[str, Any], activate: bool = False) -> Any:
    """Create (or update) the stack's components and the stack itself in ``client``'s store."""
    from zenml.enums import StackComponentType

    components = {}
    for kind, component in stack["components"].items():
        try:
            kind_enum = StackComponentType(kind)
        except ValueError:
            raise ConfigError(f"components.{kind}: not a ZenML stack component type") from None
        name, flavor, configuration = component["name"], component["flavor"], component["configuration"]
        if client.list_stack_components(type=kind_enum, name=name).items:
            client.update_stack_component(name, kind_enum, configuration=configuration)
        else:
            client.create_stack_component(name, flavor, kind_enum, configuration)
        components[kind_enum] = name
    if client.list_stacks(name=stack["name"]).items:
        registered = client.update_stack(stack["name"], component_updates={k: [v] for k, v in components.items()})
    else:
        registered = client.create_stack(stack["name"], components)
    if activate:
        client.activate_stack(stack["name"])
    return registered


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m pipelines.stacks", description=__doc__.split("\n")[0])
    parser.add_argument("stack", help="the stack file, e.g. configs/zenml/stacks/kubernetes.yaml")
    parser.add_argument("overrides", nargs="*", metavar="component.key=value", help="configuration overrides")
    parser.add_argument("--activate", action="store_true", help="make it the repository's active stack")
    args = parser.parse_args(argv)

    def work() -> None:
        from zenml.client import Client

        stack = read_stack(args.stack, args.overrides)
        register_stack(Client(), stack, args.activate)
        print(f"stack '{stack['name']}' registered{' and active' if args.activate else ''}")

    return run_guarded(work)


if __name__ == "__main__":
    sys.exit(main())
