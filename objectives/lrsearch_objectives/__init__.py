"""Built-in lrsearch objectives. `mnist_mlp` is the template to copy for your own model and data."""
