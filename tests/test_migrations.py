"""The Alembic revisions build the same schema as the models, on SQLite and PostgreSQL."""

import os
import uuid

import pytest
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from flask_migrate import upgrade
from sqlalchemy import create_engine, inspect, text
from sqlalchemy.engine import make_url

from financing import create_app
from financing.config import TestConfig
from financing.extensions import db, schema_objects_of


@pytest.fixture
def empty_database_url(tmp_path):
    """Yield the URL of an empty database of the same kind as the test database."""
    url = os.environ.get("TEST_DATABASE_URL", "")
    if not url.startswith("postgresql"):
        yield f"sqlite:///{tmp_path / 'migrated.sqlite'}"
        return
    name = f"financing_migrations_{uuid.uuid4().hex[:8]}"
    admin = create_engine(url, isolation_level="AUTOCOMMIT")
    with admin.connect() as connection:
        connection.execute(text(f'CREATE DATABASE "{name}"'))
    try:
        yield make_url(url).set(database=name).render_as_string(hide_password=False)
    finally:
        with admin.connect() as connection:
            connection.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


def test_upgrade_matches_models(empty_database_url):
    class MigrationConfig(TestConfig):
        SQLALCHEMY_DATABASE_URI = empty_database_url

    app = create_app(MigrationConfig)
    with app.app_context():
        upgrade()
        with db.engine.connect() as connection:
            include = schema_objects_of(connection.dialect.name)
            context = MigrationContext.configure(connection, opts={"compare_type": True, "include_object": include})
            differences = compare_metadata(context, db.metadata)
            tables = set(inspect(connection).get_table_names())
        db.engine.dispose()

    assert differences == []
    assert set(db.metadata.tables) <= tables
