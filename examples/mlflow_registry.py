"""The quick start's model-registry step: MLflow with a local SQLite store, no server.

    python examples/mlflow_registry.py register DIR [--tracking-uri URI] [--role victim|reference] MODEL ...
    python examples/mlflow_registry.py show DIR [--tracking-uri URI]

`register` logs each model folder DIR/models/MODEL with MLflow's transformers flavor and
registers it under the name MODEL. Without ``--tracking-uri`` the registry is
``reef+sqlite:///DIR/mlflow.db``: the reef-forensics store plugin, loaded in this client, queues
every new version (queue: $REEF_QUEUE) and tags it ``reef.status=pending``. With a server's
URI, the server's own store plugin does it (examples/mlflow_server.sh). `reef-forensics worker` then fingerprints and
screens them. `show` prints the reef tags of every version.
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # no model hub here: the flavor looks for a card


def connect(folder: Path, tracking_uri: str | None = None) -> None:
    import mlflow

    if tracking_uri:
        mlflow.set_tracking_uri(tracking_uri)
        mlflow.set_registry_uri(tracking_uri)
    else:
        database = f"sqlite:///{folder.resolve() / 'mlflow.db'}"
        mlflow.set_tracking_uri(database)
        mlflow.set_registry_uri("reef+" + database)  # the store plugin, in this process
    if mlflow.get_experiment_by_name("quickstart") is None:
        mlflow.create_experiment(
            "quickstart", artifact_location=(folder.resolve() / "artifacts").as_uri()
        )
    mlflow.set_experiment("quickstart")


def register(folder: Path, models: list[str], role: str | None, tracking_uri: str | None) -> None:
    import mlflow

    from reef_forensics.mlops.registry import register_model_folder  # mlflow.transformers.log_model

    connect(folder, tracking_uri)
    client = mlflow.MlflowClient()
    for name in models:
        version = register_model_folder(folder / "models" / name, name, role=role)
        status = client.get_model_version(name, version).tags.get("reef.status")
        print(f"registered {name} version {version}: reef.status={status}")


def show(folder: Path, tracking_uri: str | None) -> None:
    import mlflow

    connect(folder, tracking_uri)
    client = mlflow.MlflowClient()
    for version in sorted(client.search_model_versions(), key=lambda v: (v.name, int(v.version))):
        reef = {k: v for k, v in version.tags.items() if k.startswith("reef.")}
        print(f"{version.name} v{version.version}:")
        for key in sorted(reef):
            value = reef[key]
            print(f"  {key} = {value[:40] + '...' if value.startswith('sha256:') else value}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True)
    reg = commands.add_parser("register")
    reg.add_argument("folder", type=Path)
    reg.add_argument("--role", choices=("victim", "reference"))
    reg.add_argument("--tracking-uri")
    reg.add_argument("models", nargs="+")
    shw = commands.add_parser("show")
    shw.add_argument("folder", type=Path)
    shw.add_argument("--tracking-uri")
    args = parser.parse_args()
    if args.command == "register":
        register(args.folder, args.models, args.role, args.tracking_uri)
    else:
        show(args.folder, args.tracking_uri)


if __name__ == "__main__":
    main()
