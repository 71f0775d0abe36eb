"""Celery task names and queues: the contract between the web side (which enqueues by name) and the
workers (which register these names). Neither side imports the other. Which kind of job runs which task
on which queue is `shared.jobkinds`."""

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
RECOVER = "swapline.recover"
SNAPSHOT = "swapline.snapshot"
RESTORE = "swapline.restore"
EVAL = "swapline.eval"

QUEUE_INGEST = "ingest"
QUEUE_INDEX = "index"
# Webhook deliveries wait on other people's servers: their own queue, so a slow receiver never delays
# an ingest or a publish, and a long rebuild never delays a delivery.
QUEUE_WEBHOOKS = "webhooks"
QUEUES = (QUEUE_INGEST, QUEUE_INDEX, QUEUE_WEBHOOKS)
