-- Wake-ups without a NOTIFY from the writers. A daemon that streams the server's WAL
-- (engine/wal_wake.c) is woken by every commit, whoever wrote it; one that cannot (no
-- REPLICATION privilege, `wake = "notify"`) needs tide's writers to send their post-commit
-- NOTIFY. Each daemon says which in its heartbeat row, and tide's writers ask
-- tide_wake_wanted() every few seconds: while no live daemon needs a NOTIFY, they send none.
ALTER TABLE tide_daemons ADD COLUMN IF NOT EXISTS wakes_by_notify boolean NOT NULL DEFAULT true;

CREATE OR REPLACE FUNCTION tide_daemon_beat(
    p_owner text, p_host text, p_pid int, p_ttl_ms int, p_units int, p_budget int,
    p_wakes_by_notify boolean
) RETURNS int
LANGUAGE plpgsql AS $tide_daemon_beat$
DECLARE
    v_live int;
BEGIN
    v_live := tide_daemon_beat(p_owner, p_host, p_pid, p_ttl_ms, p_units, p_budget);
    UPDATE tide_daemons SET wakes_by_notify = p_wakes_by_notify
     WHERE owner = p_owner AND wakes_by_notify IS DISTINCT FROM p_wakes_by_notify;
    RETURN v_live;
END;
$tide_daemon_beat$;

-- True while some live daemon is woken only by NOTIFY (one of an older tide included).
CREATE OR REPLACE FUNCTION tide_wake_wanted() RETURNS boolean
LANGUAGE sql STABLE AS $tide_wake_wanted$
    SELECT EXISTS (SELECT 1 FROM tide_daemons WHERE wakes_by_notify AND alive_until >= now());
$tide_wake_wanted$;
