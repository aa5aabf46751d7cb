"""Portal pages on a large connection log, against the same pages on a small one.

Generates 1,000 identities with 1,000 and then 1,000,000 association rows
spread over a year, renders each page several times through the Flask test
client, and prints the median time of each and its ratio to the small log.
The target is a ratio of at most 2 for every page.
"""

from __future__ import annotations

import random
import statistics
import tempfile
import time
from datetime import date, datetime, timedelta, timezone
from pathlib import Path

from flask_migrate import upgrade
from sqlalchemy import insert, select

from portal import create_app
from portal.extensions import db
from portal.models import Association, DicomIdentity, UsageDay, User
from portal.settings import Settings
from portal.users import create_user

IDENTITIES = 1000
SMALL_LOG = 1000
LARGE_LOG = 1_000_000
DAYS = 365
REPEATS = 7
BATCH = 20000
REASONS = ["unknown_calling_ae", "identity_disabled", "called_ae_mismatch", "tls_required", None, None, None, None]


def build(data_dir: Path, associations: int):
    """Create an upgraded database with identities and `associations` log rows; return the app."""
    app = create_app(Settings.from_env({"DATA_DIR": str(data_dir)}), TESTING=True, WTF_CSRF_ENABLED=False)
    random.seed(7)
    now = datetime.now(timezone.utc)
    with app.app_context():
        upgrade()
        create_user(db.session, "bench", "Administrator", "benchmark-password")
        db.session.commit()

        db.session.execute(insert(DicomIdentity), [
            {"name": f"Device {number}", "ae_title": f"DEV{number}", "ae_title_folded": f"DEV{number}",
             "enabled": True, "allow_anonymous_tls": False, "require_tls": False, "permitted": ["echo", "store"],
             "created_at": now, "updated_at": now, "associations_accepted": 0, "associations_rejected": 0,
             "instances_received": 0, "bytes_received": 0}
            for number in range(IDENTITIES)
        ])

        usage: dict[tuple[int, date], int] = {}
        rows = []
        # Oldest first, as dicomd inserts them.
        for index in range(associations):
            started = now - timedelta(seconds=DAYS * 86400 * (associations - index) / associations)
            identity_id = random.randint(1, IDENTITIES)
            reason = random.choice(REASONS)
            known = reason != "unknown_calling_ae"
            rows.append({
                "started_at": started, "ended_at": started + timedelta(seconds=2),
                "identity_id": identity_id if known else None,
                "calling_ae_title": f"DEV{identity_id - 1}" if known else f"STRANGER{identity_id % 50}",
                "called_ae_title": "PACS", "peer_address": f"10.0.{identity_id // 256}.{identity_id % 256}",
                "peer_port": 40000, "transport": "plain", "local_port": 11112,
                "outcome": "rejected" if reason else "accepted", "reason": reason,
                "operations": {} if reason else {"store": 3}, "instances_received": 0 if reason else 3,
                "bytes_received": 0 if reason else 300000,
            })
            if known:
                usage[(identity_id, started.date())] = usage.get((identity_id, started.date()), 0) + 1
            if len(rows) == BATCH:
                db.session.execute(insert(Association), rows)
                rows = []
        if rows:
            db.session.execute(insert(Association), rows)

        db.session.execute(insert(UsageDay), [
            {"identity_id": identity_id, "day": day, "associations_accepted": count, "associations_rejected": 0,
             "echo_requests": 0, "store_requests": 3 * count, "find_requests": 0, "move_requests": 0,
             "get_requests": 0, "commit_requests": 0, "instances_received": 3 * count,
             "bytes_received": 300000 * count}
            for (identity_id, day), count in usage.items()
        ])
        db.session.commit()
        db.session.execute(db.text("ANALYZE"))
        assert db.session.scalar(select(User.id).where(User.username == "bench"))
    return app


PAGES = {
    "identity list": "/settings/devices/dicom",
    "identity usage": "/settings/devices/dicom/500/usage",
    "connection log": "/settings/devices/dicom/log",
    "connection log, one reason": "/settings/devices/dicom/log?reason=tls_required",
    # An export's time grows with the rows it writes, so both runs export about
    # 1,000 rows: the whole small log, and one identity's share of the large one.
    "CSV export, about 1,000 rows": {SMALL_LOG: "/settings/devices/dicom/log.csv",
                                     LARGE_LOG: "/settings/devices/dicom/log.csv?identity=500"},
}


def measure(app, size: int) -> dict[str, float]:
    client = app.test_client()
    response = client.post("/login", data={"username": "bench", "password": "benchmark-password"})
    assert response.status_code == 302, response.status_code
    timings = {}
    for label, url in PAGES.items():
        url = url[size] if isinstance(url, dict) else url
        samples = []
        for _ in range(REPEATS):
            started = time.perf_counter()
            response = client.get(url)
            response.get_data()
            samples.append(time.perf_counter() - started)
            assert response.status_code == 200, (url, response.status_code)
        timings[label] = statistics.median(samples)
    return timings


def main() -> None:
    with tempfile.TemporaryDirectory() as small_dir, tempfile.TemporaryDirectory() as large_dir:
        print(f"Generating {IDENTITIES} identities with {SMALL_LOG} and {LARGE_LOG} association rows...", flush=True)
        small = measure(build(Path(small_dir), SMALL_LOG), SMALL_LOG)
        started = time.perf_counter()
        large_app = build(Path(large_dir), LARGE_LOG)
        print(f"Generated the large log in {time.perf_counter() - started:.0f} s.", flush=True)
        large = measure(large_app, LARGE_LOG)

    print(f"\n| page | {SMALL_LOG:,} rows (ms) | {LARGE_LOG:,} rows (ms) | ratio | target |")
    print("| --- | ---: | ---: | ---: | --- |")
    for label in PAGES:
        ratio = large[label] / small[label]
        verdict = "met" if ratio <= 2 else "NOT met"
        print(f"| {label} | {small[label] * 1000:.1f} | {large[label] * 1000:.1f} | {ratio:.2f} | ≤ 2: {verdict} |")
    print(f"\nMedian of {REPEATS} requests through the Flask test client, SQLite.")
