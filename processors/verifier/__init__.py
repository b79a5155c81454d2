"""The verifier: replays chains and checkpoints (core, pure) from Kafka, ClickHouse and files."""
