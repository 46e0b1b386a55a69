-- tide's append and the index its gap-safe global read needs.

-- The global read walks (transaction_id, global_position) below the snapshot's xmin.
-- Emmett has no such index; on a partitioned table this creates one per partition.
CREATE INDEX IF NOT EXISTS tide_messages_tx_position
    ON emt_messages (transaction_id, global_position);

-- The gap-safe global read of one partition (DESIGN.md "Reading"): rows of transactions
-- older than every running one, after the cursor (p_xid, p_pos), in cursor order. It must
-- walk tide_messages_tx_position in order and stop after p_max rows. Without statistics
-- (a table just bulk-loaded, before autovacuum's first ANALYZE) the planner guesses a
-- handful of rows and would rather collect and sort every row past the cursor: 35 ms
-- instead of 0.5 ms for 1,000 rows of a 100,000-row table, and worse as it grows. Sorting
-- is therefore off inside this function.
CREATE OR REPLACE FUNCTION tide_read_all(
    p_xid xid8, p_pos bigint, p_max bigint, p_partition text
) RETURNS SETOF emt_messages
LANGUAGE plpgsql STABLE
SET enable_sort = off SET enable_bitmapscan = off
AS $tide_read_all$
BEGIN
    RETURN QUERY
        SELECT m.* FROM emt_messages m
         WHERE m.partition = p_partition AND NOT m.is_archived
           AND (m.transaction_id, m.global_position) > (p_xid, p_pos)
           AND m.transaction_id < pg_snapshot_xmin(pg_current_snapshot())
         ORDER BY m.transaction_id, m.global_position
         LIMIT p_max;
END;
$tide_read_all$;

-- Gives a partition value its tables on first use (Emmett wants emt_add_partition called
-- beforehand; tide does it itself). When they exist this is one catalog lookup. Names
-- follow Emmett's sanitizing, so values that differ only outside [A-Za-z0-9_] ('a-b',
-- 'a.b') would share tables: the second one is refused with a clear error.
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
    ELSIF v_bound <> format('FOR VALUES IN (%L)', p_partition) THEN
        RAISE EXCEPTION 'partition % cannot have tables of its own: % already holds %',
            p_partition, v_name, v_bound USING ERRCODE = '22023';
    END IF;
END;
$tide_ensure_partition$;

-- Appends p_messages (a JSON array of {type, data, metadata?, id?}) to one stream in one
-- statement. Appends to one stream serialize on its emt_streams row, so concurrent
-- 'any' appends all succeed with contiguous positions. A violated expectation writes
-- nothing and returns appended = false with the version found (NULL: no stream).
-- p_expected: 'any' | 'no_stream' | 'stream_exists' | a version number.
CREATE OR REPLACE FUNCTION tide_append(
    p_stream_id text,
    p_expected  text,
    p_messages  jsonb,
    p_partition text DEFAULT 'emt:default'
) RETURNS TABLE (appended boolean, stream_version bigint, global_positions bigint[])
LANGUAGE plpgsql AS $tide_append$
DECLARE
    v_count     bigint := jsonb_array_length(p_messages);
    v_current   bigint;
    v_found     boolean;
    v_positions bigint[];
BEGIN
    PERFORM tide_ensure_partition(p_partition);
    IF v_count = 0 THEN
        RAISE EXCEPTION 'tide_append: no messages to append' USING ERRCODE = '22023';
    END IF;
    IF p_expected NOT IN ('any', 'no_stream', 'stream_exists') AND p_expected !~ '^[0-9]+$' THEN
        RAISE EXCEPTION 'tide_append: expected version % is not any, no_stream, stream_exists or a number',
            p_expected USING ERRCODE = '22023';
    END IF;

    LOOP
        SELECT s.stream_position INTO v_current
          FROM emt_streams s
         WHERE s.stream_id = p_stream_id AND s.partition = p_partition AND NOT s.is_archived
           FOR UPDATE;
        v_found := FOUND;

        IF (p_expected = 'no_stream' AND v_found)
           OR (p_expected = 'stream_exists' AND NOT v_found)
           OR (p_expected ~ '^[0-9]+$' AND coalesce(v_current, 0) <> p_expected::bigint) THEN
            RETURN QUERY SELECT false, v_current, NULL::bigint[];
            RETURN;
        END IF;

        IF v_found THEN
            UPDATE emt_streams SET stream_position = v_current + v_count
             WHERE stream_id = p_stream_id AND partition = p_partition AND NOT is_archived;
            EXIT;
        END IF;

        INSERT INTO emt_streams (stream_id, stream_position, partition, stream_type,
                                 stream_metadata, is_archived)
        VALUES (p_stream_id, v_count, p_partition, split_part(p_stream_id, '-', 1), '{}', false)
        ON CONFLICT (stream_id, partition, is_archived) DO NOTHING;
        IF FOUND THEN
            v_current := 0;
            EXIT;
        END IF;
        -- Another transaction created the stream meanwhile: lock its row and check again.
    END LOOP;

    WITH inserted AS (
        INSERT INTO emt_messages (stream_id, stream_position, partition, message_data,
                                  message_metadata, message_schema_version, message_type,
                                  message_kind, message_id, transaction_id, is_archived)
        SELECT p_stream_id, v_current + m.ord, p_partition, m.msg -> 'data',
               coalesce(m.msg -> 'metadata', '{}'::jsonb), '1', m.msg ->> 'type', 'E',
               coalesce(m.msg ->> 'id', gen_random_uuid()::text), pg_current_xact_id(), false
          FROM jsonb_array_elements(p_messages) WITH ORDINALITY AS m(msg, ord)
        RETURNING stream_position, global_position
    )
    SELECT array_agg(global_position ORDER BY stream_position) INTO v_positions FROM inserted;

    RETURN QUERY SELECT true, v_current + v_count, v_positions;
END;
$tide_append$;
