"""Training: a plan chosen from the data (with reasons), local TRL/PEFT training, run directories."""
