"""Job implementations run by the worker in a child process, the run prologue they share and the fold seam."""
