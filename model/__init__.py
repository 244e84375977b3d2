"""Training, the model registry and approval, and the backtest (DESIGN §7); filled by the training stage."""
