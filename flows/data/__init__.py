"""Datasets: sources, validated and DVC-versioned additions, the catalog."""
