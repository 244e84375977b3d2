"""The feature contract (DESIGN §4, §5): one home, owned by no stage, used by all of them.

`contract.raw` is the raw input (columns, how a value is read, rejection reasons, the id range);
`contract.features` the five features (name, type, null reasons, imputation, description) and their
Python forms; `contract.spark` the Spark forms of the same rules. The Spark jobs, the model, the
online store and the service derive their columns, types and shapes from here.
"""

from contract.features import (
    FEATURE_NAMES,
    FEATURES,
    MAX_AGE_YEARS,
    MAX_YEARS_ON_THE_JOB,
    NULL_REASONS,
    OUTPUT_COLUMNS,
    Feature,
    History,
    Imputation,
    age_on,
    car_flag,
    features_of_a_new_loan,
    features_with_an_earlier_loan,
    whole_years,
    years_on_the_job_on,
)
from contract.raw import MAX_ID, RAW_COLUMNS, REJECT_REASONS, TRIMMED

__all__ = [
    "FEATURES",
    "FEATURE_NAMES",
    "MAX_AGE_YEARS",
    "MAX_ID",
    "MAX_YEARS_ON_THE_JOB",
    "NULL_REASONS",
    "OUTPUT_COLUMNS",
    "RAW_COLUMNS",
    "REJECT_REASONS",
    "TRIMMED",
    "Feature",
    "History",
    "Imputation",
    "age_on",
    "car_flag",
    "features_of_a_new_loan",
    "features_with_an_earlier_loan",
    "whole_years",
    "years_on_the_job_on",
]
