"""What every layer above `components/` shares: the command-line grammar (cli.py) and the one safe way to
write a file (files.py). Standard library only."""
