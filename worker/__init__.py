"""mpesa-b2c: a message-queue driven disbursement worker for M-PESA B2C (G2 SOAP)."""

from importlib.metadata import version

# Declared once, in pyproject.toml: the CLI's --version, the build-info metric and the chart all follow it.
__version__ = version("mpesa-b2c")
