"""Throughput benchmark of bucket_app against a bare consumer, Quix Streams and naive Faust."""
