"""Datasets: synthetic generation, folder layouts, patch extraction and split preparation."""
