"""Ingestion: event files into raw.events, attributes into raw.items and raw.users."""

from unirec_dagster.ingest.catalog import CatalogStats, build_catalog, catalog_as_of
from unirec_dagster.ingest.events import IngestRefused, PartitionStats, ingest_days

__all__ = ["CatalogStats", "IngestRefused", "PartitionStats", "build_catalog", "catalog_as_of", "ingest_days"]
