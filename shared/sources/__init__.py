"""Sources: collections that follow folders.

| module | what lives there |
| --- | --- |
| `paths` | where a source may live (SWAPLINE_SOURCE_ROOTS) and the checks every path passes |
| `filetypes` | a file's document type and language, and the default include globs |
| `walk` | walking a tree: .gitignore (pathspec), skipped folders, include/exclude globs, what to skip |
| `submit` | adding and removing sources, submitting reconciles (one per source at a time) |
| `gitdiff` | asking git what changed in a source folder: bounded, read-only, its output checked like walked paths |
| `plan` | what a reconcile would change (a walk, git, or a watcher's paths), compared with what is held |
| `reconcile` | the reconcile job: apply its plan (tombstone, record, fan out), finish |
| `dryrun` | a reconcile's plan and cost (chunks to embed, ETA) without changing anything, bounded |
| `batch` | a child ingest job of a reconcile: read the files, chunk, embed, record what is held |
| `watching` | the watcher's logic: one watcher per source (lease), debounced changes into reconciles |
"""
