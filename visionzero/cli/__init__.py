"""The command line's work (`run.py` only declares the commands and their options): what every
invocation does first, the pipeline runs, and what each other command does. It sits at the top,
beside run.py: it may import the pipelines and every stage; nothing in the package imports it."""
