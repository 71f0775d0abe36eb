"""Celery task names and queues: the contract between the web side (which enqueues by name) and the
workers (which register these names). Neither side imports the other."""

INGEST = "swapline.ingest"
REBUILD = "swapline.rebuild"
DELETE_DOCUMENTS = "swapline.delete_documents"
DROP_COLLECTION = "swapline.drop_collection"
SWEEP = "swapline.sweep"
COLLECT_VERSIONS = "swapline.collect_versions"

QUEUE_INGEST = "ingest"
QUEUE_INDEX = "index"
QUEUES = (QUEUE_INGEST, QUEUE_INDEX)

# Job kind -> (task name, queue).
KINDS = {
    "ingest": (INGEST, QUEUE_INGEST),
    "delete": (DELETE_DOCUMENTS, QUEUE_INGEST),
    "rebuild": (REBUILD, QUEUE_INDEX),
    "drop": (DROP_COLLECTION, QUEUE_INDEX),
}
