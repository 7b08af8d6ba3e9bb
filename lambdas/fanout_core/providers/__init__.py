"""Model providers: one call in, one :class:`ModelReply` out, errors mapped to retry semantics."""
