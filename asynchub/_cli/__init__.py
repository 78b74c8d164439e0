"""The asynchub command line: argument parsing and printing (main.py), command helpers."""
