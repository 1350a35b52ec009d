"""The run machinery behind `trainer.py`: TrainConfig (config.py), the checkpoint format (checkpoint.py) and a
run's checkpoint files (run_checkpoints.py), the learning-rate schedule and the wall-clock budget, mixed precision,
data-parallel helpers, the run log and the run lock, memory, and the fused head + loss for CPU training."""
