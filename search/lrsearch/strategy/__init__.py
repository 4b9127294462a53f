"""The LR strategy: optimizer and scheduler families, the strategy as plain data, the schedule driver, the space."""
