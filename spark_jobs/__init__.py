"""Spark batch jobs of the credit-risk pipeline; run them with `./spark-submit.sh JOB ARGS`."""
