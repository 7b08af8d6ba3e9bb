"""CDK constructs for fanout: storage, functions, workflow and trigger, composed by one stack."""
