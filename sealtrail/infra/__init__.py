"""Shared infrastructure: configuration, errors, Kafka and ClickHouse clients, service
helpers. The bottom layer: it imports nothing else of sealtrail (docs/DESIGN.md)."""
