"""Greets people. A stand-in for a real dependency in newt's wheel-python example."""

__version__ = "0.1.0"


def greet(name):
    """Returns the greeting for `name`."""
    return f"Hello, {name}!"
