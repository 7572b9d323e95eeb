"""The fault and abuse suite: each test breaks something on purpose and prints the figure
it proves (issue #10)."""
