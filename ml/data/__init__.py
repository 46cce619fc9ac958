"""Shared feed data library: schema, synthetic world, streaming sharded Parquet reader (no ML framework)."""
