"""Self-describing DCP checkpoints. See `unirec_dist.checkpoint.dcp` for the API."""
