"""Docker's `/v1/search` over what a repository stores: image names matching a term."""

from __future__ import annotations

from typing import Any


def result(name: str, description: str = "") -> dict[str, Any]:
    return {
        "name": name,
        "description": description,
        "star_count": 0,
        "is_official": False,
        "is_automated": False,
        "is_trusted": False,
    }


def matches(term: str, name: str) -> bool:
    term = term.strip().lower()
    return not term or term in name.lower()


def page_of(query: str, results: list[dict[str, Any]], n: int, page: int) -> dict[str, Any]:
    """The v1 response shape, one page of `n` results."""
    total = len(results)
    pages = max(1, -(-total // n)) if n else 1
    start = (page - 1) * n
    return {
        "query": query,
        "num_results": total,
        "num_pages": pages,
        "page": page,
        "page_size": n,
        "results": results[start : start + n],
    }
