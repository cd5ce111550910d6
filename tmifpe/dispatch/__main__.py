"""``python -m tmifpe.dispatch run|status``."""

from tmifpe.dispatch.cli import app

if __name__ == "__main__":
    app()
