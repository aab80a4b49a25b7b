"""Command-line interface: one module per command, its docopt usage in its docstring."""
