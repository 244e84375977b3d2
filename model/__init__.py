"""Training with an honest protocol, the model registry and approval (DESIGN §7)."""
