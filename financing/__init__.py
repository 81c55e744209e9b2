"""Virtual financing platform for ICT development projects."""

import logging
import os
from pathlib import Path

from flask import Flask

from financing.config import Config, ProductionConfig
from financing.core.security import check_production, init_security

ROOT = Path(__file__).resolve().parent.parent


def create_app(config: type[Config] | None = None, **overrides) -> Flask:
    """Build the application: configuration, extensions, blueprints and commands."""
    if config is None:
        config = ProductionConfig if os.environ.get("FINANCING_ENV") == "production" else Config
    app = Flask(
        __name__,
        template_folder=str(ROOT / "templates"),
        static_folder=str(ROOT / "static"),
        instance_path=str(ROOT / "instance"),
    )
    app.config.from_object(config)
    app.config.update(overrides)
    _configure_logging(app)
    check_production(app)
    Path(app.instance_path).mkdir(exist_ok=True)

    from financing.extensions import babel, csrf, db, login_manager, migrate
    from financing import models  # noqa: F401  (registers every table)
    from financing.core.cache import init_cache
    from financing.core.sqlite import configure_sqlite

    db.init_app(app)
    with app.app_context():
        configure_sqlite(db.engine)
    migrate.init_app(app, db, directory=str(ROOT / "migrations"), render_as_batch=True, compare_type=True)
    csrf.init_app(app)
    babel.init_app(app)
    login_manager.init_app(app)
    init_cache(app)

    from financing.web import register_web
    from financing.cli import register_commands

    register_web(app)
    init_security(app)
    register_commands(app)
    app.logger.info("app created database=%s", app.config["SQLALCHEMY_DATABASE_URI"].split(":", 1)[0])
    return app


def _configure_logging(app: Flask) -> None:
    if not logging.getLogger().handlers:
        logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    # Alembic logs each of its plugins at INFO on every start; keep its warnings only.
    logging.getLogger("alembic.runtime.plugins").setLevel(logging.WARNING)
