"""maester test suite."""
