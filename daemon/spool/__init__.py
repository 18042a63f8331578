"""The spool stage: the folders on disk, the rename claim, recovery, id reservation, failed/.

`from daemon import spool` gives the stage's public functions; the modules hold one job each.
"""

from daemon.spool.claim import claim, complete_job, list_claims, mark_requeued, mark_started
from daemon.spool.failed import error_sidecar, fail_job, reject_non_regular
from daemon.spool.layout import SPOOL_DIRS, SpoolError, ensure_layout, iso_utc
from daemon.spool.owner import Owner, current_owner, owner_alive
from daemon.spool.records import Claimed, NotRegularFileError
from daemon.spool.recover import clean_stale_temps, recover
from daemon.spool.reserve import outcome_exists, release_id, reserve_id, result_dirs

__all__ = [
    "SPOOL_DIRS",
    "Claimed",
    "NotRegularFileError",
    "Owner",
    "SpoolError",
    "claim",
    "clean_stale_temps",
    "complete_job",
    "current_owner",
    "ensure_layout",
    "error_sidecar",
    "fail_job",
    "iso_utc",
    "list_claims",
    "mark_requeued",
    "mark_started",
    "outcome_exists",
    "owner_alive",
    "recover",
    "reject_non_regular",
    "release_id",
    "reserve_id",
    "result_dirs",
]
