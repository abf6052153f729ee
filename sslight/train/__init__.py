"""Pre-training: the loop (loop.py) around one optimiser step (step.py), with its optimisers,
checkpointed state, faults and logs."""
