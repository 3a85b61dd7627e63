"""Training: a plan chosen from the data (with reasons), local transformers/PEFT training, run directories."""
