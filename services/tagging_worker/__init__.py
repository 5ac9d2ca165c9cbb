"""Tagging worker: consumes `document.uploaded` jobs, extracts text, asks model-serving
for tags and records the result with the upload service over gRPC. No database access."""
