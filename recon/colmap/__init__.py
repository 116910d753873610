"""COLMAP databases and models: writing what the matchers found, reading what mappers made."""
