"""mpesa-b2c: a message-queue driven disbursement worker for M-PESA B2C (G2 SOAP)."""

__version__ = "0.1.0"
