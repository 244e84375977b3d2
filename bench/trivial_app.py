"""The benchmark's baseline: a trivial Flask app answering a fixed JSON object, run under the same gunicorn."""

from flask import Flask, Response, jsonify


def create_app() -> Flask:
    app = Flask(__name__)

    @app.get("/trivial")
    def trivial() -> Response:
        return jsonify({"client_id": 1, "status": "ok"})

    @app.get("/health")
    def health() -> Response:
        return jsonify({"status": "ok"})

    return app
