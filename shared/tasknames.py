"""Celery task names and queues: the contract between the web side (which enqueues by name) and the
workers (which register these names). Neither side imports the other."""

INGEST = "swapline.ingest"
REBUILD = "swapline.rebuild"
DELETE_DOCUMENTS = "swapline.delete_documents"
DROP_COLLECTION = "swapline.drop_collection"
SWEEP = "swapline.sweep"
COLLECT_VERSIONS = "swapline.collect_versions"
WEBHOOK_DISPATCH = "swapline.webhooks.dispatch"
WEBHOOK_DELIVER = "swapline.webhooks.deliver"
RECONCILE = "swapline.reconcile"
INGEST_FILES = "swapline.ingest_files"
COMPACT = "swapline.compact"

QUEUE_INGEST = "ingest"
QUEUE_INDEX = "index"
# Webhook deliveries wait on other people's servers: their own queue, so a slow receiver never delays
# an ingest or a publish, and a long rebuild never delays a delivery.
QUEUE_WEBHOOKS = "webhooks"
QUEUES = (QUEUE_INGEST, QUEUE_INDEX, QUEUE_WEBHOOKS)

# Job kind -> (task name, queue).
KINDS = {
    "ingest": (INGEST, QUEUE_INGEST),
    "delete": (DELETE_DOCUMENTS, QUEUE_INGEST),
    "rebuild": (REBUILD, QUEUE_INDEX),
    "drop": (DROP_COLLECTION, QUEUE_INDEX),
    # Walks a source, fans changed files out as ingest jobs, tombstones removed files (or removes a source).
    "reconcile": (RECONCILE, QUEUE_INGEST),
    # One batch of a reconcile's changed files: read, chunk, embed, one segment (retried on its own).
    "ingest_files": (INGEST_FILES, QUEUE_INGEST),
    "compact": (COMPACT, QUEUE_INDEX),
}
