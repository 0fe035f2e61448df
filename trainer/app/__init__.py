"""The services behind main.py's modes."""
