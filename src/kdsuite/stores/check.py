"""A tracking store checked before any work: `check_store(tracking.uri)`.

Light (MLflow only), so a sweep's own process checks the store once before any trial starts.
"""

from __future__ import annotations

import os
from pathlib import Path

import mlflow
from mlflow.exceptions import MlflowException

# How long the check waits for an HTTP tracking server, at most (MLflow's own default retries a
# dead server for about 255 s).
STORE_CHECK_TIMEOUT_S = 15


def check_store(uri: str) -> None:
    """Refuse, before any work and naming `tracking.uri`, a store that cannot be used: a SQLite
    file whose folder does not exist (a typo would otherwise create a new, empty store) or lies
    under a regular file, and an HTTP server that does not answer within STORE_CHECK_TIMEOUT_S
    (or MLflow's `MLFLOW_HTTP_REQUEST_TIMEOUT`, when lower), tried once rather than with MLflow's
    retries. Other stores (PostgreSQL, ...) are checked on first use."""
    prefix = "sqlite:///"
    if uri.startswith(prefix):
        location = uri[len(prefix):].split("?", 1)[0]
        if not location or location == ":memory:":
            return
        if location.startswith("~"):
            raise ValueError(f"tracking.uri={uri!r}: MLflow does not expand ~ in a SQLite path (it would make a "
                             f"folder named ~ here): give the absolute path")
        path = Path(location)
        for ancestor in reversed(path.absolute().parents):
            if ancestor.exists() and not ancestor.is_dir():
                raise ValueError(f"tracking.uri={uri!r}: {ancestor} is a file, not a folder, so the database "
                                 f"{path} cannot be created under it")
        if not path.parent.is_dir():
            raise ValueError(f"tracking.uri={uri!r}: the folder {path.parent} does not exist; create it first "
                             f"(kdsuite makes no folders for a store, so that a typo does not start a new, empty one)")
        if path.exists() and not path.is_file():
            raise ValueError(f"tracking.uri={uri!r}: {path} is not a file")
        return
    if uri.startswith(("http://", "https://")):
        from mlflow.environment_variables import MLFLOW_HTTP_REQUEST_MAX_RETRIES, MLFLOW_HTTP_REQUEST_TIMEOUT

        timeout = min(MLFLOW_HTTP_REQUEST_TIMEOUT.get(), STORE_CHECK_TIMEOUT_S)
        saved = {name: os.environ.get(name) for name in (MLFLOW_HTTP_REQUEST_TIMEOUT.name,
                                                         MLFLOW_HTTP_REQUEST_MAX_RETRIES.name)}
        os.environ[MLFLOW_HTTP_REQUEST_TIMEOUT.name] = str(timeout)
        os.environ[MLFLOW_HTTP_REQUEST_MAX_RETRIES.name] = "0"
        try:
            mlflow.MlflowClient(uri).search_experiments(max_results=1)
        except MlflowException as error:
            if "failed with exception" in str(error):  # MLflow's wording for no answer (refused, timed out)
                raise ValueError(
                    f"tracking.uri={uri!r}: the tracking server did not answer within {timeout} s "
                    f"({str(error)[:200]}); start it, or set tracking.uri to another store "
                    f"(sqlite:///mlflow.db for a local one)"
                ) from None
            raise ValueError(
                f"tracking.uri={uri!r}: the server answered, with an error ({str(error)[:200]}); check that the "
                f"URI is an MLflow tracking server and its credentials"
            ) from None
        except Exception as error:  # connection refused, a timeout: the server does not answer
            raise ValueError(
                f"tracking.uri={uri!r}: the tracking server did not answer within {timeout} s "
                f"({type(error).__name__}: {str(error)[:200]}); start it, or set tracking.uri to another "
                f"store (sqlite:///mlflow.db for a local one)"
            ) from None
        finally:
            for name, value in saved.items():
                if value is None:
                    os.environ.pop(name, None)
                else:
                    os.environ[name] = value
