-- Conditional appends (a dynamic consistency boundary): the events of a partition that match a
-- query (any of some types, and top-level data fields equal to given values), read in order of
-- global position, and the check an append_if makes before it writes (engine/append.c).
--
-- Writers serialize on advisory locks, one per key of their query: a hash of each data field
-- = value (of each type when the query has no data). An append_if holds its keys exclusively
-- from its check to its commit; a boundary read takes them shared, only to wait for the
-- append_if writers in flight. Keys are taken in order, so two writers never wait for each
-- other in a circle. Plain appends take none: what they commit meanwhile can go unseen.

-- A query with types walks this index from the position it was given: what it reads is the
-- events of those types appended since, however large the partition is. (A query of data
-- fields alone has no index to walk: it reads every event after the position.)
CREATE INDEX IF NOT EXISTS tide_messages_type_position
    ON emt_messages (message_type, global_position);

-- The lock keys of a query, in the order they are taken. 1 and 1.0 are equal to @>: one key.
-- PL/pgSQL keeps the plan of its statement for the session (an SQL function's body would be
-- planned at every call).
CREATE OR REPLACE FUNCTION tide_query_keys(p_types text[], p_data jsonb) RETURNS SETOF bigint
LANGUAGE plpgsql IMMUTABLE AS $tide_query_keys$
BEGIN
    RETURN QUERY
        SELECT DISTINCT hashtextextended(k.k, 0) AS h FROM (
            SELECT 'tide.dcb data ' || f.key || '=' || CASE jsonb_typeof(f.value)
                       WHEN 'number' THEN trim_scale(f.value::text::numeric)::text
                       ELSE f.value::text END AS k
              FROM jsonb_each(p_data) f
            UNION ALL
            SELECT 'tide.dcb type ' || t FROM unnest(p_types) t WHERE p_data IS NULL
        ) k ORDER BY h;
END;
$tide_query_keys$;

-- The events of p_partition after global position p_after that match the query, in global
-- order, at most p_max of them. p_types: any of them (NULL: any type); p_data: a JSON object
-- the event's data contains (NULL: any data). A statement for each, so that each has a plan
-- that uses the index whatever the parameters are. Their generic plans are kept: a plan made for
-- the parameters of each call (what PostgreSQL prefers here, from its guess at how far the
-- position is from the end) costs more to make, 0.2-0.9 ms on the partitioned table, than the
-- read itself, 0.05 ms after a recent position. Without statistics (a new table) the generic
-- plan would scan the table: 0.66 instead of 0.19 ms per append_if of 4,000 events.
CREATE OR REPLACE FUNCTION tide_query_events(
    p_partition text, p_types text[], p_data jsonb, p_after bigint, p_max bigint
) RETURNS SETOF emt_messages
LANGUAGE plpgsql STABLE SET plan_cache_mode = force_generic_plan SET enable_seqscan = off
AS $tide_query_events$
BEGIN
    IF p_data IS NULL THEN
        RETURN QUERY
            SELECT m.* FROM emt_messages m
             WHERE m.partition = p_partition AND NOT m.is_archived
               AND m.message_type = ANY (p_types) AND m.global_position > p_after
             ORDER BY m.global_position LIMIT p_max;
    ELSIF p_types IS NOT NULL THEN
        RETURN QUERY
            SELECT m.* FROM emt_messages m
             WHERE m.partition = p_partition AND NOT m.is_archived
               AND m.message_type = ANY (p_types) AND m.global_position > p_after
               AND m.message_data @> p_data
             ORDER BY m.global_position LIMIT p_max;
    ELSE
        RETURN QUERY
            SELECT m.* FROM emt_messages m
             WHERE m.partition = p_partition AND NOT m.is_archived
               AND m.global_position > p_after AND m.message_data @> p_data
             ORDER BY m.global_position LIMIT p_max;
    END IF;
END;
$tide_query_events$;

-- A boundary read: the events tide_query_events gives, then a marker row (stream_id NULL,
-- transaction_id NULL) at the position to append after (store:append_if's `after`): the head
-- of the log once the events were read. It is safe to check after: the query's keys were
-- taken (shared) first and are held to the end, so every append_if writer of the boundary
-- that had a position then has committed and is in the read, and any later one takes a
-- position above the head. (When p_max cut the read short, read on after its last event.)
-- VOLATILE on purpose: the read after the locks takes a snapshot of its own, which sees what
-- it waited for committed; the calling statement's snapshot is older.
CREATE OR REPLACE FUNCTION tide_read_query(
    p_partition text, p_types text[], p_data jsonb, p_after bigint, p_max bigint
) RETURNS TABLE (stream_id text, stream_position bigint, global_position bigint,
                 transaction_id xid8, message_type text, message_data jsonb,
                 message_metadata jsonb, message_id text, created timestamptz,
                 partition text, message_schema_version text)
LANGUAGE plpgsql VOLATILE AS $tide_read_query$
DECLARE
    v_key bigint;
BEGIN
    FOR v_key IN SELECT tide_query_keys(p_types, p_data) LOOP
        PERFORM pg_advisory_xact_lock_shared(v_key);
    END LOOP;
    RETURN QUERY
        SELECT m.stream_id, m.stream_position, m.global_position, m.transaction_id,
               m.message_type, m.message_data, m.message_metadata, m.message_id, m.created,
               m.partition, m.message_schema_version
          FROM tide_query_events(p_partition, p_types, p_data, p_after, p_max) m;
    RETURN QUERY
        SELECT NULL::text, NULL::bigint,
               greatest(pg_sequence_last_value('emt_global_message_position'), p_after),
               NULL::xid8, NULL::text, NULL::jsonb, NULL::jsonb, NULL::text, NULL::timestamptz,
               NULL::text, NULL::text;
END;
$tide_read_query$;

-- The check of an append_if, inside its statement: takes the query's keys, then returns the
-- global position of the first event matching the query after p_after (NULL: none, the
-- append may go on). Held to the end of the transaction: of two append_if writers whose
-- queries share a key, the second checks only once the first has committed, and sees its
-- events. VOLATILE for the same reason as tide_read_query.
CREATE OR REPLACE FUNCTION tide_append_if_check(
    p_partition text, p_types text[], p_data jsonb, p_after bigint
) RETURNS bigint
LANGUAGE plpgsql VOLATILE AS $tide_append_if_check$
DECLARE
    v_key   bigint;
    v_found bigint;
BEGIN
    FOR v_key IN SELECT tide_query_keys(p_types, p_data) LOOP
        PERFORM pg_advisory_xact_lock(v_key);
    END LOOP;
    SELECT q.global_position INTO v_found
      FROM tide_query_events(p_partition, p_types, p_data, p_after, 1) q;
    RETURN v_found;
END;
$tide_append_if_check$;
