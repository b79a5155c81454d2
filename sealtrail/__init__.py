"""sealtrail: a tamper-evident audit log for Kubernetes fleets, on Kafka and ClickHouse."""

__version__ = "0.1.0"
