"""The figures of the chapters and of a run (plotting.py); matplotlib is imported only here."""
