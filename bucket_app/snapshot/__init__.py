"""The counts changelog, read in full on every replica, materialized into one SQLite table, with its
writes in a child process.
"""
