"""Small, tested fixes that let pinned dependency versions work together."""
