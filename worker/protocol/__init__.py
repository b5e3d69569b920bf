"""The G2 wire format as pure functions: bytes in, typed values out; no sockets, settings or logging."""
