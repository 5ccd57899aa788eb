"""Teacher samples in WebDataset shards: the on-disk format, the shard plan and the reader."""
