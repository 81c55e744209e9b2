"""SQLite connection settings that make its transactions behave like PostgreSQL's."""

from sqlalchemy import Engine, event


def configure_sqlite(engine: Engine) -> None:
    """Let SQLAlchemy issue BEGIN itself and switch on foreign keys.

    Python's sqlite3 module delays BEGIN until the first write, so a SAVEPOINT issued first
    becomes the outermost transaction and its RELEASE commits: a nested transaction would
    then commit half a request. Emitting BEGIN at the start of every transaction restores
    the usual nesting.
    """
    if engine.dialect.name != "sqlite":
        return

    @event.listens_for(engine, "connect")
    def on_connect(dbapi_connection, connection_record):
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.execute("PRAGMA busy_timeout=15000")
        cursor.close()

    @event.listens_for(engine, "begin")
    def on_begin(connection):
        connection.exec_driver_sql("BEGIN")
