"""Command-line front ends: one thin module per command, registered in `main.py`."""
