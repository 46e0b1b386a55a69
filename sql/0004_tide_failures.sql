-- Failures handled, not just survived: every attempt at a batch is recorded before the
-- script runs (so an event that kills the whole process is counted too), a failing event
-- can be parked in tide_dead_letters while the checkpoint moves past it in the same
-- transaction, and a processor that declares its event types reads only those.

-- The attempt under way: attempts counts the tries of the events that follow the
-- checkpoint attempt_at ('XID:POS'), attempt_events how many events the last try held,
-- attempt_script which script made it (a hash of its content: a new script gets a try).
-- seen_until is a heartbeat: past it, no daemon looks after the processor any more.
ALTER TABLE tide_processors
    ADD COLUMN IF NOT EXISTS attempt_at        text,
    ADD COLUMN IF NOT EXISTS attempt_events    int NOT NULL DEFAULT 0,
    ADD COLUMN IF NOT EXISTS attempts          int NOT NULL DEFAULT 0,
    ADD COLUMN IF NOT EXISTS attempt_error     text,
    ADD COLUMN IF NOT EXISTS attempt_traceback text,
    ADD COLUMN IF NOT EXISTS attempt_script    text,
    ADD COLUMN IF NOT EXISTS seen_until        timestamptz;

-- Events a processor gave up on (on_error = 'dead_letter'), with a copy of the event so
-- that `tide dlq retry` works whatever happens to the stream. status: 'parked', or
-- 'retry' once `tide dlq retry` asked the processor to take it again.
CREATE TABLE IF NOT EXISTS tide_dead_letters (
    id               bigint      GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    processor_id     text        NOT NULL,
    partition        text        NOT NULL,
    version          int         NOT NULL,
    stream_id        text        NOT NULL,
    stream_position  bigint      NOT NULL,
    global_position  bigint      NOT NULL,
    transaction_id   xid8        NOT NULL,
    message_id       text        NOT NULL,
    message_type     text        NOT NULL,
    message_data     jsonb       NOT NULL,
    message_metadata jsonb       NOT NULL,
    created          timestamptz NOT NULL,
    attempts         int         NOT NULL,
    last_error       text        NOT NULL,
    traceback        text,
    status           text        NOT NULL DEFAULT 'parked',
    parked_at        timestamptz NOT NULL DEFAULT now(),
    retried_at       timestamptz,
    UNIQUE (processor_id, partition, version, global_position)
);
CREATE INDEX IF NOT EXISTS tide_dead_letters_retry
    ON tide_dead_letters (processor_id, partition) WHERE status = 'retry';

-- The gap-safe global read (see 0002), now optionally filtered by event type on the server:
-- with p_types it walks the next p_max rows of the log, returns those of the given types,
-- and ends with a marker row (stream_id NULL) at the last row it walked, so the reader's
-- cursor moves past events it does not want without their data ever leaving the server.
-- jit is off too: with sorting disabled every plan that sorts costs 1e10, which passes the
-- JIT threshold and makes PostgreSQL compile the query (300 ms for a two-row read).
DROP FUNCTION IF EXISTS tide_read_all(xid8, bigint, bigint, text);
CREATE OR REPLACE FUNCTION tide_read_all(
    p_xid xid8, p_pos bigint, p_max bigint, p_partition text, p_types text[]
) RETURNS TABLE (stream_id text, stream_position bigint, global_position bigint,
                 transaction_id xid8, message_type text, message_data jsonb,
                 message_metadata jsonb, message_id text, created timestamptz)
LANGUAGE plpgsql STABLE
SET enable_sort = off SET enable_bitmapscan = off SET jit = off
AS $tide_read_all$
BEGIN
    IF p_types IS NULL THEN
        RETURN QUERY
            SELECT m.stream_id, m.stream_position, m.global_position, m.transaction_id,
                   m.message_type, m.message_data, m.message_metadata, m.message_id, m.created
              FROM emt_messages m
             WHERE m.partition = p_partition AND NOT m.is_archived
               AND (m.transaction_id, m.global_position) > (p_xid, p_pos)
               AND m.transaction_id < pg_snapshot_xmin(pg_current_snapshot())
             ORDER BY m.transaction_id, m.global_position
             LIMIT p_max;
        RETURN;
    END IF;
    RETURN QUERY
        WITH walked AS MATERIALIZED (
            SELECT m.transaction_id AS x, m.global_position AS g, m.message_type AS t,
                   m.stream_id AS s, m.stream_position AS p
              FROM emt_messages m
             WHERE m.partition = p_partition AND NOT m.is_archived
               AND (m.transaction_id, m.global_position) > (p_xid, p_pos)
               AND m.transaction_id < pg_snapshot_xmin(pg_current_snapshot())
             ORDER BY m.transaction_id, m.global_position
             LIMIT p_max
        ), rows AS (
            SELECT 0 AS k, w.x, w.g, m.stream_id, m.stream_position, m.message_type,
                   m.message_data, m.message_metadata, m.message_id, m.created
              FROM walked w
              JOIN emt_messages m ON m.stream_id = w.s AND m.stream_position = w.p
                                 AND m.partition = p_partition AND NOT m.is_archived
             WHERE w.t = ANY (p_types)
            UNION ALL
            SELECT 1, l.x, l.g, NULL, NULL, NULL, NULL, NULL, NULL, NULL
              FROM (SELECT w.x, w.g FROM walked w ORDER BY w.x DESC, w.g DESC LIMIT 1) l
        )
        SELECT r.stream_id, r.stream_position, r.g, r.x, r.message_type, r.message_data,
               r.message_metadata, r.message_id, r.created
          FROM rows r ORDER BY r.k, r.x, r.g;
END;
$tide_read_all$;

-- Claiming now also says where the last attempt stood and whether dead letters wait to be
-- retried. A version change (a rebuild) forgets the attempt.
DROP FUNCTION IF EXISTS tide_processor_claim(text, text, int, text, int, text);
CREATE OR REPLACE FUNCTION tide_processor_claim(
    p_id text, p_kind text, p_version int, p_owner text, p_ttl_ms int, p_partition text
) RETURNS TABLE (acquired boolean, transaction_id xid8, global_position bigint, rebuilt boolean,
                 attempt_at text, attempt_events int, attempts int, attempt_error text,
                 attempt_script text, retries bigint)
LANGUAGE plpgsql AS $tide_processor_claim$
DECLARE
    v_old_version   int;
    v_old_partition text;
    v_until         timestamptz := now() + make_interval(secs => p_ttl_ms / 1000.0);
BEGIN
    PERFORM tide_ensure_partition(p_partition);
    SELECT p.version, p.partition INTO v_old_version, v_old_partition
      FROM tide_processors p WHERE p.processor_id = p_id;
    INSERT INTO tide_processors AS p (processor_id, kind, version, partition, owner,
                                      lease_until, seen_until, status)
    VALUES (p_id, p_kind, p_version, p_partition, p_owner, v_until, v_until, 'running')
    ON CONFLICT (processor_id) DO UPDATE
        SET owner = excluded.owner, lease_until = excluded.lease_until,
            seen_until = excluded.seen_until, kind = excluded.kind,
            version = excluded.version, partition = excluded.partition,
            status = CASE WHEN p.owner IS DISTINCT FROM excluded.owner
                            OR p.status IN ('stopped', 'waiting')
                          THEN 'running' ELSE p.status END,
            attempt_at = CASE WHEN p.version = excluded.version
                               AND p.partition = excluded.partition
                              THEN p.attempt_at END,
            attempts = CASE WHEN p.version = excluded.version
                             AND p.partition = excluded.partition
                            THEN p.attempts ELSE 0 END,
            updated_at = now()
        WHERE p.owner IS NULL OR p.owner = excluded.owner OR p.lease_until < now();
    IF NOT FOUND THEN
        RETURN QUERY SELECT false, NULL::xid8, NULL::bigint, false, NULL::text, 0, 0,
                            NULL::text, NULL::text, 0::bigint;
        RETURN;
    END IF;
    INSERT INTO emt_processors AS e (processor_id, partition, version, status,
                                     last_processed_checkpoint, last_processed_transaction_id,
                                     processor_instance_id)
    VALUES (p_id, p_partition, p_version, 'running', lpad('0', 19, '0'), '0', p_owner)
    ON CONFLICT (processor_id, partition, version) DO UPDATE
        SET status = 'running', processor_instance_id = p_owner, last_updated = now();
    RETURN QUERY
        SELECT true, e.last_processed_transaction_id, e.last_processed_checkpoint::bigint,
               v_old_version IS NOT NULL AND v_old_version <> p_version,
               t.attempt_at, t.attempt_events, t.attempts, t.attempt_error, t.attempt_script,
               (SELECT count(*) FROM tide_dead_letters d
                 WHERE d.processor_id = p_id AND d.partition = p_partition
                   AND d.status = 'retry')
          FROM emt_processors e, tide_processors t
         WHERE e.processor_id = p_id AND e.partition = p_partition AND e.version = p_version
           AND t.processor_id = p_id;
END;
$tide_processor_claim$;

-- Records, before the script runs, that this owner tries the p_events events after the
-- checkpoint p_at once more, with the script p_script, and returns how many tries that makes. p_replace: the last
-- try here was cut off by a lost connection or lease (not the script's doing), so this
-- one takes its place. Committed without waiting for the disk: it must survive the
-- daemon's death, which it does once the server has it; a crash of the server itself
-- at worst forgets one try.
CREATE OR REPLACE FUNCTION tide_processor_attempt(
    p_id text, p_owner text, p_at text, p_events int, p_replace boolean, p_script text
) RETURNS int
LANGUAGE plpgsql AS $tide_processor_attempt$
DECLARE
    v_attempts int;
BEGIN
    PERFORM set_config('synchronous_commit', 'off', true);
    UPDATE tide_processors p
       SET attempts = CASE WHEN p.attempt_at IS DISTINCT FROM p_at THEN 1
                           WHEN p_replace AND p.attempts > 0 THEN p.attempts
                           ELSE p.attempts + 1 END,
           attempt_error = CASE WHEN p.attempt_at IS DISTINCT FROM p_at THEN NULL
                                ELSE p.attempt_error END,
           attempt_traceback = CASE WHEN p.attempt_at IS DISTINCT FROM p_at THEN NULL
                                    ELSE p.attempt_traceback END,
           attempt_at = p_at,
           attempt_events = p_events,
           attempt_script = p_script
     WHERE p.processor_id = p_id AND p.owner = p_owner
    RETURNING p.attempts INTO v_attempts;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'processor % is no longer leased to %', p_id, p_owner
            USING ERRCODE = '55006';
    END IF;
    RETURN v_attempts;
END;
$tide_processor_attempt$;

-- What the last try at p_at died of (kept for the dead letter and `tide status`).
CREATE OR REPLACE FUNCTION tide_processor_attempt_failed(
    p_id text, p_owner text, p_at text, p_error text, p_traceback text
) RETURNS void
LANGUAGE plpgsql AS $tide_processor_attempt_failed$
BEGIN
    PERFORM set_config('synchronous_commit', 'off', true);
    UPDATE tide_processors
       SET attempt_error = p_error, attempt_traceback = p_traceback, last_error = p_error,
           updated_at = now()
     WHERE processor_id = p_id AND owner = p_owner AND attempt_at = p_at;
END;
$tide_processor_attempt_failed$;

-- Moves the checkpoint (see 0003) and forgets the attempt that led there.
CREATE OR REPLACE FUNCTION tide_processor_commit(
    p_id text, p_version int, p_owner text, p_ttl_ms int,
    p_from_xid xid8, p_from_pos bigint, p_to_xid xid8, p_to_pos bigint, p_partition text
) RETURNS void
LANGUAGE plpgsql AS $tide_processor_commit$
DECLARE
    v_until timestamptz := now() + make_interval(secs => p_ttl_ms / 1000.0);
BEGIN
    UPDATE tide_processors
       SET lease_until = v_until, seen_until = v_until, updated_at = now(),
           attempt_at = NULL, attempts = 0, attempt_events = 0, attempt_error = NULL,
           attempt_traceback = NULL, attempt_script = NULL
     WHERE processor_id = p_id AND owner = p_owner;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'processor % is no longer leased to %', p_id, p_owner
            USING ERRCODE = '55006';
    END IF;
    UPDATE emt_processors
       SET last_processed_transaction_id = p_to_xid,
           last_processed_checkpoint = lpad(p_to_pos::text, 19, '0'),
           last_updated = now()
     WHERE processor_id = p_id AND partition = p_partition AND version = p_version
       AND last_processed_transaction_id = p_from_xid
       AND last_processed_checkpoint = lpad(p_from_pos::text, 19, '0');
    IF NOT FOUND THEN
        RAISE EXCEPTION 'checkpoint of processor % moved under it', p_id USING ERRCODE = '40001';
    END IF;
END;
$tide_processor_commit$;

-- Gives up on the one event after the checkpoint (p_from) at p_to: with p_park it is copied
-- into tide_dead_letters first; either way the checkpoint moves past it, in this one
-- transaction, so the event is parked exactly when the processor has moved on.
CREATE OR REPLACE FUNCTION tide_processor_park(
    p_id text, p_version int, p_owner text, p_ttl_ms int,
    p_from_xid xid8, p_from_pos bigint, p_to_xid xid8, p_to_pos bigint, p_partition text,
    p_park boolean, p_attempts int, p_error text, p_traceback text
) RETURNS void
LANGUAGE plpgsql AS $tide_processor_park$
BEGIN
    IF p_park THEN
        INSERT INTO tide_dead_letters AS d (processor_id, partition, version, stream_id,
               stream_position, global_position, transaction_id, message_id, message_type,
               message_data, message_metadata, created, attempts, last_error, traceback)
        SELECT p_id, p_partition, p_version, m.stream_id, m.stream_position,
               m.global_position, m.transaction_id, m.message_id, m.message_type,
               m.message_data, m.message_metadata, m.created, p_attempts,
               coalesce(p_error, 'unknown error'), p_traceback
          FROM emt_messages m
         WHERE m.partition = p_partition AND NOT m.is_archived
           AND m.transaction_id = p_to_xid AND m.global_position = p_to_pos
        ON CONFLICT (processor_id, partition, version, global_position) DO UPDATE
            SET attempts = d.attempts + excluded.attempts, last_error = excluded.last_error,
                traceback = excluded.traceback, status = 'parked', parked_at = now();
    END IF;
    PERFORM tide_processor_commit(p_id, p_version, p_owner, p_ttl_ms, p_from_xid, p_from_pos,
                                  p_to_xid, p_to_pos, p_partition);
END;
$tide_processor_park$;

-- The next dead letter `tide dlq retry` queued for this processor, as a message.
CREATE OR REPLACE FUNCTION tide_dead_letter_next(p_id text, p_partition text)
RETURNS TABLE (id bigint, stream_id text, stream_position bigint, global_position bigint,
               transaction_id xid8, message_type text, message_data jsonb,
               message_metadata jsonb, message_id text, created text, attempts int)
LANGUAGE sql STABLE AS $tide_dead_letter_next$
    SELECT d.id, d.stream_id, d.stream_position, d.global_position, d.transaction_id,
           d.message_type, d.message_data, d.message_metadata, d.message_id,
           to_char(d.created AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.US"Z"'), d.attempts
      FROM tide_dead_letters d
     WHERE d.processor_id = p_id AND d.partition = p_partition AND d.status = 'retry'
     ORDER BY d.id LIMIT 1;
$tide_dead_letter_next$;

-- A retried dead letter was processed: it leaves the queue, in the retry's transaction,
-- as long as this owner still holds the processor.
CREATE OR REPLACE FUNCTION tide_dead_letter_done(p_dead_letter bigint, p_id text, p_owner text)
RETURNS void
LANGUAGE plpgsql AS $tide_dead_letter_done$
BEGIN
    PERFORM 1 FROM tide_processors WHERE processor_id = p_id AND owner = p_owner;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'processor % is no longer leased to %', p_id, p_owner
            USING ERRCODE = '55006';
    END IF;
    DELETE FROM tide_dead_letters WHERE id = p_dead_letter;
END;
$tide_dead_letter_done$;

-- A retried dead letter failed again: parked once more, with the new error.
CREATE OR REPLACE FUNCTION tide_dead_letter_failed(
    p_dead_letter bigint, p_error text, p_traceback text
) RETURNS void
LANGUAGE sql AS $tide_dead_letter_failed$
    UPDATE tide_dead_letters
       SET status = 'parked', attempts = attempts + 1, last_error = p_error,
           traceback = p_traceback, retried_at = now()
     WHERE id = p_dead_letter;
$tide_dead_letter_failed$;

-- The end of a batch's script under a role (`sql_role`): raise if the script changed the
-- role it runs as, else go back to the connecting user for the checkpoint.
CREATE OR REPLACE FUNCTION tide_role_end(p_role text) RETURNS void
LANGUAGE plpgsql AS $tide_role_end$
BEGIN
    IF current_user <> p_role THEN
        RAISE EXCEPTION 'the script changed the role it runs as (% instead of %): its batch is refused',
            current_user, p_role USING ERRCODE = '42501';
    END IF;
    PERFORM set_config('role', 'none', true);
END;
$tide_role_end$;

-- Gives a processor up (clean shutdown or its file was removed).
CREATE OR REPLACE FUNCTION tide_processor_release(p_id text, p_owner text) RETURNS void
LANGUAGE sql AS $tide_processor_release$
    UPDATE tide_processors SET owner = NULL, lease_until = NULL, status = 'stopped',
                               seen_until = NULL, updated_at = now()
     WHERE processor_id = p_id
       AND (owner = p_owner OR owner IS NULL OR lease_until < now());
    UPDATE emt_processors SET status = 'stopped', processor_instance_id = 'emt:unknown',
                              last_updated = now()
     WHERE processor_id = p_id AND processor_instance_id = p_owner;
$tide_processor_release$;

-- Partition values with a backslash: pg_get_expr writes the bound as a standard string
-- ('a\b'), format('%L') does not (E'a\\b'), so 0002's check refused the second append to
-- such a partition. The same function, comparing the bound as PostgreSQL prints it.
CREATE OR REPLACE FUNCTION tide_ensure_partition(p_partition text) RETURNS void
LANGUAGE plpgsql AS $tide_ensure_partition$
DECLARE
    v_name  text := regexp_replace('emt_messages_' || p_partition, '[^a-zA-Z0-9_]', '_', 'g');
    v_bound text;
BEGIN
    IF p_partition = 'emt:default' THEN
        RETURN;
    END IF;
    IF p_partition = '' THEN
        RAISE EXCEPTION 'the partition name is empty' USING ERRCODE = '22023';
    END IF;
    SELECT pg_get_expr(c.relpartbound, c.oid) INTO v_bound
      FROM pg_class c WHERE c.oid = to_regclass(quote_ident(v_name));
    IF v_bound IS NULL THEN
        -- Two first appends to one new partition: the second waits, then skips creating.
        PERFORM pg_advisory_xact_lock(hashtext('tide_ensure_partition'));
        PERFORM tide_add_partition(p_partition);
    ELSIF v_bound <> 'FOR VALUES IN (''' || replace(p_partition, '''', '''''') || ''')' THEN
        RAISE EXCEPTION 'partition % cannot have tables of its own: % already holds %',
            p_partition, v_name, v_bound USING ERRCODE = '22023';
    END IF;
END;
$tide_ensure_partition$;
