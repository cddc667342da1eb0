#!/usr/bin/env bash
# Runs the main job end to end on this machine, with nothing left behind:
#   1. builds the worker and the plugins (release) and copies them to target/plugins and target/test-plugins;
#   2. starts a throwaway redis-server, a throwaway PostgreSQL with the FrostGuard schema and a seeded
#      organization, a local fake Telnyx (no SMS is sent) and a local fake Resend (no email is sent), all on
#      free ports;
#   3. starts frostguard-worker with the SMS, email digest and test plugins;
#   4. enqueues sample FrostGuard jobs from Node BullMQ (sms:send on sms-notifications, test-outcomes jobs)
#      and prints them as Node sees them once processed, plus the SMS delivery rows;
#   5. creates a user's daily digest job scheduler from Node BullMQ (as FrostGuard's API does), waits for
#      the host to send the digest to the fake Resend, prints the job, the next iteration and the path of the
#      rendered email (kept in target/demo-digest/ for a look in a browser);
#   6. stops the worker with SIGTERM and removes everything else it started.
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
. "$ROOT/scripts/lib.sh"
cd "$ROOT"

missing=()
command -v cargo >/dev/null || missing+=("cargo (Rust toolchain, https://rustup.rs)")
command -v node >/dev/null && command -v npm >/dev/null || missing+=("node and npm (Node.js 20+)")
command -v redis-server >/dev/null && command -v redis-cli >/dev/null || missing+=("redis-server and redis-cli (Debian: apt-get install redis-server)")
PG_BIN=$(pg_bin_dir || true)
[ -n "$PG_BIN" ] || missing+=("PostgreSQL server binaries (Debian: apt-get install postgresql)")
if [ ${#missing[@]} -gt 0 ]; then
    echo "run-demo: install these first:" >&2
    printf '  - %s\n' "${missing[@]}" >&2
    exit 1
fi

say() { printf '\n== %s\n' "$*"; }

say "building the worker and plugins (release)"
scripts/build-plugins.sh
[ -f tests/node/node_modules/bullmq/package.json ] || (cd tests/node && npm ci --no-audit --no-fund)

WORK=$(mktemp -d /tmp/frostguard-demo.XXXXXX)
chmod 755 "$WORK"
pids=()
cleanup() {
    local pid
    for pid in "${pids[@]}"; do
        kill "$pid" 2>/dev/null || true
    done
    for pid in "${pids[@]}"; do
        wait "$pid" 2>/dev/null || true
    done
    rm -rf "$WORK"
}
trap cleanup EXIT

wait_for() { # <seconds> <description> <command...>
    local deadline=$((SECONDS + $1)) what=$2
    shift 2
    until "$@" >/dev/null 2>&1; do
        if [ $SECONDS -ge $deadline ]; then
            echo "run-demo: $what did not come up" >&2
            return 1
        fi
        sleep 0.2
    done
}

say "starting a throwaway Redis"
REDIS_PORT=$(free_port)
mkdir "$WORK/redis"
redis-server --port "$REDIS_PORT" --bind 127.0.0.1 --save '' --appendonly no --dir "$WORK/redis" \
    --logfile "$WORK/redis/redis.log" &
pids+=($!)
wait_for 10 "redis-server" redis-cli -p "$REDIS_PORT" ping
echo "redis://127.0.0.1:$REDIS_PORT"

say "starting a throwaway PostgreSQL with the FrostGuard schema"
PG_PORT=$(free_port)
mkdir "$WORK/pg"
as_pg=()
if [ "$(id -u)" = 0 ]; then
    pg_user=postgres
    id -u postgres >/dev/null 2>&1 || pg_user=nobody
    chown "$pg_user" "$WORK/pg"
    as_pg=(runuser -u "$pg_user" --)
fi
"${as_pg[@]}" "$PG_BIN/initdb" -D "$WORK/pg/data" -U postgres --auth=trust --no-locale -E UTF8 --no-sync \
    >"$WORK/initdb.log"
"${as_pg[@]}" "$PG_BIN/postgres" -D "$WORK/pg/data" -p "$PG_PORT" -k "$WORK/pg" \
    -c listen_addresses=127.0.0.1 -c fsync=off >"$WORK/pg/server.log" 2>&1 &
pids+=($!)
wait_for 30 "postgres" "$PG_BIN/pg_isready" -h 127.0.0.1 -p "$PG_PORT"
psql_demo() { "$PG_BIN/psql" -X -q -v ON_ERROR_STOP=1 -h 127.0.0.1 -p "$PG_PORT" -U postgres "$@"; }
psql_demo -d postgres -c "CREATE DATABASE frostguard"
psql_demo -d frostguard -f tests/fixtures/frostguard-schema.sql
DELIVERY_ID=6f1c1d5e-0000-4000-8000-00000000d001
# One critical alert with a pending SMS delivery row, as the FrostGuard API creates it before enqueueing.
psql_demo -d frostguard -c "
    WITH o AS (INSERT INTO organizations (name, slug) VALUES ('Demo Foods', 'demo-foods') RETURNING id),
         s AS (INSERT INTO sites (organization_id, name) SELECT id, 'Main kitchen' FROM o RETURNING id),
         a AS (INSERT INTO areas (site_id, name) SELECT id, 'Cold storage' FROM s RETURNING id),
         u AS (INSERT INTO units (area_id, name) SELECT id, 'Walk-in freezer' FROM a RETURNING id),
         al AS (INSERT INTO alerts (unit_id, alert_type, severity)
                SELECT id, 'alarm_active', 'critical' FROM u RETURNING id)
    INSERT INTO notification_deliveries (id, alert_id, channel, recipient)
    SELECT '$DELIVERY_ID', id, 'sms', '+15551234567' FROM al"
# For the digest: more alerts of the last day (one unit's name with HTML-special characters) and a manager
# whose profile asks for a daily digest at 09:00 Chicago time.
DIGEST_USER=7d2f0c4e-0000-4000-8000-0000000000a1
psql_demo -d frostguard -c "
    UPDATE alerts SET message = 'Walk-in freezer at -2.0C (limit -18C)';
    WITH a AS (SELECT id FROM areas LIMIT 1),
         u AS (INSERT INTO units (area_id, name) SELECT id, 'Reach-in <prep> & \"salads\"' FROM a RETURNING id)
    INSERT INTO alerts (unit_id, alert_type, severity, status, message, triggered_at)
    SELECT id, 'door_open'::alert_type, 'warning'::alert_severity, 'resolved'::alert_status,
           'Door open for 6 minutes', now() - interval '3 hours' FROM u
    UNION ALL SELECT id, 'alarm_active', 'critical', 'acknowledged', 'Temperature 9.1C above 5C',
           now() - interval '5 hours' FROM u;
    INSERT INTO alerts (unit_id, alert_type, severity, message, triggered_at)
    SELECT id, 'low_battery', 'info', 'Sensor battery at 15%', now() - interval '9 hours' FROM units WHERE name = 'Walk-in freezer';
    INSERT INTO profiles (user_id, organization_id, email, full_name, digest_daily, digest_weekly, timezone)
    SELECT '$DIGEST_USER', id, 'manager@demo-foods.example', 'Demo Manager', true, true, 'America/Chicago'
    FROM organizations"
ORG_ID=$(psql_demo -d frostguard -At -c "SELECT id FROM organizations")
ALERT_ID=$(psql_demo -d frostguard -At -c "SELECT alert_id FROM notification_deliveries")
DATABASE_URL="postgres://postgres@127.0.0.1:$PG_PORT/frostguard"
echo "$DATABASE_URL"

say "starting a fake Telnyx (local, nothing is sent)"
TELNYX_PORT=$(free_port)
node scripts/fake-telnyx.mjs "$TELNYX_PORT" &
pids+=($!)
wait_for 10 "fake Telnyx" node -e "require('net').connect($TELNYX_PORT,'127.0.0.1').on('connect',()=>process.exit(0)).on('error',()=>process.exit(1))"

say "starting a fake Resend (local, nothing is sent)"
RESEND_PORT=$(free_port)
DIGEST_OUT="$ROOT/target/demo-digest"
rm -rf "$DIGEST_OUT"
node scripts/fake-resend.mjs "$RESEND_PORT" "$DIGEST_OUT" &
pids+=($!)
wait_for 10 "fake Resend" node -e "require('net').connect($RESEND_PORT,'127.0.0.1').on('connect',()=>process.exit(0)).on('error',()=>process.exit(1))"

say "starting frostguard-worker"
TARGET="${CARGO_TARGET_DIR:-$ROOT/target}"
mkdir "$WORK/plugins"
cp "$TARGET"/plugins/*.so "$WORK/plugins/"
cp "$TARGET/test-plugins/libfg_test_outcomes.so" "$WORK/plugins/"
ls "$WORK/plugins"
HTTP_PORT=$(free_port)
env -i PATH="$PATH" HOME="${HOME:-/tmp}" \
    REDIS_URL="redis://127.0.0.1:$REDIS_PORT" \
    PLUGIN_DIR="$WORK/plugins" \
    HTTP_PORT="$HTTP_PORT" \
    LOG_FORMAT=text NO_COLOR=1 RUST_LOG=info \
    TELNYX_API_KEY=demo-key \
    TELNYX_PHONE_NUMBER=+15550001000 \
    TELNYX_API_BASE_URL="http://127.0.0.1:$TELNYX_PORT" \
    DATABASE_URL="$DATABASE_URL" \
    RESEND_API_KEY=re_demo_key \
    RESEND_API_BASE_URL="http://127.0.0.1:$RESEND_PORT" \
    EMAIL_FROM_ADDRESS="FreshTrack Pro <digests@demo-foods.example>" \
    UNSUBSCRIBE_SECRET=demo-unsubscribe-secret \
    APP_URL=https://app.freshtrack.app \
    "$TARGET/release/frostguard-worker" run >"$WORK/worker.log" 2>&1 &
WORKER_PID=$!
pids+=($WORKER_PID)
if ! wait_for 60 "frostguard-worker" grep -q "worker ready" "$WORK/worker.log"; then
    cat "$WORK/worker.log" >&2
    exit 1
fi
grep -E "queue consuming|worker ready|disabled|ERROR" "$WORK/worker.log" || true

# Prints one line per job: queue, id, name, state, attempts, and the return value or failure reason.
report() { # <queue> ; reads drive.mjs output on stdin
    node --input-type=module -e '
        let raw = "";
        process.stdin.on("data", (c) => (raw += c));
        process.stdin.on("end", () => {
            const out = JSON.parse(raw);
            for (const j of out.jobs) {
                const result = j.state === "completed" ? `returnvalue=${JSON.stringify(j.returnvalue)}` : `failedReason=${JSON.stringify(j.failedReason)}`;
                console.log(`${process.argv[1].padEnd(18)} job ${String(j.id).padEnd(3)} ${j.name.padEnd(19)} ${j.state.padEnd(10)} attemptsMade=${j.attemptsMade}  ${result}`);
            }
            if (out.timedOut) { console.error("run-demo: some jobs did not finish in time"); process.exit(1); }
        });' "$1"
}
drive() { node tests/node/drive.mjs "$@"; }
REDIS_URL_DEMO="redis://127.0.0.1:$REDIS_PORT"
# FrostGuard's producer options for SMS jobs.
SMS_OPTS='{"attempts": 5, "backoff": {"type": "exponential", "delay": 2000}, "removeOnComplete": 100, "removeOnFail": 500}'

say "enqueueing sample jobs from Node BullMQ and waiting for them"
drive run "{
  \"redis\": \"$REDIS_URL_DEMO\", \"queue\": \"sms-notifications\", \"timeoutMs\": 60000,
  \"jobs\": [
    {\"name\": \"sms:send\", \"opts\": $SMS_OPTS, \"data\": {\"organizationId\": \"$ORG_ID\", \"alertId\": \"$ALERT_ID\",
      \"deliveryId\": \"$DELIVERY_ID\", \"phoneNumber\": \"+15551234567\", \"alertType\": \"alarm_active\",
      \"message\": \"FrostGuard CRITICAL: Walk-in freezer at -2C (limit -18C)\"}},
    {\"name\": \"sms:send\", \"opts\": $SMS_OPTS, \"data\": {\"organizationId\": \"$ORG_ID\",
      \"phoneNumber\": \"+15557654321\", \"message\": \"FrostGuard: sensor back online\"}},
    {\"name\": \"sms:send\", \"opts\": $SMS_OPTS, \"data\": {\"organizationId\": \"$ORG_ID\",
      \"phoneNumber\": \"+15550000000\", \"message\": \"FrostGuard: to an opted-out number\"}},
    {\"name\": \"sms:send\", \"opts\": $SMS_OPTS, \"data\": {\"organizationId\": \"$ORG_ID\",
      \"phoneNumber\": \"555-1234\", \"message\": \"not an E.164 number\"}}
  ]}" | report sms-notifications
drive run "{
  \"redis\": \"$REDIS_URL_DEMO\", \"queue\": \"test-outcomes\", \"timeoutMs\": 60000,
  \"jobs\": [
    {\"name\": \"complete\", \"data\": {\"result\": {\"hello\": \"from the host\"}}},
    {\"name\": \"fail-until\", \"data\": {\"succeedOnAttempt\": 2}, \"opts\": {\"attempts\": 3, \"backoff\": {\"type\": \"exponential\", \"delay\": 200}}},
    {\"name\": \"progress\", \"data\": {}},
    {\"name\": \"fail-unrecoverable\", \"data\": {\"message\": \"bad input\"}, \"opts\": {\"attempts\": 3}}
  ]}" | report test-outcomes

say "SMS delivery rows in PostgreSQL"
psql_demo -d frostguard -c "SELECT id, status, external_id, error_message, sent_at IS NOT NULL AS sent FROM notification_deliveries"

say "a daily digest from a Node job scheduler (cron 0 9 * * *, America/Chicago, first run immediately)"
SCHEDULER="digest-daily-$DIGEST_USER"
FIRST_JOB=$(drive upsert-scheduler "{
  \"redis\": \"$REDIS_URL_DEMO\", \"queue\": \"email-digests\", \"id\": \"$SCHEDULER\",
  \"repeat\": {\"pattern\": \"0 9 * * *\", \"tz\": \"America/Chicago\", \"immediately\": true},
  \"template\": {\"name\": \"email:digest\",
    \"data\": {\"organizationId\": \"$ORG_ID\", \"userId\": \"$DIGEST_USER\", \"period\": \"daily\"},
    \"opts\": {\"attempts\": 3, \"backoff\": {\"type\": \"exponential\", \"delay\": 2000},
              \"removeOnComplete\": 100, \"removeOnFail\": 500}}}" |
    node -e 'let r="";process.stdin.on("data",c=>r+=c).on("end",()=>console.log(JSON.parse(r).firstJobId))')
drive wait "{\"redis\": \"$REDIS_URL_DEMO\", \"queue\": \"email-digests\", \"ids\": [\"$FIRST_JOB\"], \"timeoutMs\": 60000}" |
    report email-digests
NEXT=$(drive list "{\"redis\": \"$REDIS_URL_DEMO\", \"queue\": \"email-digests\", \"states\": [\"delayed\"]}" |
    node -e 'let r="";process.stdin.on("data",c=>r+=c).on("end",()=>console.log(JSON.parse(r).ids.join(" ")))')
echo "next iteration (delayed until 09:00 America/Chicago): $NEXT"
[ -f "$DIGEST_OUT/email-1.html" ] || { echo "run-demo: no digest reached the fake Resend" >&2; exit 1; }
echo "rendered digest: $DIGEST_OUT/email-1.html (text: email-1.txt, request: email-1.json)"
grep -m1 '"subject"' "$DIGEST_OUT/email-1.json"

say "stopping the worker (SIGTERM)"
kill -TERM "$WORKER_PID"
status=0
wait "$WORKER_PID" || status=$?
grep -E "shutdown (begin|complete)" "$WORK/worker.log" || true
echo "frostguard-worker exited with status $status"
say "done; everything the demo started is stopped and removed"
[ "$status" = 0 ]
