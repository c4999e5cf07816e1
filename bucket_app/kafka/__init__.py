"""Kafka in: topic administration at start-up, the client security settings, the batch intake that
replaces Faust's per-message stream, and the changelog writes of the counts table.
"""
