"""The project's one command line: `credit JOB [ARGS...]` (also `./spark-submit.sh JOB [ARGS...]`)."""
