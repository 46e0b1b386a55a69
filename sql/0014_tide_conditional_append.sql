-- Conditional appends (a dynamic consistency boundary): the events of a partition that match a
-- query (any of some types, and top-level data fields equal to given values), read in order of
-- global position, and the check an append_if makes before it writes (engine/append.c).

-- A query with types walks this index from the position it was given: what it reads is the
-- events of those types appended since, however large the partition is. (A query of data
-- fields alone has no index to walk: it reads every event after the position.)
CREATE INDEX IF NOT EXISTS tide_messages_type_position
    ON emt_messages (message_type, global_position);

-- The events of p_partition after global position p_after that match the query, in global
-- order, at most p_max of them. p_types: any of them (NULL: any type); p_data: a JSON object
-- the event's data contains (NULL: any data). Two statements, so that each has a plan that
-- uses its index whatever the parameters are.
CREATE OR REPLACE FUNCTION tide_read_query(
    p_partition text, p_types text[], p_data jsonb, p_after bigint, p_max bigint
) RETURNS SETOF emt_messages
LANGUAGE plpgsql STABLE AS $tide_read_query$
BEGIN
    IF p_types IS NOT NULL THEN
        RETURN QUERY
            SELECT m.* FROM emt_messages m
             WHERE m.partition = p_partition AND NOT m.is_archived
               AND m.message_type = ANY (p_types) AND m.global_position > p_after
               AND (p_data IS NULL OR m.message_data @> p_data)
             ORDER BY m.global_position LIMIT p_max;
    ELSE
        RETURN QUERY
            SELECT m.* FROM emt_messages m
             WHERE m.partition = p_partition AND NOT m.is_archived
               AND m.global_position > p_after AND m.message_data @> p_data
             ORDER BY m.global_position LIMIT p_max;
    END IF;
END;
$tide_read_query$;

-- The check of an append_if, inside its statement: locks the query's keys, then returns the
-- global position of the first event matching the query after p_after (NULL: none, the
-- append may go on). A key is a hash of each data field = value of the query (of each type
-- when it has no data), taken in order (two writers never wait for each other in a circle)
-- and held to the end of the transaction: of two append_if writers whose queries share a
-- key, the second checks only once the first has committed, and sees its events. Plain
-- appends take no key: an event they commit meanwhile can go unseen.
-- VOLATILE on purpose: the SELECT after the locks takes a snapshot of its own, which sees
-- what the writers waited for committed; the calling statement's snapshot is older.
CREATE OR REPLACE FUNCTION tide_append_if_check(
    p_partition text, p_types text[], p_data jsonb, p_after bigint
) RETURNS bigint
LANGUAGE plpgsql VOLATILE AS $tide_append_if_check$
DECLARE
    v_key   bigint;
    v_found bigint;
BEGIN
    FOR v_key IN
        SELECT DISTINCT hashtextextended(k, 0) AS h FROM (
            -- 1 and 1.0 are equal to @>: one key for both.
            SELECT 'tide.dcb data ' || f.key || '=' || CASE jsonb_typeof(f.value)
                       WHEN 'number' THEN trim_scale(f.value::text::numeric)::text
                       ELSE f.value::text END AS k
              FROM jsonb_each(p_data) f
            UNION ALL
            SELECT 'tide.dcb type ' || t FROM unnest(p_types) t WHERE p_data IS NULL
        ) keys ORDER BY h
    LOOP
        PERFORM pg_advisory_xact_lock(v_key);
    END LOOP;
    SELECT q.global_position INTO v_found
      FROM tide_read_query(p_partition, p_types, p_data, p_after, 1) q;
    RETURN v_found;
END;
$tide_append_if_check$;
