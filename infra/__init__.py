"""CDK constructs for fanout: storage, functions, workflow, trigger and observability, composed by one stack."""
