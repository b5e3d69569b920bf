"""The test suite, importable as ``tests`` so helpers are imported by package path (``tests.support...``)."""
