"""Lambda entry points: parse the event, call one step, return its small result."""
