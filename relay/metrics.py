# In-process Prometheus metrics: what only this process sees as it happens (SMTP
# transactions, upstream attempt durations, tracking hits). One Metrics object per
# process, built by the composition root and handed to intake, delivery and tracking;
# no prometheus_client global registry. Store-backed metrics are in relay/admin/metrics.py.
from __future__ import annotations

import os
from collections.abc import Iterator

from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.metrics_core import Metric
from prometheus_client.multiprocess import MultiProcessCollector

SMTP_RESULTS = ("accepted", "rejected", "failed")  # 250, 5xx refusal, 4xx (could not spool)
HIT_KINDS = ("open", "click", "invalid")  # invalid: a token that does not verify (404)
# An upstream attempt takes milliseconds on a LAN and up to the data timeout (600 s).
ATTEMPT_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600)

# bounce, complaint: recorded; the rest recorded nothing (relay.feedback.listener).
FEEDBACK_RESULTS = ("bounce", "complaint", "auto_reply", "not_a_failure", "unattributed", "unrecognised")


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self.smtp_transactions = Counter(
            "relay_smtp_transactions", "SMTP transactions that reached DATA, by result (this process)",
            ["result"], registry=self.registry)
        self.delivery_attempt_seconds = Histogram(
            "relay_delivery_attempt_seconds", "Seconds per delivery attempt of a message upstream (this process)",
            buckets=ATTEMPT_BUCKETS, registry=self.registry)
        self.tracking_hits = Counter(
            "relay_tracking_hits", "Tracking requests served, by kind (this process)",
            ["kind"], registry=self.registry)
        self.feedback_reports = Counter(
            "relay_feedback_reports", "Inbound reports on the feedback listener, by what they became (this process)",
            ["result"], registry=self.registry)
        # Every label value from the start, so a rate() over a fresh process has a zero to start from.
        for result in SMTP_RESULTS:
            self.smtp_transactions.labels(result=result)
        for kind in HIT_KINDS:
            self.tracking_hits.labels(kind=kind)
        for result in FEEDBACK_RESULTS:
            self.feedback_reports.labels(result=result)

    def collect(self) -> Iterator[Metric]:
        """This object is itself a collector, so a scrape can add it to a registry of its own.

        With several serving processes (relay.supervisor sets PROMETHEUS_MULTIPROC_DIR before
        any of them imports prometheus_client), each writes its values to files there and
        this sums every process's."""
        directory = os.environ.get("PROMETHEUS_MULTIPROC_DIR")
        if not directory:
            yield from self.registry.collect()
            return
        combined = CollectorRegistry()
        MultiProcessCollector(combined, path=directory)
        yield from combined.collect()
