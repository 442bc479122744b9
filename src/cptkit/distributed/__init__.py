"""Everything about several processes lives here: the process group (env.py), FSDP2 wrapping
(fsdp.py) and each rank's slice of a global batch (batch.py). World size 1 runs the same code
and skips the wrapping, so one process gives the numbers it always gave."""
