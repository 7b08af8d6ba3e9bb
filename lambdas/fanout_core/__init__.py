"""fanout's Lambda-side code: the job model, planning, model providers, aggregation and S3 I/O."""
