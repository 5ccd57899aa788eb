"""Metrics for generated images: Frechet distance, pixel metrics, diversity, toy scores."""
