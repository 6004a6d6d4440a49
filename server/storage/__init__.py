"""Reads and writes of the service's SQLite tables, one module per table (or pair of tables
that are written together). Everything here blocks: call it from a worker thread."""
