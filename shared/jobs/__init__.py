"""Jobs: the state model (`model`), how the API submits them (`submit`), and the work each kind does
on a worker (`ingest`, `rebuild`, `deletion`), plus the sweeper that keeps jobs moving (`sweep`)."""
