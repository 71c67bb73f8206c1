"""The data room: sources, corpora, tokenizers, packing, prepared shards and the grain pipeline."""
