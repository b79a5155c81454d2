"""Chain ids: how a chain is named after the raw-topic partition it seals (docs/FORMAT.md
section 1), and its checkpoint origin (section 4). The one place that builds or takes apart a
chain id or an origin."""

from __future__ import annotations

__all__ = ["chain_id", "chain_of_origin", "origin_for", "origin_names_chain", "partition_of"]


def chain_id(raw_topic: str, partition: int) -> str:
    """``"<raw topic>/<partition>"``; the raw topic name includes SEALTRAIL_TOPIC_PREFIX."""
    return f"{raw_topic}/{partition}"


def partition_of(chain: str, raw_topic: str) -> int | None:
    """The partition a chain id of ``raw_topic`` names, or None if it names no such chain."""
    prefix = raw_topic + "/"
    tail = chain[len(prefix) :] if chain.startswith(prefix) else ""
    if not tail.isdigit() or (len(tail) > 1 and tail[0] == "0"):
        return None
    return int(tail)


def origin_for(deployment: str, chain: str) -> str:
    """The checkpoint origin of ``chain``: ``"<deployment>/<chain>"``."""
    return f"{deployment}/{chain}"


def origin_names_chain(origin: str, chain: str) -> bool:
    """Whether ``origin`` is the origin of ``chain`` under some deployment (a proof file names
    the chain, not the deployment)."""
    return origin.endswith("/" + chain)


def chain_of_origin(origin: str, deployment: str) -> str | None:
    """The chain id in a checkpoint origin ``"<deployment>/<chain id>"``, or None if the origin
    belongs to another deployment."""
    prefix = f"{deployment}/"
    return origin[len(prefix) :] if origin.startswith(prefix) else None
