"""The pure core: wire messages, the controller's state machine and the optimiser.

Nothing in this package performs I/O (no Kafka, no Bytewax, no clock, no files,
no logging): every input arrives as a value and every decision leaves as a value.
"""
