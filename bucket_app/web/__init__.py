"""HTTP: the seed's routes, the JSON API, /health, /metrics, the dashboard and the OpenAPI
document, each route declared once (:mod:`bucket_app.web.declare`) and registered from one place
(:mod:`bucket_app.web.routes`); and the answer while a worker waits for Kafka (``starting``).
"""
