"""The raw input's columns and the feature output's names (DESIGN §4 to §6); no Spark import here."""

RAW_COLUMNS: tuple[str, ...] = (
    "loan_id", "id", "code_gender", "flag_own_car", "flag_own_realty", "cnt_children",
    "amt_income_total", "name_income_type", "name_education_type", "name_family_status",
    "name_housing_type", "days_birth", "days_employed", "flag_mobil", "flag_work_phone",
    "flag_phone", "flag_email", "occupation_type", "cnt_fam_members", "status", "birthday",
    "job_start_date", "loan_date", "loan_amount",
)  # fmt: skip

FEATURE_NAMES: tuple[str, ...] = (
    "nb_previous_loans", "avg_amount_loans_previous", "age", "years_on_the_job", "flag_own_car",
)  # fmt: skip

OUTPUT_COLUMNS: tuple[str, ...] = ("loan_id", "id", "loan_date", *FEATURE_NAMES, "status")

# Rejection reasons in the order they are checked: a row gets the first that applies.
REJECT_REASONS: tuple[str, ...] = (
    "invalid_id", "invalid_loan_id", "invalid_loan_date", "invalid_loan_amount", "invalid_status",
    "future_loan_date", "duplicate_loan_id",
)  # fmt: skip

# Why a feature is null, per feature, in the order they are checked.
NULL_REASONS: dict[str, tuple[str, ...]] = {
    "nb_previous_loans": (),
    "avg_amount_loans_previous": ("first_loan",),
    "age": ("birthday_missing", "birthday_invalid", "birthday_after_loan_date", "age_over_120"),
    "years_on_the_job": (
        "job_start_missing", "job_start_invalid", "job_start_after_loan_date",
        "job_start_before_birthday", "years_on_the_job_over_100",
    ),
    "flag_own_car": ("flag_own_car_missing", "flag_own_car_invalid"),
}  # fmt: skip

MAX_AGE_YEARS = 120
MAX_YEARS_ON_THE_JOB = 100
MAX_ID = 2**63 - 1
# Characters trimmed from both ends of every raw value.
TRIMMED = " \t\r\n"
