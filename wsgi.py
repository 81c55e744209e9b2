"""WSGI entry point for gunicorn and `flask --app wsgi`."""

from financing import create_app

app = create_app()
