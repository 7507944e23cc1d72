"""Prometheus metrics of one node process (its own registry, served at /metrics)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram


class NodeMetrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.jobs = Counter(
            "shardnet_jobs_total",
            "jobs this node took part in, by kind and result",
            ["kind", "result"],
            registry=self.registry,
        )
        self.stage_seconds = Histogram(
            "shardnet_stage_seconds", "time to run this node's span once", ["kind"], registry=self.registry
        )
        self.bytes_in = Counter("shardnet_bytes_in_total", "data-plane bytes received", registry=self.registry)
        self.bytes_out = Counter("shardnet_bytes_out_total", "data-plane bytes sent", registry=self.registry)
        self.refused = Counter(
            "shardnet_requests_refused_total", "data-plane requests refused", ["reason"], registry=self.registry
        )
        self.outputs_handed = Counter(
            "shardnet_outputs_handed_total", "job outputs handed straight to their clients", registry=self.registry
        )
        self.open_jobs = Gauge("shardnet_open_jobs", "jobs in progress at this node", registry=self.registry)
