"""Read-only user SQL over the snapshot: the guarded sandbox and the child processes that run it.
"""
