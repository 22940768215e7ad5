"""Where ML Metadata lives for a configuration (`metadata:`): a SQLite file under the output root, or a database on
a MySQL or MariaDB server (`metadata_server:`) that every run, worker and machine shares, as Kubeflow Pipelines
keeps it in MySQL and Composer's workers need one store. Every place that opens the store asks here.
(PostgreSQL is refused by the configuration: ML Metadata 1.16 cannot store a backslash there.)

The server's password comes only from $TFX_E2E_METADATA_PASSWORD: it is in no file, and the errors here name the
host, port, database and user, never the password. ML Metadata creates the database and its tables when missing.
"""
import logging
import os
import random
import socket
import time

from pipeline.config import ENV_METADATA_PASSWORD, Config

MYSQL_PORT = 3306
# Runs that open a new, empty database at once race to create ML Metadata's tables; the losers are told to retry,
# for as long as the winner may take to create them on a loaded machine (a count of tries ran out in CI). MariaDB may
# also end one side of that race as a deadlock victim ("try restarting transaction", seen in CI): retried alike.
_OPEN_RACE_SECONDS = 60.0
_RACES = ("concurrent connection", "Deadlock found when trying to get lock")


class _Redact(logging.Filter):
    """Masks the password in log records: TFX's runners log their connection config (password included) at INFO."""

    def __init__(self, secret: str):
        super().__init__()
        self.secret = secret

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        if self.secret in message:
            record.msg, record.args = message.replace(self.secret, "****"), None
        return True


def _redact(secret: str) -> None:
    absl_logger = logging.getLogger("absl")  # absl.logging's records, TFX's included, are logged here
    if secret and not any(isinstance(f, _Redact) and f.secret == secret for f in absl_logger.filters):
        absl_logger.addFilter(_Redact(secret))


class MetadataError(RuntimeError):
    """ML Metadata's store cannot be opened; the message names it (the SQLite file, or the server and database)."""


def on_server(config: Config) -> bool:
    return config.metadata == "mysql"


def port(config: Config) -> int:
    return config.metadata_server.port or MYSQL_PORT


def describe(config: Config) -> str:
    """`the SQLite file /out/metadata/p/metadata.db`, `MySQL database 'tfx' on 127.0.0.1:3306 (user 'tfx')`."""
    if on_server(config):
        server = config.metadata_server
        return f"MySQL database '{server.database}' on {server.host}:{port(config)} (user '{server.user}')"
    return f"the SQLite file {config.metadata_path}"


def connection_config(config: Config, readonly: bool = False):
    """ML Metadata's ConnectionConfig for `config` (not for metadata: managed, whose orchestrator has its own).
    `readonly` opens a SQLite file read-only (a server has no such mode)."""
    from ml_metadata.proto import metadata_store_pb2

    connection = metadata_store_pb2.ConnectionConfig()
    if config.metadata == "mysql":
        server = config.metadata_server
        connection.mysql.host = server.host
        connection.mysql.port = port(config)
        connection.mysql.database = server.database
        connection.mysql.user = server.user
        connection.mysql.password = os.environ.get(ENV_METADATA_PASSWORD, "")
        _redact(connection.mysql.password)
    elif config.metadata == "sqlite":
        if not readonly:  # SQLite creates the file, not its folder (TFX's sqlite_metadata_connection_config does too)
            os.makedirs(os.path.dirname(config.metadata_path), exist_ok=True)
        connection.sqlite.filename_uri = config.metadata_path
        connection.sqlite.connection_mode = (metadata_store_pb2.SqliteMetadataSourceConfig.READONLY if readonly else
                                             metadata_store_pb2.SqliteMetadataSourceConfig.READWRITE_OPENCREATE)
    else:
        raise ValueError(f"metadata: {config.metadata}: the orchestrator keeps ML Metadata; there is no connection")
    return connection


def exists(config: Config) -> bool:
    """Whether there may be a store to read: the SQLite file exists, or a server is configured (its database is
    created when opened); never for metadata: managed."""
    return on_server(config) or (config.metadata == "sqlite" and os.path.exists(config.metadata_path))


def _reason(config: Config, error: Exception) -> str:
    """What went wrong, in words: ML Metadata's message without the SQL it quotes; for a server, whether anything
    answers on host:port (its MySQL client says nothing more for a refused connection or login)."""
    text = str(error).rsplit(" query: ", 1)[0].removeprefix("Error when executing query: ").strip()
    if not on_server(config) or "mysql_real_connect failed" not in text:
        return text
    try:
        socket.create_connection((config.metadata_server.host, port(config)), timeout=5).close()
    except OSError as e:
        return (f"nothing answers on {config.metadata_server.host}:{port(config)} ({e.strerror or e}): is the server "
                "running, and reachable from here?")
    return (f"the server on {config.metadata_server.host}:{port(config)} refused the login: check the user, "
            f"${ENV_METADATA_PASSWORD} and the user's rights on the database")


def open_store(config: Config, readonly: bool = False):
    """ml_metadata.MetadataStore for `config`; MetadataError, naming the store, when it cannot be opened (an
    unreachable server, a refused login, a file that is not a SQLite database)."""
    import ml_metadata as mlmd

    connection = connection_config(config, readonly)
    deadline = time.monotonic() + _OPEN_RACE_SECONDS
    while True:
        try:
            return mlmd.MetadataStore(connection)
        except RuntimeError as e:
            if not any(race in str(e) for race in _RACES) or time.monotonic() > deadline:
                raise MetadataError(f"ML Metadata: cannot open {describe(config)}: {_reason(config, e)}") from None
            time.sleep(random.uniform(0.2, 1.0))  # as TFX's own Metadata retries
