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

-- Sharded processors (shards = N): shard K of N runs as processor BASE#KofN (BASE is the
-- processor's APP/NAME) with its own lease and checkpoint, reading only the streams that
-- tide_shard_of puts in shard K (sql/0011). A layout is (shards, version, partition); when
-- it changes, the processor is rebuilt in place, once: the first shard to ask, once no
-- worker of another layout holds a lease, resets the targets in its first batch while the
-- others wait, and every shard replays from the start. A processor never sharded has no row.
CREATE TABLE IF NOT EXISTS tide_shard_layouts (
    processor_id text        PRIMARY KEY, -- BASE
    shards       int         NOT NULL,
    version      int         NOT NULL,
    partition    text        NOT NULL,
    reset_by     text,                    -- the shard whose first batch resets the targets
    reset_done   boolean     NOT NULL DEFAULT true,
    updated_at   timestamptz NOT NULL DEFAULT now()
);

-- The ids of a layout's workers: BASE alone, or BASE#0ofN .. BASE#(N-1)ofN.
CREATE OR REPLACE FUNCTION tide_shard_ids(p_base text, p_shards int) RETURNS text[]
LANGUAGE sql IMMUTABLE AS $tide_shard_ids$
    SELECT CASE WHEN p_shards <= 1 THEN ARRAY[p_base]
                ELSE ARRAY(SELECT p_base || '#' || k || 'of' || p_shards
                             FROM generate_series(0, p_shards - 1) k) END;
$tide_shard_ids$;

-- Asked by worker p_id of BASE before it claims under a layout: 'ok' (go on), 'wait' (ask
-- again later, holding no lease meanwhile) or 'reset' (claim, and reset the targets in the
-- first batch: tide_shard_enter).
CREATE OR REPLACE FUNCTION tide_shard_layout(
    p_base text, p_id text, p_shards int, p_version int, p_partition text
) RETURNS text
LANGUAGE plpgsql AS $tide_shard_layout$
DECLARE
    l   tide_shard_layouts%ROWTYPE;
    ids text[] := tide_shard_ids(p_base, p_shards);
BEGIN
    SELECT * INTO l FROM tide_shard_layouts WHERE processor_id = p_base FOR UPDATE;
    IF NOT FOUND THEN
        IF p_shards <= 1 THEN
            RETURN 'ok'; -- never sharded
        END IF;
        -- Sharded now: a processor that ran unsharded before is rebuilt like any other
        -- layout change (its layout so far: one worker, BASE); a new one has nothing to reset.
        INSERT INTO tide_shard_layouts AS s (processor_id, shards, version, partition)
        SELECT p_base, CASE WHEN p.processor_id IS NULL THEN p_shards ELSE 1 END,
               coalesce(p.version, p_version), coalesce(p.partition, p_partition)
          FROM (SELECT 1) one LEFT JOIN tide_processors p ON p.processor_id = p_base
        ON CONFLICT (processor_id) DO NOTHING;
        SELECT * INTO l FROM tide_shard_layouts WHERE processor_id = p_base FOR UPDATE;
    END IF;
    IF l.shards = p_shards AND l.version = p_version AND l.partition = p_partition THEN
        IF l.reset_done THEN
            RETURN 'ok';
        END IF;
        RETURN CASE WHEN l.reset_by = p_id THEN 'reset' ELSE 'wait' END;
    END IF;
    -- Another layout: not while any other worker of BASE still runs one.
    IF EXISTS (SELECT 1 FROM tide_processors p
                WHERE (p.processor_id = p_base OR left(p.processor_id, length(p_base) + 1) = p_base || '#')
                  AND p.processor_id <> p_id AND p.owner IS NOT NULL AND p.lease_until >= now()
                  AND (p.processor_id <> ALL (ids) OR p.version <> p_version
                       OR p.partition <> p_partition)) THEN
        RETURN 'wait';
    END IF;
    DELETE FROM emt_processors e
     WHERE (e.processor_id = p_base OR left(e.processor_id, length(p_base) + 1) = p_base || '#')
       AND e.processor_id <> ALL (ids);
    DELETE FROM tide_processors p
     WHERE (p.processor_id = p_base OR left(p.processor_id, length(p_base) + 1) = p_base || '#')
       AND p.processor_id <> ALL (ids);
    -- The new layout's workers start from the beginning (those of the same ids too).
    DELETE FROM emt_processors e WHERE e.processor_id = ANY (ids);
    UPDATE tide_shard_layouts
       SET shards = p_shards, version = p_version, partition = p_partition, reset_by = p_id,
           reset_done = false, updated_at = now()
     WHERE processor_id = p_base;
    RETURN 'reset';
END;
$tide_shard_layout$;

-- The first statement of a batch of shard p_id that resets its processor's targets: as
-- tide_processor_enter, and the reset is done once this batch commits. Refused (40001, the
-- batch rolls back and the worker asks tide_shard_layout again) when the reset is no longer
-- this worker's to do: done meanwhile by the same shard on another daemon, say.
CREATE OR REPLACE FUNCTION tide_shard_enter(p_id text, p_suffix text, p_base text) RETURNS void
LANGUAGE plpgsql AS $tide_shard_enter$
BEGIN
    PERFORM tide_processor_enter(p_id, p_suffix);
    UPDATE tide_shard_layouts SET reset_done = true, updated_at = now()
     WHERE processor_id = p_base AND reset_by = p_id AND NOT reset_done;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'the targets of % were reset already', p_base USING ERRCODE = '40001';
    END IF;
END;
$tide_shard_enter$;
