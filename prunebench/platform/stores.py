"""Checks of an MLflow store that a command only reads (``prunebench report``), before MLflow opens it.

MLflow's client creates what it does not find (a SQLite file, a store folder, their tables) and
retries an unreachable server for minutes. ``check_existing_store`` stops first, with one line:
an unknown URI scheme, a SQLite file or store folder that does not exist (or is no MLflow store),
a tracking server that does not answer within ``PROBE_TIMEOUT`` seconds. Database servers
(postgresql, mysql, mssql) and Databricks are left to MLflow.
"""

from __future__ import annotations

import contextlib
import importlib.metadata
import sqlite3
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

from prunebench.errors import ConfigError

#: URI schemes of MLflow's built-in tracking stores ('' and 'file': a store folder)
MLFLOW_SCHEMES = ("", "file", "sqlite", "http", "https", "postgresql", "mysql", "mssql", "databricks",
                  "databricks-uc", "uc")
#: seconds a tracking server has to answer (MLflow's own client would retry for minutes)
PROBE_TIMEOUT = 10.0
#: the request of the probe: one experiment, the cheapest read of MLflow's REST API
PROBE_PATH = "/api/2.0/mlflow/experiments/search?max_results=1"
ALLOWED = "allowed: sqlite:///PATH of an existing mlflow.db, http(s)://HOST:PORT of a running MLflow server"


def known_schemes() -> set[str]:
    """MLflow's built-in schemes and those of installed tracking-store plug-ins."""
    plugins = {entry.name for entry in importlib.metadata.entry_points(group="mlflow.tracking_store")}
    return {*MLFLOW_SCHEMES, *plugins}


def uri_scheme(uri: str) -> str:
    """The store type of ``uri`` as MLflow reads it: ``postgresql+psycopg2://...`` → ``postgresql``."""
    return urllib.parse.urlsplit(uri).scheme.split("+")[0]


def check_existing_store(uri: str, named: str) -> None:
    """ConfigError (one line starting with ``named``, e.g. ``--tracking-uri URI``) unless ``uri`` names an
    existing MLflow store that can be read now; nothing is created."""
    scheme = uri_scheme(uri)
    if scheme not in known_schemes():
        raise ConfigError(f"{named}: unknown URI scheme '{scheme}'; {ALLOWED}, or a store folder")
    if scheme == "sqlite":
        _check_sqlite(uri, named)
    elif scheme in ("http", "https"):
        _probe_server(uri, named)
    elif scheme in ("", "file"):
        _check_folder(uri, named)


def _check_sqlite(uri: str, named: str) -> None:
    """The SQLite file exists and holds MLflow's tables (opened read-only: a missing file is not created)."""
    path = uri[len("sqlite:///"):].split("?")[0] if uri.startswith("sqlite:///") else ""
    if path in ("", ":memory:"):
        raise ConfigError(f"{named}: names no SQLite file; {ALLOWED}")
    file = Path(path)
    if not file.is_file():
        raise ConfigError(f"{named}: no such file {file} (report reads a store, it creates none); {ALLOWED}")
    try:
        with contextlib.closing(sqlite3.connect(f"{file.resolve().as_uri()}?mode=ro", uri=True)) as db:
            found = db.execute("SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'experiments'").fetchone()
    except sqlite3.Error as error:
        raise ConfigError(f"{named}: {file} is not a readable SQLite database ({error}); {ALLOWED}") from None
    if found is None:
        raise ConfigError(f"{named}: {file} is not an MLflow store (no experiments table); {ALLOWED}")


def _check_folder(uri: str, named: str) -> None:
    """The store folder exists and holds an experiment (``<id>/meta.yaml``)."""
    folder = Path(urllib.request.url2pathname(urllib.parse.urlsplit(uri).path) if uri.startswith("file:") else uri)
    if not folder.is_dir() or not any(folder.glob("*/meta.yaml")):
        raise ConfigError(f"{named}: {folder} is not an MLflow store folder (report reads a store, it creates none); "
                          f"{ALLOWED}, or an existing store folder")


def _probe_server(uri: str, named: str) -> None:
    """The server answers one read of MLflow's REST API within ``PROBE_TIMEOUT`` seconds, with no server error.

    An answer that refuses the probe's missing credentials (401, 403) is left to MLflow's client."""
    try:
        with urllib.request.urlopen(uri.rstrip("/") + PROBE_PATH, timeout=PROBE_TIMEOUT):
            return
    except urllib.error.HTTPError as error:
        if error.code in (401, 403):
            return
        problem = "is not an MLflow tracking server" if error.code == 404 else "answers with a server error"
        raise ConfigError(f"{named}: {uri} {problem} (HTTP {error.code} on {PROBE_PATH}); {ALLOWED}") from None
    except (OSError, ValueError) as error:  # refused, unknown host, timeout (URLError is an OSError)
        reason = getattr(error, "reason", error)
        if isinstance(reason, TimeoutError):
            reason = f"no answer within {PROBE_TIMEOUT:g} s"
        raise ConfigError(f"{named}: the tracking server is unreachable ({reason}); {ALLOWED}") from None
