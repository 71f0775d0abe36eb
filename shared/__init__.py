"""Domain code shared by the web app and the workers: settings, Redis keys, jobs, locks, storage,
chunking, embedders and FAISS indexes. Nothing here imports `webapp` or `workers`."""
