"""Data: storage URIs (file://, s3://, https://), `.bin` token shards, tokenizers, `data prepare`,
the builtin corpus and the training/validation loader."""
