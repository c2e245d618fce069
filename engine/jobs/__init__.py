"""Job implementations run by the worker in a child process."""
