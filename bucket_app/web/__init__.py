"""HTTP: the seed's routes, the JSON API and /health, and the answer while a worker waits for Kafka.
"""
