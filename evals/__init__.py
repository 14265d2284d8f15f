"""The prompt evaluation suite: datasets, metrics, the runner and the report behind `cove eval`."""
