"""A Flask app with one endpoint that returns a short string.

benchmarks/web.py serves it with the same gunicorn settings as the platform, so that the
platform's figures can be read against the cost of Flask and gunicorn alone:

    gunicorn -c gunicorn.conf.py --chdir benchmarks bare_app:app
"""

from flask import Flask

app = Flask(__name__)


@app.get("/")
def hello():
    return "ok"
