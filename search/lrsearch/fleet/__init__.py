"""Workers: the worker loop, the local supervisor, devices and threads."""
