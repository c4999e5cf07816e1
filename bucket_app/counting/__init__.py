"""Counting, without Kafka: decode a message, find its event time and bucket, classify it to a
window-key, and count each record exactly once per window-key.
"""
