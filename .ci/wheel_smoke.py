"""The installed wheel, checked as a user's environment sees it (run from outside the source
tree): the command runs, MLflow's entry points load the plugins, the report templates and the
built-in probes are in the package, and the extras' database drivers are what SQLAlchemy loads."""

from __future__ import annotations

import subprocess
import sys
from importlib import metadata, resources
from pathlib import Path


def main() -> None:
    import reef_forensics

    site = Path(reef_forensics.__file__).resolve().parent
    assert "site-packages" in site.parts, f"reef_forensics imported from {site}, not the wheel"
    command = Path(sys.executable).parent / "reef-forensics"
    version = subprocess.run([command, "--version"], capture_output=True, text=True, check=True)
    assert reef_forensics.__version__ in version.stdout, version.stdout
    loaded = {}
    for group in ("mlflow.model_registry_store", "mlflow.model_evaluator"):
        for entry in metadata.entry_points(group=group):
            if entry.dist and entry.dist.name == "reef-forensics":
                loaded[entry.name] = entry.load()
    schemes = {"reef+sqlite", "reef+postgresql", "reef+postgresql+psycopg", "reef+mysql",
               "reef+mysql+pymysql", "reef+mssql"}  # fmt: skip
    assert schemes | {"reef"} <= set(loaded), sorted(loaded)
    from mlflow.utils.uri import get_uri_scheme

    for scheme in schemes:  # the name MLflow looks the store up by
        assert get_uri_scheme(f"{scheme}://u@db.internal/mlflow") == scheme, scheme
    for name in ("report.html.j2", "report.css"):
        assert resources.files("reef_forensics.templates").joinpath(name).is_file(), name
    assert resources.files("reef_forensics.data").joinpath("default_probes.jsonl").is_file()
    from reef_forensics.formats.probes import load_probes

    assert len(load_probes()) > 0
    drivers = _drivers()
    print(f"wheel OK: {version.stdout.strip()}; entry points {sorted(loaded)}; drivers {drivers}")


def _drivers() -> dict[str, str]:
    """The driver SQLAlchemy picks for each database URI the extras serve (no connection made)."""
    import sqlalchemy

    found = {}
    for uri in ("postgresql://u@127.0.0.1:1/x", "mysql+pymysql://u@127.0.0.1:1/x"):
        engine = sqlalchemy.create_engine(uri)  # imports the driver, or fails
        found[uri.split(":")[0]] = engine.dialect.driver
        engine.dispose()
    assert found == {"postgresql": "psycopg", "mysql+pymysql": "pymysql"}, found
    return found


if __name__ == "__main__":
    main()
