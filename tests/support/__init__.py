"""What the tests share: service fixtures, builders, doubles and the one ``wait_until``.

The fixture modules are loaded as plugins by ``tests/conftest.py``; the others are imported by path.
"""
