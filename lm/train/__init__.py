"""The training room: the pure step, compiled steps on a mesh, the loop, checkpoints, run records, logging."""
