"""Flask extensions, created unbound and attached in the app factory."""

from flask_babel import Babel
from flask_caching import Cache
from flask_login import LoginManager
from flask_migrate import Migrate
from flask_sqlalchemy import SQLAlchemy
from flask_wtf.csrf import CSRFProtect
from sqlalchemy import MetaData
from sqlalchemy.orm import DeclarativeBase

# Stable constraint names, so that Alembic migrations can address them on SQLite and PostgreSQL.
NAMING_CONVENTION = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING_CONVENTION)


def schema_objects_of(dialect: str):
    """Return an Alembic `include_object` hook that leaves out indexes of other databases.

    Such an index is declared with `.ddl_if(dialect=...)` and the same name in
    `info["dialect"]`, which Alembic's comparison cannot see otherwise.
    """

    def include(obj, name, type_, reflected, compare_to) -> bool:
        only_on = obj.info.get("dialect") if type_ == "index" else None
        return only_on is None or only_on == dialect

    return include


db = SQLAlchemy(model_class=Base)
migrate = Migrate()
login_manager = LoginManager()
csrf = CSRFProtect()
babel = Babel()
cache = Cache()
