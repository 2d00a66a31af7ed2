"""Reading a real server's /metrics: parsed samples, and waiting until they settle."""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping

import requests
from prometheus_client.parser import text_string_to_metric_families

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def scrape(url: str) -> Samples:
    reply = requests.get(f"{url}/metrics", timeout=10)
    assert reply.status_code == 200, (reply.status_code, reply.text[:300])
    samples: Samples = {}
    for family in text_string_to_metric_families(reply.text):
        for s in family.samples:
            samples[(s.name, frozenset(s.labels.items()))] = s.value
    return samples


def value(samples: Samples, name: str, **labels: str) -> float:
    """One sample's value (0 when absent, as Prometheus treats a series never seen)."""
    return samples.get((name, frozenset(labels.items())), 0.0)


def label_values(samples: Samples, name: str, label: str) -> set[str]:
    return {dict(key)[label] for (n, key) in samples if n == name and label in dict(key)}


def settle(
    url: str, expected: Mapping[tuple[str, frozenset[tuple[str, str]]], float], timeout: float = 15
) -> Samples:
    """Scrape until every expected sample has its value (workers flush about once a second)."""
    deadline = time.monotonic() + timeout
    while True:
        samples = scrape(url)
        wrong = {k: samples.get(k, 0.0) for k, v in expected.items() if samples.get(k, 0.0) != v}
        if not wrong:
            return samples
        if time.monotonic() > deadline:
            raise AssertionError(f"metrics never reached the expected values: {wrong}")
        time.sleep(0.3)


def settle_on(
    url: str, ready: Callable[[Samples], bool], timeout: float = 15
) -> Samples:
    """Scrape until `ready` holds of the samples: for counts the workload only bounds from
    below, which a worker that has not flushed yet would leave short."""
    deadline = time.monotonic() + timeout
    while True:
        samples = scrape(url)
        if ready(samples) or time.monotonic() > deadline:
            return samples  # the caller's assertions say what is still missing
        time.sleep(0.3)


def key(name: str, **labels: str) -> tuple[str, frozenset[tuple[str, str]]]:
    return (name, frozenset(labels.items()))
