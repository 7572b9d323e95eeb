"""Dataset ingest: safe archive reading, the four label formats, splits, the ingest task."""
