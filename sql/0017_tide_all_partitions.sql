-- Processors over every partition (partition = '*'): their failures park events of any
-- partition, and a dead letter remembers which one its event came from.

ALTER TABLE tide_dead_letters ADD COLUMN IF NOT EXISTS message_partition text;

-- '*' holds no events: such a processor's claim gives it only the partitions of its
-- checkpoint (emt_processors) and projection rows, never messages or streams.
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
    IF p_partition = '*' THEN
        IF to_regclass('emt_processors__') IS NULL THEN
            PERFORM pg_advisory_xact_lock(hashtext('tide_ensure_partition'));
            CREATE TABLE IF NOT EXISTS emt_processors__ PARTITION OF emt_processors
                FOR VALUES IN ('*');
            CREATE TABLE IF NOT EXISTS emt_projections__ PARTITION OF emt_projections
                FOR VALUES IN ('*');
        END IF;
        RETURN;
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
               message_data, message_metadata, created, attempts, last_error, traceback,
               message_partition)
        SELECT p_id, p_partition, p_version, m.stream_id, m.stream_position,
               m.global_position, m.transaction_id, m.message_id, m.message_type,
               m.message_data, m.message_metadata, m.created, p_attempts,
               coalesce(p_error, 'unknown error'), p_traceback, m.partition
          FROM emt_messages m
         WHERE (m.partition = p_partition OR p_partition = '*') AND NOT m.is_archived
           AND m.transaction_id = p_to_xid AND m.global_position = p_to_pos
        ON CONFLICT (processor_id, partition, version, global_position) DO UPDATE
            SET attempts = d.attempts + excluded.attempts, last_error = excluded.last_error,
                traceback = excluded.traceback, status = 'parked', parked_at = now();
    END IF;
    PERFORM tide_processor_commit(p_id, p_version, p_owner, p_ttl_ms, p_from_xid, p_from_pos,
                                  p_to_xid, p_to_pos, p_partition);
END;
$tide_processor_park$;

DROP FUNCTION IF EXISTS tide_dead_letter_next(text, text);
CREATE FUNCTION tide_dead_letter_next(p_id text, p_partition text)
RETURNS TABLE (id bigint, stream_id text, stream_position bigint, global_position bigint,
               transaction_id xid8, message_type text, message_data jsonb,
               message_metadata jsonb, message_id text, created text, attempts int,
               message_partition text)
LANGUAGE sql STABLE AS $tide_dead_letter_next$
    SELECT d.id, d.stream_id, d.stream_position, d.global_position, d.transaction_id,
           d.message_type, d.message_data, d.message_metadata, d.message_id,
           to_char(d.created AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.US"Z"'), d.attempts,
           coalesce(d.message_partition, d.partition)
      FROM tide_dead_letters d
     WHERE d.processor_id = p_id AND d.partition = p_partition AND d.status = 'retry'
     ORDER BY d.id LIMIT 1;
$tide_dead_letter_next$;
