-- Fair sharing across daemons. Every `tide run` on a database keeps a row here with a
-- heartbeat; a daemon counts the live ones (heartbeat within their own lease time) and
-- takes its share of the processors: ceil(units / live daemons), a unit being a processor
-- (or one shard of one). Nothing coordinates beyond that: each daemon claims free units up
-- to its share and hands the surplus back at a batch boundary (engine/sharing.c).
CREATE TABLE IF NOT EXISTS tide_daemons (
    owner        text        PRIMARY KEY, -- the lease owner id: tide:HOST:PID:RANDOM
    host         text        NOT NULL,
    pid          int         NOT NULL,
    started_at   timestamptz NOT NULL DEFAULT now(),
    heartbeat_at timestamptz NOT NULL DEFAULT now(),
    alive_until  timestamptz NOT NULL, -- heartbeat_at + its lease time
    units        int         NOT NULL DEFAULT 0, -- the units it runs ...
    budget       int         NOT NULL DEFAULT 0  -- ... and its share of them
);

-- A daemon's heartbeat: its row renewed (made on the first beat); rows of daemons gone for
-- a minute are tidied away. Returns how many daemons are live, this one included.
CREATE OR REPLACE FUNCTION tide_daemon_beat(
    p_owner text, p_host text, p_pid int, p_ttl_ms int, p_units int, p_budget int
) RETURNS int
LANGUAGE plpgsql AS $tide_daemon_beat$
DECLARE
    v_live int;
BEGIN
    INSERT INTO tide_daemons AS d (owner, host, pid, alive_until, units, budget)
    VALUES (p_owner, p_host, p_pid, now() + make_interval(secs => p_ttl_ms / 1000.0), p_units,
            p_budget)
    ON CONFLICT (owner) DO UPDATE
        SET heartbeat_at = now(), alive_until = excluded.alive_until, units = excluded.units,
            budget = excluded.budget;
    DELETE FROM tide_daemons WHERE alive_until < now() - interval '1 minute';
    SELECT count(*) INTO v_live FROM tide_daemons WHERE alive_until >= now();
    RETURN v_live;
END;
$tide_daemon_beat$;

-- A clean stop: the others count one daemon less at their next beat.
CREATE OR REPLACE FUNCTION tide_daemon_leave(p_owner text) RETURNS void
LANGUAGE sql AS $tide_daemon_leave$
    DELETE FROM tide_daemons WHERE owner = p_owner;
$tide_daemon_leave$;
