"""Model side: block decomposition of transformers models, span execution, compression, shards."""
