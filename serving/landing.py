"""Landed loans applied to the online state (DESIGN §13), for the stream and for a load's replay.

A landed loan is registered in a version's registry (`P:<version>:landed`, loan_id -> the loan as
JSON, written once per loan_id), then applied to its client's hash by one script on that one key
(`store.APPLY_LANDED`), which also lists the loan in the hash's `landed` field. So:

* a replayed micro-batch, a restart after a crash or the same file landing twice finds the loan
  listed and changes nothing (`already_applied`);
* a landed loan whose loan_id is registered with other content conflicts (`duplicate_loan_id`);
* a hash changed between its read and the script (another writer) is read again and recomputed.

Applying a loan to its client's state:

* every loan adds to the totals: `loans` + 1, `amount_sum` + its amount;
* the client's latest loan by (`loan_date`, `loan_id`) gets the loan's features as of its date
  (`contract.features_of_a_new_loan`: every other accepted loan is earlier), its date, id and
  attributes, and the score of the version's model: what the feature job and `materialize` would give;
* a loan dated before the latest (late data) adds to the latest loan's history features
  (`contract.features_with_an_earlier_loan`), which is scored again; the latest loan stays;
* a client with no state yet (a first loan) gets one.
"""

from __future__ import annotations

import collections
import dataclasses
import datetime as dt
import json
import logging
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from contract import FEATURE_NAMES, History, car_flag, features_of_a_new_loan, features_with_an_earlier_loan
from contract.raw import parse_date
from serving.scoring import VersionModel
from serving.store import LANDED_FIELD, LandedUpdate, OnlineStore

log = logging.getLogger(__name__)

APPLIED, ALREADY_APPLIED = "applied", "already_applied"
ATTEMPTS = 8


class LandingError(RuntimeError):
    """Landed loans could not be applied (the message says why); nothing half-applied stays wrong:
    applying them again (a replay) completes the work."""


@dataclasses.dataclass(frozen=True)
class LandedLoan:
    """An accepted landed loan: what its client's state needs, and a digest of its row (its identity)."""

    loan_id: int
    client_id: int
    loan_date: dt.date
    amount: float
    birthday: str | None  # the raw values, trimmed (contract.features reads them)
    job_start_date: str | None
    flag_own_car: str | None
    digest: str

    @property
    def order(self) -> tuple[dt.date, int]:
        return self.loan_date, self.loan_id

    def to_json(self) -> str:
        fields = dataclasses.asdict(self) | {"loan_date": self.loan_date.isoformat()}
        return json.dumps(fields, separators=(",", ":"), sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> LandedLoan:
        fields = json.loads(text)
        return cls(**(fields | {"loan_date": dt.date.fromisoformat(fields["loan_date"])}))


@dataclasses.dataclass
class Outcome:
    """What applying some loans to one version did, per loan_id, and which loans created their client."""

    by_loan: dict[int, str] = dataclasses.field(default_factory=dict)
    created: set[int] = dataclasses.field(default_factory=set)  # the loans that gave their client a state

    def count(self, what: str) -> int:
        return sum(1 for outcome in self.by_loan.values() if outcome == what)

    @property
    def last_applied(self) -> int | None:
        applied = [loan_id for loan_id, outcome in self.by_loan.items() if outcome == APPLIED]
        return max(applied) if applied else None


def register(store: OnlineStore, versions: Sequence[str], loans: Sequence[LandedLoan]) -> dict[int, str]:
    """Register the loans in each version's registry (the first version's decides): the loans whose
    loan_id was registered there before with another row, with that row's digest."""
    conflicts: dict[int, str] = {}
    if not loans:
        return conflicts
    entries = {loan.loan_id: loan.to_json() for loan in loans}
    digests = {loan.loan_id: loan.digest for loan in loans}
    for index, version in enumerate(versions):
        found = store.register_landed(version, entries)
        if index == 0:
            for loan_id, before in found.items():
                if before is not None and (seen := json.loads(before)["digest"]) != digests[loan_id]:
                    conflicts[loan_id] = seen
    return conflicts


def apply(store: OnlineStore, version: str, model: VersionModel, loans: Iterable[LandedLoan]) -> Outcome:
    """Apply loans (registered already) to their clients' hashes in `version`; see the module docstring.

    Each client's loans are applied in their order; a client whose hash changed meanwhile is read again
    and its remaining loans recomputed, up to ATTEMPTS times (then LandingError).
    """
    pending: dict[int, list[LandedLoan]] = collections.defaultdict(list)
    for loan in loans:
        pending[loan.client_id].append(loan)
    for client_loans in pending.values():
        client_loans.sort(key=lambda loan: loan.order)
    outcome = Outcome()
    for _ in range(ATTEMPTS):
        if not pending:
            return outcome
        clients = list(pending)
        states = store.read_version_many(version, clients)
        updates: list[LandedUpdate] = []
        for client_id, state in zip(clients, states, strict=True):
            client_updates, already = plan(client_id, state, pending[client_id], model, store)
            updates += client_updates
            outcome.by_loan.update(dict.fromkeys(already, ALREADY_APPLIED))
        changed: set[int] = set()
        for update, result in zip(updates, store.apply_landed(version, updates) if updates else [], strict=True):
            if result == -1:
                changed.add(update.client_id)
                continue
            outcome.by_loan[update.loan_id] = APPLIED if result == 1 else ALREADY_APPLIED
            if result == 1 and update.expected_loans == 0:
                outcome.created.add(update.loan_id)
        pending = {c: [x for x in pending[c] if x.loan_id not in outcome.by_loan] for c in changed}
    if pending:
        raise LandingError(
            f"{len(pending)} client(s) of version {version} changed each of the {ATTEMPTS} times their landed "
            "loans were applied (another writer at work?): the loans not applied yet are applied on a replay"
        )
    return outcome


def plan(
    client_id: int, state: Mapping[str, Any] | None, loans: Sequence[LandedLoan], model: VersionModel,
    store: OnlineStore,
) -> tuple[list[LandedUpdate], list[int]]:  # fmt: skip
    """The updates that apply `loans` (in order) to the client's `state`, and the loans it lists already."""
    record: dict[str, Any] = dict(state or {})
    if record and "loans" not in record:
        raise LandingError(f"version {model.version} holds no history state: publish a new version with materialize")
    landed = str(record.get(LANDED_FIELD, ""))
    done = set(landed.split(","))
    planned: list[tuple[LandedLoan, int, str, dict[str, Any]]] = []
    already: list[int] = []
    for loan in loans:
        if str(loan.loan_id) in done:
            already.append(loan.loan_id)
            continue
        expected_loans, expected_landed = int(record.get("loans", 0)), landed
        changes = _changes(record, loan, model)
        planned.append((loan, expected_loans, expected_landed, changes))
        record.update(changes)
        landed = f"{landed},{loan.loan_id}" if landed else str(loan.loan_id)
    scores = model.model.scores([{n: changes[n] for n in FEATURE_NAMES} for _, _, _, changes in planned])
    updates = []
    for (loan, expected_loans, expected_landed, changes), score in zip(planned, scores, strict=True):
        fields = {**changes, "score": score, "label": int(score >= model.threshold)}
        encoded = store.codec.encode(fields)
        text = {name: encoded.get(name) for name in fields}  # None: the field is removed (a null feature)
        updates.append(LandedUpdate(client_id, loan.loan_id, expected_loans, expected_landed, text))
    return updates, already


def _changes(record: Mapping[str, Any], loan: LandedLoan, model: VersionModel) -> dict[str, Any]:
    """The fields one loan changes in a client's record (the score is added by the caller)."""
    loans, amount_sum = int(record.get("loans", 0)), float(record.get("amount_sum", 0.0))
    totals = {"loans": loans + 1, "amount_sum": amount_sum + loan.amount}
    latest = (dt.date.fromisoformat(record["loan_date"]), int(record["last_loan_id"])) if loans else None
    if latest is not None and loan.order < latest:
        features = features_with_an_earlier_loan({n: record.get(n) for n in FEATURE_NAMES}, loan.amount)
        return {**features, **totals}
    last_date = latest[0] if latest else None
    flag = car_flag(loan.flag_own_car)[0]
    history = History(loans, amount_sum, last_date, loan.birthday, loan.job_start_date, flag)
    born, started = parse_date(loan.birthday), parse_date(loan.job_start_date)
    return {
        **features_of_a_new_loan(history, loan.loan_date),
        **totals,
        "loan_date": loan.loan_date.isoformat(),
        "last_loan_id": loan.loan_id,
        "birthday": born.isoformat() if born else None,
        "job_start_date": started.isoformat() if started else None,
        "model_version": model.model_version,
    }
