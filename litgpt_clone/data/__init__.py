"""Datasets: token shards (the on-disk format pretrain reads and `prepare code` writes) and data modules."""
