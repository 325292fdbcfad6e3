"""One merge from config to files: :func:`evomerge.pipelines.merge.job.run_merge`."""
