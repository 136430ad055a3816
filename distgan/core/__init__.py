"""The GAN itself, in plain PyTorch: losses, the adversarial step, the training loop, checkpoints,
evaluation and the stopping rules. Nothing here imports Ray or MLflow: runners and recorders come in
through the small protocols of `distgan.core.loop`."""
