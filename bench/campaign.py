"""Campaign benchmark: a campaign to --users members sent to an SMTP catcher, against bare
aiosmtplib sends of the same mails to the same catcher.

    .venv/bin/python bench/campaign.py --seconds 10                  # 100,000 recipients
    .venv/bin/python bench/campaign.py --seconds 5 --users 5000      # a quick run

Starts its own stack: embedded PostgreSQL (temp dir, fresh database, migrations), a
Temporal dev server (its own SQLite file, WAL pragmas), the API (`uvicorn
api.app:create_app --factory --workers 1`), --worker-procs product worker processes and
the SMTP catcher of bench/send.py (aiosmtpd in a process of its own that only counts).
Signs up over HTTP, points the email channel at the catcher, writes --users members
(plan "pro", an email each) and a tenth as many non-members straight into PostgreSQL,
and creates a `plan = pro` segment over HTTP. Then, one after the other:

  baseline  --concurrency tasks in this process, each building the product's email
            (activities/providers/smtp.py build_email: the same headers, subject and
            HTML body as the campaign's) and sending it with aiosmtplib.send, one
            connection per message like the provider: --warmup unmeasured seconds, then
            mails received per second over --seconds
  product   a DRAFT campaign (inline subject and body, the same) sent with POST
            /campaigns/{id}/send: recipients per second from the send to the catcher's
            last mail, and in steady state (between 10% and 90% of the mails); the
            campaign must end SENT with stats.sent = --users and the catcher must have
            exactly --users mails

ratio = product recipients/s (whole campaign) ÷ baseline mails/s (target >= 0.4). The
campaign sends 4 pages at once (workflows/campaign.py PARALLEL_PAGES), 16 sends in
flight each (CONCURRENCY), so --worker-procs defaults to 2 and --concurrency to 16; the
baseline is one process (it needs no database, rendering or bookkeeping: its cost per
mail is what the product's SMTP provider alone costs). The last line is one JSON
object.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx
import psycopg

sys.path.insert(0, str(Path(__file__).resolve().parent))

import _common as c
import _stack as st
import ingest
from send import BODY, FROM_EMAIL, SUBJECT, start_catcher

RATIO_TARGET = 0.4

USERS_SQL = """
INSERT INTO users (project_id, id, email, properties, first_seen, last_seen, created_at,
                   updated_at)
SELECT %(p)s, 'user-' || lpad(g::text, 7, '0'), 'user-' || g || '@example.com',
       jsonb_build_object('plan', CASE WHEN g > %(members)s::int THEN 'free' ELSE 'pro' END,
                          'name', 'User ' || g),
       now(), now(), now() - interval '1 minute', now() - interval '1 minute'
FROM generate_series(%(lo)s::int, %(hi)s::int) AS g
"""


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--seconds", type=float, default=10, help="measured baseline seconds")
    p.add_argument("--warmup", type=float, default=2, help="unmeasured baseline seconds")
    p.add_argument("--users", type=int, default=100_000, help="campaign recipients")
    p.add_argument("--concurrency", type=int, default=16, help="baseline concurrent sends")
    p.add_argument("--worker-procs", type=int, default=2,
                   help="product worker processes (a campaign sends 4 pages at once)")
    p.add_argument("--pool-size", type=int, default=20, help="DB pool per process")
    p.add_argument("--timeout", type=float, default=3600, help="give the campaign this long")
    p.add_argument("--strict", action="store_true", help="exit 1 when the ratio is missed")
    return p.parse_args(argv)


async def baseline(port: int, seconds: float, warmup: float, concurrency: int,
                   count: Any) -> float:
    import aiosmtplib

    from activities.providers.base import OutboundMessage
    from activities.providers.smtp import build_email
    from core.ids import new_id
    from core.rendering import html_to_text

    sender = FROM_EMAIL.split("<")[1].rstrip(">")
    t_measure = time.monotonic() + warmup
    t_end = t_measure + seconds
    marks: dict[str, int] = {}
    n = 0

    async def client() -> None:
        nonlocal n
        while time.monotonic() < t_end:
            n += 1
            email = f"user-{n}@example.com"
            outbound = OutboundMessage(
                message_id=new_id("msg"), project_id="proj_bench", user_id=f"user-{n}",
                channel="EMAIL", to=email, subject=SUBJECT, body=BODY, text=html_to_text(BODY),
                transactional=False, unsubscribe_url="http://127.0.0.1:8000/api/v1/"
                "unsubscribe/" + "x" * 80, user_properties={"plan": "pro"})
            await aiosmtplib.send(build_email(outbound, FROM_EMAIL), sender=sender,
                                  recipients=[email], hostname=c.HOST, port=port, timeout=10)

    async def meter() -> None:
        await asyncio.sleep(max(0.0, t_measure - time.monotonic()))
        marks["start"] = count()
        await asyncio.sleep(max(0.0, t_end - time.monotonic()))
        marks["end"] = count()

    await asyncio.gather(meter(), *(client() for _ in range(concurrency)))
    return (marks["end"] - marks["start"]) / seconds


def run(args: argparse.Namespace, cleanup: c.Cleanup) -> dict[str, Any]:
    tmp = Path(tempfile.mkdtemp(prefix="retenshun-bench-camp-"))
    log_dir = tmp / "logs"
    c.log("starting PostgreSQL (embedded, fresh DB), the Temporal dev server, the catcher…")
    db = c.start_database(cleanup)
    temporal = st.start_temporal(cleanup, tmp / "temporal")
    catcher = start_catcher(cleanup)
    env = {**ingest.product_env(db.url, args.pool_size), "TEMPORAL_ADDRESS": temporal.address,
           "TEMPORAL_UI_URL": "http://127.0.0.1:1"}
    api = c.start_uvicorn(cleanup, "api", "api.app:create_app", env, 1, log_dir,
                          ready_path="/api/v1/events")
    workers = [st.start_worker(cleanup, env, log_dir, name=f"worker{k}")
               for k in range(args.worker_procs)]
    keys = ingest.signup(api.base)
    http = httpx.Client(base_url=api.base + "/api/v1", headers={"x-api-key": keys["secret"]},
                        timeout=120)
    r = http.put("/channels", json={"emailProvider": "SMTP", "smtpHost": c.HOST,
                                    "smtpPort": catcher.port, "smtpFromEmail": FROM_EMAIL})
    r.raise_for_status()
    total = args.users + args.users // 10
    c.log(f"writing {args.users:,} members and {total - args.users:,} non-members…")
    with psycopg.connect(db.url, autocommit=True) as conn:
        for lo in range(1, total + 1, 200_000):
            conn.execute(USERS_SQL, {"p": keys["project_id"], "members": args.users, "lo": lo,
                                     "hi": min(total, lo + 199_999)})
        conn.execute("VACUUM ANALYZE users")
    seg = http.post("/segments", json={"name": "Pro", "rules": [
        {"field": "plan", "operator": "eq", "value": "pro"}]})
    seg.raise_for_status()
    if seg.json()["userCount"] != args.users:
        raise RuntimeError(f"segment counts {seg.json()['userCount']}, not {args.users}")
    groups = {"api": api.pids, "worker": lambda: [p for w in workers for p in w.pids()],
              "temporal": temporal.pids, "postgres": lambda: c.postgres_pids(db.postmaster_pid),
              "catcher": catcher.pids, "bench": lambda: [os.getpid()]}

    c.log(f"baseline: aiosmtplib.send x{args.concurrency} straight to the catcher…")
    meter = st.CpuMeter(groups)
    meter.start()
    base_rate = asyncio.run(baseline(catcher.port, args.seconds, args.warmup,
                                     args.concurrency, lambda: catcher.count))
    base_cpu = meter.stop()
    c.log(f"  {base_rate:,.0f} mails/s  (CPU cores: "
          + ", ".join(f"{k} {v:.2f}" for k, v in base_cpu.items()) + ")")

    c.log(f"product: a campaign to {args.users:,} members…")
    camp = http.post("/campaigns", json={"name": "Bench", "channel": "EMAIL",
                                         "segmentId": seg.json()["id"], "subject": SUBJECT,
                                         "body": BODY})
    camp.raise_for_status()
    campaign_id = camp.json()["id"]
    start_count = catcher.count
    meter.start()
    t0 = time.monotonic()
    http.post(f"/campaigns/{campaign_id}/send").raise_for_status()
    marks: dict[float, float] = {}  # fraction of mails -> seconds since the send
    status, last_count, t_last, t_log = "SENDING", 0, t0, t0
    deadline = t0 + args.timeout
    while time.monotonic() < deadline:
        time.sleep(0.25)
        got = catcher.count - start_count
        now = time.monotonic()
        if got != last_count:
            last_count, t_last = got, now
        for frac in (0.1, 0.9):
            if frac not in marks and got >= frac * args.users:
                marks[frac] = now - t0
        status = http.get(f"/campaigns/{campaign_id}").json()["status"]
        if status not in ("SENDING", "SCHEDULED"):
            break
        if now - t_log >= 10:
            t_log = now
            c.log(f"  {got:,} mails after {now - t0:.0f} s")
    product_cpu = meter.stop()
    time.sleep(1)
    final = http.get(f"/campaigns/{campaign_id}").json()
    caught = catcher.count - start_count
    elapsed = t_last - t0
    rate = caught / elapsed if elapsed > 0 else 0.0
    steady = ((0.8 * args.users) / (marks[0.9] - marks[0.1])
              if 0.1 in marks and 0.9 in marks and marks[0.9] > marks[0.1] else None)
    ratio = rate / base_rate if base_rate else 0.0
    c.log(f"  {final['status']}: {caught:,} mails in {elapsed:.1f} s = {rate:,.0f} "
          f"recipients/s (steady {steady or 0:,.0f}/s); stats {final['stats']}")
    c.log("  CPU cores: " + ", ".join(f"{k} {v:.2f}" for k, v in product_cpu.items()))
    exact = caught == args.users and final["stats"]["sent"] == args.users
    http.close()
    return {
        "ratio": round(ratio, 3), "target": RATIO_TARGET, "ratio_met": ratio >= RATIO_TARGET,
        "baseline_mails_per_s": round(base_rate, 1),
        "campaign_recipients_per_s": round(rate, 1),
        "campaign_steady_recipients_per_s": round(steady, 1) if steady else None,
        "campaign_seconds": round(elapsed, 1), "users": args.users, "status": final["status"],
        "mails_caught": caught, "stats": final["stats"], "exactly_once": exact,
        "concurrency": args.concurrency, "worker_procs": args.worker_procs,
        "cpu_baseline": {k: round(v, 2) for k, v in base_cpu.items()},
        "cpu_campaign": {k: round(v, 2) for k, v in product_cpu.items()},
    }


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    with c.cleanup_scope() as cleanup:
        out = run(args, cleanup)
    c.log(f"ratio (campaign recipients/s ÷ raw SMTP mails/s): {out['ratio']:.2f} "
          f"(target >= {RATIO_TARGET})")
    print(json.dumps(out), flush=True)
    if args.strict and not (out["ratio_met"] and out["exactly_once"]):
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
